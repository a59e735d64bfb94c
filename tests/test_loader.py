"""The op library loader refuses a damaged library before the dynamic loader sees it.

A truncated library used to kill the process with SIGBUS inside dlopen, even with
lookup_backend="auto". Each case copies the built library to a temporary directory, damages
the copy, and points a LazyOpLibrary at it in a child process (a crash there fails the test
instead of killing pytest): the child must warn once, fall back to the pure-TF path and exit
normally.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tt_keras.ops import tt_ops_library
from tt_keras.ops.loader import (
    LIBRARY_ENV,
    LazyOpLibrary,
    OpLibraryUnavailable,
    check_elf,
    default_library,
    read_stamp,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = tt_ops_library.path
STAMP = os.path.join(os.path.dirname(LIBRARY), "_tt_ops.version")

pytestmark = pytest.mark.skipif(not os.path.exists(LIBRARY), reason="op library not built")

# Loads the library in `directory` through the lookup's `auto` backend three times and
# reports what happened. When that falls back, a lookup runs on the pure-TF path; when it
# loads, the ops must be there (calling them would go through tt_keras.ops' own loader,
# which loads the original library).
_CHILD = textwrap.dedent("""
    import json, sys, warnings
    import tensorflow as tf
    import tt_keras.lookup as lookup
    from tt_keras.ops.loader import LazyOpLibrary
    lookup.tt_ops_library = LazyOpLibrary(sys.argv[1])
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["backends"] = [lookup.resolve_backend("auto") for _ in range(3)]
        if report["backends"][0] == "reference":
            cores = [tf.ones([2, 1, 2, 3]), tf.ones([3, 3, 2, 1])]
            rows = lookup.tt_embedding_bag(cores, tf.constant([0, 5], tf.int64), num_rows=6)
            report["rows"] = rows.numpy().tolist()
        else:
            report["has_op"] = hasattr(lookup.tt_ops_library.ops, "tt_keras_tt_embedding_bag")
    report["messages"] = [str(w.message) for w in caught
                          if issubclass(w.category, RuntimeWarning)]
    print(json.dumps(report))
""")


def _run_child(directory):
    result = subprocess.run([sys.executable, "-c", _CHILD, str(directory)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _copy(tmp_path, stamp=True):
    shutil.copy(LIBRARY, tmp_path / "_tt_ops.so")
    if stamp:
        shutil.copy(STAMP, tmp_path / "_tt_ops.version")
    return tmp_path / "_tt_ops.so"


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _flip_a_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage, stamp, reason", [
    (_truncate, True, "has {half} bytes but was built with {size}"),
    (_truncate, False, "is truncated"),
    (_flip_a_byte, True, "does not have the sha256 of its build"),
])
def test_damaged_library_falls_back_with_one_warning(tmp_path, damage, stamp, reason):
    library = _copy(tmp_path, stamp)
    size = os.path.getsize(library)
    damage(library)
    report = _run_child(tmp_path)
    assert report["backends"] == ["reference"] * 3
    assert len(report["messages"]) == 1, report["messages"]
    assert reason.format(half=size // 2, size=size) in report["messages"][0]
    assert "Falling back to the pure-TensorFlow lookup" in report["messages"][0]
    # Both ids map to the all-ones chain: each row holds r_1 = 3.
    assert report["rows"] == [[3.0] * 4] * 2


def test_intact_copy_with_a_version_only_stamp_still_loads(tmp_path):
    _copy(tmp_path, stamp=False)
    (tmp_path / "_tt_ops.version").write_text(read_stamp(STAMP)["tensorflow"] + "\n")
    report = _run_child(tmp_path)
    assert report["backends"] == ["op"] * 3
    assert report["messages"] == []
    assert report["has_op"]


def test_a_file_that_is_not_a_library_is_refused(tmp_path):
    (tmp_path / "_tt_ops.so").write_bytes(b"#!/bin/sh\n" + b"\0" * 100)
    with pytest.raises(OpLibraryUnavailable, match="is not an ELF file"):
        check_elf(str(tmp_path / "_tt_ops.so"))
    library = LazyOpLibrary(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="is not an ELF file"):
        assert not library.available()
    assert not library.available()  # warned once only


def test_stamp_describes_the_built_library():
    stamp = read_stamp(STAMP)
    assert set(stamp) >= {"tensorflow", "isa", "size", "sha256"}
    assert stamp["size"] == str(os.path.getsize(LIBRARY))
    assert tt_ops_library.build_info == stamp
    check_elf(LIBRARY)


def test_version_only_stamps_read_as_before(tmp_path):
    (tmp_path / "_tt_ops.version").write_text("1.15.0\n")
    assert read_stamp(str(tmp_path / "_tt_ops.version")) == {"tensorflow": "1.15.0"}
    assert read_stamp(str(tmp_path / "missing")) == {}


# tt_keras as a user has it, with TT_KERAS_OP_LIBRARY set by the parent: which library it
# chose, whether the lookup takes the op, and what it warned.
_OVERRIDE_CHILD = textwrap.dedent("""
    import json, warnings
    import tensorflow as tf
    from tt_keras import lookup
    from tt_keras.ops import tt_ops_library
    report = {"path": tt_ops_library.path}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["backends"] = [lookup.resolve_backend("auto") for _ in range(3)]
        cores = [tf.ones([2, 1, 2, 3]), tf.ones([3, 3, 2, 1])]
        rows = lookup.tt_embedding_bag(cores, tf.constant([0, 5], tf.int64), num_rows=6)
        report["rows"] = rows.numpy().tolist()
    report["messages"] = [str(w.message) for w in caught
                          if issubclass(w.category, RuntimeWarning)]
    print(json.dumps(report))
