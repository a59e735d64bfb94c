"""Lazy loading of the compiled op library, in the style of tensorflow/addons.

The library is loaded on first use, not at import, so `import tt_keras` stays cheap and works
where the library was never built. A missing library, one built for another TensorFlow, or
one that is damaged is reported with one warning and the caller falls back to the pure-TF
path.

Damage is checked before the library reaches the dynamic loader, which would otherwise
map a truncated file and die with SIGBUS when touching the missing pages: the file must
have the size and sha256 its build stamp records, and its ELF headers must describe a
shared object for this machine whose segments and sections lie inside the file.

TT_KERAS_OP_LIBRARY=/path/to/lib.so, set before tt_keras.ops is imported, loads that library
instead of the one beside this file (another build of it: `make -C custom_ops asan` for the
fuzz suite under AddressSanitizer, docs/fuzzing.md). Its stamp is the `_tt_ops.version` in
the same directory, and it passes the same checks, with the same warning and fall-back.

The stamp (`_tt_ops.version`, written by custom_ops/Makefile) holds the TensorFlow version
on its first line, then `key: value` lines: `isa`, `size`, `sha256`. A stamp of the version
line alone (older builds) is accepted; the ELF check still applies.
"""

import hashlib
import os
import platform
import struct
import threading
import warnings

import tensorflow as tf

_LIBRARY_NAME = "_tt_ops.so"
_VERSION_NAME = "_tt_ops.version"
LIBRARY_ENV = "TT_KERAS_OP_LIBRARY"

# e_machine of the ELF header, per platform.machine().
_ELF_MACHINES = {"x86_64": 62, "AMD64": 62, "aarch64": 183, "arm64": 183, "ppc64le": 21}
_ET_DYN = 3
_PT_LOAD = 1


class OpLibraryUnavailable(RuntimeError):
    """The custom op library cannot be used in this process."""


def read_stamp(path):
    """The build stamp as a dict: "tensorflow" (the first line) and its `key: value` lines.
    Empty when there is no stamp."""
    if not os.path.exists(path):
        return {}
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    stamp = {"tensorflow": lines[0].strip() if lines else ""}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            stamp[key.strip()] = value.strip()
    return stamp


def check_elf(path):
    """Raises OpLibraryUnavailable unless `path` is an ELF shared object for this machine
    whose program segments and section headers all lie inside the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF":
            raise OpLibraryUnavailable(f"the op library {path} is not an ELF file")
        (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize,
         e_shnum, _) = struct.unpack_from("<HHIQQQIHHHHHH", header, 16)
        if header[4] != 2 or header[5] != 1 or e_phentsize != 56 or (
                e_shnum and e_shentsize != 64):
            raise OpLibraryUnavailable(
                f"the op library {path} is not a well-formed 64-bit little-endian ELF file")
        expected_machine = _ELF_MACHINES.get(platform.machine())
        if e_type != _ET_DYN or (expected_machine is not None
                                 and e_machine != expected_machine):
            raise OpLibraryUnavailable(
                f"the op library {path} is not a shared library for this machine "
                f"({platform.machine()}): ELF type {e_type}, machine {e_machine}")
        ends = [("program headers", e_phoff + e_phnum * e_phentsize),
                ("section headers", e_shoff + e_shnum * e_shentsize)]
        if e_phoff + e_phnum * e_phentsize <= size:
            f.seek(e_phoff)
            table = f.read(e_phnum * e_phentsize)
            for i in range(e_phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, i * e_phentsize)
                if p_type == _PT_LOAD:
                    ends.append((f"segment {i}", p_offset + p_filesz))
    for what, end in ends:
        if end > size:
            raise OpLibraryUnavailable(
                f"the op library {path} is truncated: its {what} end at byte {end} but the "
                f"file has {size} bytes; rebuild it with `make -C custom_ops`")


def check_stamp(path, stamp):
    """Raises OpLibraryUnavailable when the file's size or sha256 differ from the stamp's."""
    size = os.path.getsize(path)
    if "size" in stamp and stamp["size"] != str(size):
        raise OpLibraryUnavailable(
            f"the op library {path} has {size} bytes but was built with {stamp['size']} "
            "(truncated or replaced); rebuild it with `make -C custom_ops`")
    if "sha256" in stamp:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != stamp["sha256"]:
            raise OpLibraryUnavailable(
                f"the op library {path} does not have the sha256 of its build (damaged or "
                "replaced); rebuild it with `make -C custom_ops`")


class LazyOpLibrary:
    """Loads a TF op library on first access to `.ops`; remembers a failure."""

    def __init__(self, directory, library_name=_LIBRARY_NAME, version_name=_VERSION_NAME,
                 source=None):
        self._path = os.path.join(directory, library_name)
        self._version_path = os.path.join(directory, version_name)
        # Where the path came from, when not the default: named in every failure, so a
        # stale override is not mistaken for a broken installation.
        self._source = source
        self._lock = threading.Lock()
        self._ops = None
        self._error = None
        self._warned = False

    @property
    def path(self):
        return self._path

    @property
    def build_info(self):
        """The library's build stamp (see read_stamp): TensorFlow version, instruction
        sets, size, sha256."""
        return read_stamp(self._version_path)

    def _load(self):
        if not os.path.exists(self._path):
            raise OpLibraryUnavailable(
                f"the op library {self._path} is missing (build it with `make -C custom_ops` "
                "or `pip install .`)"
            )
        stamp = read_stamp(self._version_path)
        built_for = stamp.get("tensorflow", "")
        if built_for and built_for != tf.__version__:
            raise OpLibraryUnavailable(
                f"the op library {self._path} was built for TensorFlow {built_for} but "
                f"this process runs TensorFlow {tf.__version__}; rebuild it with "
                "`make -C custom_ops`"
            )
        try:
            check_stamp(self._path, stamp)
            check_elf(self._path)
        except OSError as e:
            raise OpLibraryUnavailable(f"the op library {self._path} cannot be read ({e})") from e
        try:
            return tf.load_op_library(self._path)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, OSError) as e:
            raise OpLibraryUnavailable(
                f"the op library {self._path} failed to load ({e}); it was probably built "
                "for another TensorFlow: rebuild it with `make -C custom_ops`"
            ) from e

    @property
    def ops(self):
        """The loaded module; raises OpLibraryUnavailable when it cannot be loaded."""
        with self._lock:
            if self._ops is None and self._error is None:
                try:
                    self._ops = self._load()
                except OpLibraryUnavailable as e:
                    self._error = e
                    if self._source:
                        self._error = OpLibraryUnavailable(
                            f"{e} (the library was chosen by {self._source})")
                        self._error.__cause__ = e
            if self._error is not None:
                raise self._error
            return self._ops

    def available(self, warn=True):
        """True when the library loads; the first failure is warned about once."""
        try:
            self.ops
            return True
        except OpLibraryUnavailable as e:
            if warn and not self._warned:
                self._warned = True
                warnings.warn(
                    f"tt_keras: {e}. Falling back to the pure-TensorFlow lookup, which is "
                    "correct but much slower.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False


def default_library(environ=os.environ):
    """The library tt_keras uses: the one named by TT_KERAS_OP_LIBRARY (with its stamp
    beside it) when that is set and not empty, else the one built beside this file."""
    override = environ.get(LIBRARY_ENV, "")
    if override:
        path = os.path.abspath(override)
        return LazyOpLibrary(os.path.dirname(path), os.path.basename(path),
                             source=f"{LIBRARY_ENV}={override}")
    return LazyOpLibrary(os.path.dirname(os.path.abspath(__file__)))


tt_ops_library = default_library()
