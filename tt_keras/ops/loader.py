"""Lazy loading of the compiled op library, in the style of tensorflow/addons.

The library is loaded on first use, not at import, so `import tt_keras` stays cheap and works
where the library was never built. A missing library, or one built for another TensorFlow,
is reported with one warning and the caller falls back to the pure-TF path.
"""

import os
import threading
import warnings

import tensorflow as tf

_LIBRARY_NAME = "_tt_ops.so"
_VERSION_NAME = "_tt_ops.version"


class OpLibraryUnavailable(RuntimeError):
    """The custom op library cannot be used in this process."""


class LazyOpLibrary:
    """Loads a TF op library on first access to `.ops`; remembers a failure."""

    def __init__(self, directory, library_name=_LIBRARY_NAME, version_name=_VERSION_NAME):
        self._path = os.path.join(directory, library_name)
        self._version_path = os.path.join(directory, version_name)
        self._lock = threading.Lock()
        self._ops = None
        self._error = None
        self._warned = False

    @property
    def path(self):
        return self._path

    def _load(self):
        if not os.path.exists(self._path):
            raise OpLibraryUnavailable(
                f"the op library {self._path} is missing (build it with `make -C custom_ops` "
                "or `pip install .`)"
            )
        if os.path.exists(self._version_path):
            with open(self._version_path) as f:
                built_for = f.read().strip()
            if built_for and built_for != tf.__version__:
                raise OpLibraryUnavailable(
                    f"the op library {self._path} was built for TensorFlow {built_for} but "
                    f"this process runs TensorFlow {tf.__version__}; rebuild it with "
                    "`make -C custom_ops`"
                )
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


tt_ops_library = LazyOpLibrary(os.path.dirname(os.path.abspath(__file__)))