""")


def _run_with_override(value):
    env = dict(os.environ, **{LIBRARY_ENV: str(value)})
    result = subprocess.run([sys.executable, "-c", _OVERRIDE_CHILD], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_override_loads_another_build(tmp_path):
    # Another name, in another directory, with its stamp beside it: the asan build's layout.
    shutil.copy(LIBRARY, tmp_path / "other_build.so")
    shutil.copy(STAMP, tmp_path / "_tt_ops.version")
    report = _run_with_override(tmp_path / "other_build.so")
    assert report["path"] == str(tmp_path / "other_build.so")
    assert report["backends"] == ["op"] * 3
    assert report["messages"] == []
    assert report["rows"] == [[3.0] * 4] * 2


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "has {half} bytes but was built with {size}"),
    (_flip_a_byte, "does not have the sha256 of its build"),
    (None, "is missing"),
])
def test_a_bad_override_falls_back_with_one_warning_naming_it(tmp_path, damage, reason):
    library = tmp_path / "other_build.so"
    size = os.path.getsize(LIBRARY)
    if damage is not None:
        shutil.copy(LIBRARY, library)
        shutil.copy(STAMP, tmp_path / "_tt_ops.version")
        damage(library)
    report = _run_with_override(library)
    assert report["path"] == str(library)
    assert report["backends"] == ["reference"] * 3
    assert len(report["messages"]) == 1, report["messages"]
    message = report["messages"][0]
    assert reason.format(half=size // 2, size=size) in message
    assert f"{LIBRARY_ENV}={library}" in message
    assert "Falling back to the pure-TensorFlow lookup" in message
    assert report["rows"] == [[3.0] * 4] * 2


def test_override_with_a_stamp_of_another_tensorflow_is_refused(tmp_path):
    shutil.copy(LIBRARY, tmp_path / "other_build.so")
    stamp = open(STAMP).read().splitlines()
    (tmp_path / "_tt_ops.version").write_text("\n".join(["0.0.1"] + stamp[1:]) + "\n")
    report = _run_with_override(tmp_path / "other_build.so")
    assert report["backends"] == ["reference"] * 3
    assert "was built for TensorFlow 0.0.1" in report["messages"][0]


@pytest.mark.parametrize("environ", [{}, {LIBRARY_ENV: ""}])
def test_without_an_override_the_library_beside_the_package_is_used(environ):
    assert default_library(environ).path == LIBRARY


def test_a_relative_override_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    library = default_library({LIBRARY_ENV: "build/lib.so"})
    assert library.path == str(tmp_path / "build" / "lib.so")
