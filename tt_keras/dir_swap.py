"""Putting a finished directory in place of another one, so that a reader (TF Serving, a
later `tf.saved_model.load`) sees either the old directory or the new one, never a mix or
nothing.

The new directory is written as a sibling of its target (`staging_dir`: same parent, so the
same file system, and a hidden name that is not a number, which TF Serving's version scan
ignores), then `replace_dir` swaps it in:

- on Linux, one `renameat2(RENAME_EXCHANGE)` exchanges the two directories atomically, and
  the old one, now at the staging name, is deleted;
- elsewhere (or on a file system without the exchange), the old directory is renamed to a
  backup name, the new one to the target, and the backup deleted. A process killed between
  the two renames leaves the old directory under its backup name; `recover_dir` (a writer
  runs it before `staging_dir`) moves it back.

A process killed at any other point leaves the old directory in place and, at most, a
staging directory beside it, which the next `recover_dir` deletes.
"""

import ctypes
import errno
import glob
import os
import shutil
import tempfile

from absl import logging

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100

__all__ = ["staging_dir", "replace_dir", "recover_dir", "backup_path"]


def _parts(target: str):
    target = os.path.abspath(target)
    return os.path.dirname(target), os.path.basename(target)


def backup_path(target: str) -> str:
    """Where the fallback swap keeps the old directory between its two renames."""
    parent, base = _parts(target)
    return os.path.join(parent, f".{base}.replaced")


def staging_dir(target: str) -> str:
    """A new, empty directory beside `target` to write its replacement into."""
    parent, base = _parts(target)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{base}.staging-", dir=parent)


def _staging_leftovers(target: str):
    parent, base = _parts(target)
    return glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.staging-*"))


def recover_dir(target: str) -> None:
    """Restores `target` from its backup if a swap was interrupted between its renames, and
    deletes the staging directories that killed writers left beside it.

    For a target that one writer owns at a time: a concurrent writer's staging directory is
    deleted too (that writer then fails; nothing half-written is ever put in place)."""
    for path in _staging_leftovers(target):
        logging.warning("deleting %s, left by an interrupted write of %s", path, target)
        shutil.rmtree(path, ignore_errors=True)
    backup = backup_path(target)
    if os.path.isdir(backup):
        if os.path.exists(target):
            shutil.rmtree(backup)  # the swap completed; only the deletion was cut short
        else:
            os.rename(backup, target)
            logging.warning("restored %s from %s, left by an interrupted replacement",
                            target, backup)


def _exchange(a: str, b: str) -> bool:
    """Atomically exchanges two paths (Linux renameat2); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def replace_dir(new_dir: str, target: str) -> None:
    """Puts the complete directory `new_dir` (from `staging_dir(target)`) at `target`,
    replacing any directory there; the old one is deleted once the new one is in place."""
    target = os.path.abspath(target)
    if not os.path.exists(target):
        os.rename(new_dir, target)
        return
    if not os.path.isdir(target):
        raise NotADirectoryError(f"cannot replace {target}: it is not a directory")
    if _exchange(new_dir, target):
        shutil.rmtree(new_dir)  # now the old directory
        return
    backup = backup_path(target)
    os.rename(target, backup)
    os.rename(new_dir, target)
    shutil.rmtree(backup)

