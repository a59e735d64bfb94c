"""ctypes bindings of the CUDA TT launchers (custom_ops/cuda/tt_kernels.h).

Two libraries implement that header, and both are driven from here:

- libtt_cuda_harness.so (`make -C custom_ops/cuda`, nvcc): the kernels on a GPU, with cudart
  linked statically; buffers are CuPy arrays.
- libtt_cuda_emu.so (`make -C custom_ops/cuda emu`, g++ only): the same .cu compiled against
  a host-thread emulation of CUDA (emu/cuda_emu.h); buffers are NumPy arrays.

    kernels = Kernels("custom_ops/cuda/libtt_cuda_emu.so", emulated=True)
    lookup = kernels.lookup(cores, num_rows, ids, row_splits, weights, "mean")
    out, error = kernels.forward(lookup)          # host arrays back; error: TTCudaErrorInfo

Each launch is an object (Forward, Backward, CachedForward, CachedBackward) that allocates its
workspace and outputs once: `launch()` only enqueues work (what a timing loop repeats) and
`result()` waits for it and copies the outputs to the host. No TensorFlow, and no checking of
results: that is tests/test_cuda_kernels.py's job, against tt_keras.oracle.
"""

import contextlib
import ctypes

import numpy as np

from tt_keras import tt_math

MAX_CORES = 4  # TT_CUDA_MAX_CORES

# Return codes (TT_CUDA_OK, TT_CUDA_ERROR_*).
OK, ERROR_INVALID_ARGUMENT, ERROR_WORKSPACE_TOO_SMALL, ERROR_CUDA = 0, 1, 2, 3

# TT_CUDA_INDEX_*.
INDEX_TYPES = {np.dtype(np.int32): 0, np.dtype(np.int64): 1}


def combiner_code(combiner):
    """TT_CUDA_COMBINER_* of a combiner name: its position in tt_math.COMBINERS."""
    return tt_math.COMBINERS.index(combiner)


class TTCudaShape(ctypes.Structure):
    _fields_ = [
        ("num_cores", ctypes.c_int32),
        ("q", ctypes.c_int32 * MAX_CORES),
        ("ranks", ctypes.c_int32 * (MAX_CORES + 1)),
        ("p", ctypes.c_int64 * MAX_CORES),
        ("num_rows", ctypes.c_int64),
    ]


class TTCudaLookup(ctypes.Structure):
    _fields_ = [
        ("shape", TTCudaShape),
        ("cores", ctypes.c_void_p * MAX_CORES),
        ("indices", ctypes.c_void_p),
        ("index_type", ctypes.c_int32),
        ("combiner", ctypes.c_int32),
        ("nnz", ctypes.c_int64),
        ("row_splits", ctypes.c_void_p),
        ("num_bags", ctypes.c_int64),
        ("weights", ctypes.c_void_p),
    ]


class TTCudaErrorInfo(ctypes.Structure):
    _fields_ = [
        ("index_position", ctypes.c_int64),
        ("index_value", ctypes.c_int64),
        ("split_position", ctypes.c_int64),
        ("split_value", ctypes.c_int64),
        ("split_previous", ctypes.c_int64),
        ("cache_position", ctypes.c_int64),
        ("cache_value", ctypes.c_int64),
        ("cache_previous", ctypes.c_int64),
    ]

    @property
    def clean(self):
        """True when the device found no bad id, split or cache id."""
        return self.index_position == self.split_position == self.cache_position == -1


class TTCudaCache(ctypes.Structure):
    _fields_ = [
        ("ids", ctypes.c_void_p),
        ("rows", ctypes.c_void_p),
        ("size", ctypes.c_int64),
    ]


def load_library(path):
    """The launcher library at path, with the argument and return types of tt_kernels.h."""
    lib = ctypes.CDLL(path)
    P, S = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
    lookup, cache = ctypes.POINTER(TTCudaLookup), ctypes.POINTER(TTCudaCache)
    i32, i64, size_t = ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "tt_cuda_forward_workspace_size": [lookup, S],
        "tt_cuda_forward": [lookup, P, P, size_t, P, P],
        "tt_cuda_backward_workspace_size": [lookup, S],
        "tt_cuda_backward": [lookup, P, P, P, size_t, P, P],
        "tt_cuda_unique_workspace_size": [i64, i64, i32, S],
        "tt_cuda_unique": [P, i32, i64, i64, P, P, P, P, size_t, P, P],
        "tt_cuda_read_error": [P, ctypes.POINTER(TTCudaErrorInfo), P],
        "tt_cuda_cached_forward_workspace_size": [lookup, cache, S],
        "tt_cuda_cached_forward": [lookup, cache, P, P, P, P, size_t, P, P],
        "tt_cuda_cached_backward_workspace_size": [lookup, cache, S],
        "tt_cuda_cached_backward": [lookup, cache, P, P, P, P, size_t, P, P],
        "tt_cuda_cached_backward_cache_grads": [lookup, cache, i64, P, P, P, size_t, P],
        "tt_cuda_read_count": [P, ctypes.POINTER(ctypes.c_int64), P],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    lib.tt_cuda_set_shared_memory_budget.argtypes = [ctypes.c_size_t]
    lib.tt_cuda_set_shared_memory_budget.restype = None
    lib.tt_cuda_status_string.argtypes = [ctypes.c_int]
    lib.tt_cuda_status_string.restype = ctypes.c_char_p
    lib.tt_cuda_last_error_message.argtypes = []
    lib.tt_cuda_last_error_message.restype = ctypes.c_char_p
    return lib


class LauncherError(RuntimeError):
    """A launcher returned a status other than TT_CUDA_OK (kept in .status)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_status(lib, status, what):
    if status != OK:
        raise LauncherError(status, "%s: %s (%s)" % (
            what, lib.tt_cuda_status_string(status).decode(),
            lib.tt_cuda_last_error_message().decode()))


class Memory:
    """Buffers the launchers read and write: CuPy arrays on a GPU, NumPy arrays for the
    emulated library (whose "device" is host memory)."""

    def __init__(self, emulated):
        self.emulated = emulated
        if emulated:
            self.xp = np
        else:
            import cupy  # pylint: disable=import-outside-toplevel

            self.xp = cupy

    def to_device(self, a):
        return self.xp.ascontiguousarray(self.xp.asarray(a))

    def full(self, shape, value, dtype):
        return self.xp.full(shape, value, dtype=dtype)

    def bytes(self, n):
        return self.xp.zeros(max(int(n), 1), dtype=np.uint8)

    def ptr(self, a):
        if a is None:
            return None
        return a.ctypes.data if self.emulated else a.data.ptr

    def host(self, a):
        return np.asarray(a) if self.emulated else a.get()

    def sync(self):
        if not self.emulated:
            self.xp.cuda.Device().synchronize()

    def device_name(self):
        if self.emulated:
            return "host-thread emulation (no GPU)"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


class DeviceLookup:
    """The arguments of one TT embedding-bag call, copied to the device, and their
    TTCudaLookup. The device arrays live as long as this object.

    cores: k arrays (p_t, r_{t-1}, q_t, r_t), cast to float32; ids: int32 or int64;
    row_splits and weights: None for combiner "none" (weights None also means all ones).
    """

    def __init__(self, memory, cores, num_rows, ids, row_splits, weights, combiner):
        ids = np.asarray(ids)
        if ids.dtype not in INDEX_TYPES:
            raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
        self.memory = memory
        self.core_shapes = [tuple(np.shape(c)) for c in cores]
        self.dim = int(np.prod([s[2] for s in self.core_shapes]))
        self.nnz = len(ids)
        self.num_bags = len(row_splits) - 1 if combiner != "none" else 0
        self.num_outputs = self.nnz if combiner == "none" else self.num_bags
        self.cores = [memory.to_device(np.asarray(c, dtype=np.float32)) for c in cores]
        self.ids = memory.to_device(ids)
        self.row_splits = (memory.to_device(np.asarray(row_splits, dtype=np.int64))
                           if combiner != "none" else None)
        self.weights = (memory.to_device(np.asarray(weights, dtype=np.float32))
                        if weights is not None else None)

        s = TTCudaLookup()
        s.shape.num_cores = len(self.core_shapes)
        for t, (p, r_in, q, _) in enumerate(self.core_shapes):
            s.shape.p[t], s.shape.q[t], s.shape.ranks[t] = p, q, r_in
            s.cores[t] = memory.ptr(self.cores[t])
        s.shape.ranks[len(self.core_shapes)] = self.core_shapes[-1][3]
        s.shape.num_rows = num_rows
        s.indices = memory.ptr(self.ids)
        s.index_type = INDEX_TYPES[ids.dtype]
        s.combiner = combiner_code(combiner)
        s.nnz = self.nnz
        s.row_splits = memory.ptr(self.row_splits)
        s.num_bags = self.num_bags
        s.weights = memory.ptr(self.weights)
        self.struct = s

    @property
    def ref(self):
        return ctypes.byref(self.struct)


class DeviceCache:
    """A cache (sorted ids, one row each; ids >= num_rows are empty slots) on the device,
    and its TTCudaCache."""

    def __init__(self, memory, ids, rows):
        self.ids = memory.to_device(np.asarray(ids, dtype=np.int64))
        self.rows = memory.to_device(np.asarray(rows, dtype=np.float32))
        self.struct = TTCudaCache(memory.ptr(self.ids), memory.ptr(self.rows), len(self.ids))

    @property
    def ref(self):
        return ctypes.byref(self.struct)


class _Launch:
    """Workspace (sized by the launcher's query) and a device error info for one launch."""

    def __init__(self, kernels, query, *query_args):
        self.kernels, self.lib, self.memory = kernels, kernels.lib, kernels.memory
        size = ctypes.c_size_t()
        check_status(self.lib, getattr(self.lib, query)(*query_args, ctypes.byref(size)),
                     query)
        self.workspace_bytes = size.value
        self.workspace = self.memory.bytes(size.value)
        self.error = self.memory.bytes(ctypes.sizeof(TTCudaErrorInfo))

    def ptrs(self):
        """(workspace, its size, error info) as the launchers take them."""
        m = self.memory
        return m.ptr(self.workspace), self.workspace_bytes, m.ptr(self.error)

    def read_error(self):
        """Waits for the launch and returns its TTCudaErrorInfo."""
        host = TTCudaErrorInfo()
        check_status(self.lib, self.lib.tt_cuda_read_error(self.memory.ptr(self.error),
                                                           ctypes.byref(host), None),
                     "tt_cuda_read_error")
        return host

    def read_count(self, device_count):
        count = ctypes.c_int64()
        check_status(self.lib, self.lib.tt_cuda_read_count(self.memory.ptr(device_count),
                                                           ctypes.byref(count), None),
                     "tt_cuda_read_count")
        return count.value

    def core_grad_buffers(self, lookup):
        # NaN-filled: the launcher must zero them before accumulating.
        grads = [self.memory.full(s, np.nan, np.float32) for s in lookup.core_shapes]
        return grads, (ctypes.c_void_p * MAX_CORES)(*[self.memory.ptr(g) for g in grads])


class Forward(_Launch):
    """tt_cuda_forward; result() -> (output [num_outputs, D], TTCudaErrorInfo)."""

    def __init__(self, kernels, lookup):
        super().__init__(kernels, "tt_cuda_forward_workspace_size", lookup.ref)
        self.lookup = lookup
        # NaN-filled: the launcher must write every output row.
        self.output = self.memory.full((lookup.num_outputs, lookup.dim), np.nan, np.float32)

    def launch(self):
        check_status(self.lib, self.lib.tt_cuda_forward(
            self.lookup.ref, self.memory.ptr(self.output), *self.ptrs(), None),
            "tt_cuda_forward")

    def result(self):
        error = self.read_error()
        return self.memory.host(self.output), error


class Backward(_Launch):
    """tt_cuda_backward for the output gradient grad; result() -> (core grads, error info)."""

    def __init__(self, kernels, lookup, grad):
        super().__init__(kernels, "tt_cuda_backward_workspace_size", lookup.ref)
        self.lookup = lookup
        self.grad = self.memory.to_device(np.asarray(grad, dtype=np.float32))
        self.core_grads, self.core_grad_ptrs = self.core_grad_buffers(lookup)

    def launch(self):
        check_status(self.lib, self.lib.tt_cuda_backward(
            self.lookup.ref, self.memory.ptr(self.grad), self.core_grad_ptrs, *self.ptrs(),
            None), "tt_cuda_backward")

    def result(self):
        error = self.read_error()
        return [self.memory.host(g) for g in self.core_grads], error


class CachedForward(_Launch):
    """tt_cuda_cached_forward; result() -> (output, slot of each position (-1: a miss),
    number of hits, error info)."""

    def __init__(self, kernels, lookup, cache):
        super().__init__(kernels, "tt_cuda_cached_forward_workspace_size", lookup.ref,
                         cache.ref)
        self.lookup, self.cache = lookup, cache
        m = self.memory
        self.output = m.full((lookup.num_outputs, lookup.dim), np.nan, np.float32)
        self.slots = m.full((max(lookup.nnz, 1),), -7, np.int32)
        self.num_hits = m.full((1,), -7, np.int64)

    def launch(self):
        m = self.memory
        check_status(self.lib, self.lib.tt_cuda_cached_forward(
            self.lookup.ref, self.cache.ref, m.ptr(self.output), m.ptr(self.slots),
            m.ptr(self.num_hits), *self.ptrs(), None), "tt_cuda_cached_forward")

    def result(self):
        error = self.read_error()
        m = self.memory
        return (m.host(self.output), m.host(self.slots)[:self.lookup.nnz],
                int(m.host(self.num_hits)[0]), error)


class CachedBackward(_Launch):
    """tt_cuda_cached_backward, then the count of cache slots hit, then
    tt_cuda_cached_backward_cache_grads (as the GPU op does); result() -> (core grads of
    the misses, slots hit (ascending), their summed gradient rows, error info)."""

    def __init__(self, kernels, lookup, cache, grad):
        super().__init__(kernels, "tt_cuda_cached_backward_workspace_size", lookup.ref,
                         cache.ref)
        self.lookup, self.cache = lookup, cache
        m = self.memory
        self.grad = m.to_device(np.asarray(grad, dtype=np.float32))
        self.core_grads, self.core_grad_ptrs = self.core_grad_buffers(lookup)
        self.num_hit_slots = m.full((1,), -7, np.int64)
        # Room for every position: the count is only known after the first call.
        self.hit_slots = m.full((max(lookup.nnz, 1),), -7, np.int64)
        self.hit_values = m.full((max(lookup.nnz, 1), lookup.dim), np.nan, np.float32)
        self.count = None

    def launch(self):
        m = self.memory
        check_status(self.lib, self.lib.tt_cuda_cached_backward(
            self.lookup.ref, self.cache.ref, m.ptr(self.grad), self.core_grad_ptrs,
            m.ptr(self.num_hit_slots), *self.ptrs(), None), "tt_cuda_cached_backward")
        self.count = self.read_count(self.num_hit_slots)
        check_status(self.lib, self.lib.tt_cuda_cached_backward_cache_grads(
            self.lookup.ref, self.cache.ref, self.count, m.ptr(self.hit_slots),
            m.ptr(self.hit_values), m.ptr(self.workspace), self.workspace_bytes, None),
            "tt_cuda_cached_backward_cache_grads")

    def result(self):
        error = self.read_error()
        m, n = self.memory, self.count
        return ([m.host(g) for g in self.core_grads], m.host(self.hit_slots)[:n],
                m.host(self.hit_values)[:n], error)


class Kernels:
    """A launcher library and the memory its pointers live in."""

    def __init__(self, path, emulated):
        self.path = path
        self.lib = load_library(path)
        self.memory = Memory(emulated)

    def lookup(self, cores, num_rows, ids, row_splits=None, weights=None, combiner="sum"):
        return DeviceLookup(self.memory, cores, num_rows, ids, row_splits, weights, combiner)

    def cache(self, ids, rows):
        return DeviceCache(self.memory, ids, rows)

    @staticmethod
    def _run(launch):
        launch.launch()
        return launch.result()

    def forward(self, lookup):
        return self._run(Forward(self, lookup))

    def backward(self, lookup, grad):
        return self._run(Backward(self, lookup, grad))

    def cached_forward(self, lookup, cache):
        return self._run(CachedForward(self, lookup, cache))

    def cached_backward(self, lookup, cache, grad):
        return self._run(CachedBackward(self, lookup, cache, grad))

    def unique(self, ids, num_rows):
        """tt_cuda_unique -> (distinct ids ascending, inverse, error info)."""
        ids = np.asarray(ids)
        nnz, index_type = len(ids), INDEX_TYPES[ids.dtype]
        launch = _Launch(self, "tt_cuda_unique_workspace_size", nnz, num_rows, index_type)
        m = self.memory
        d_ids = m.to_device(ids)
        unique = m.full((max(nnz, 1),), -7, np.int64)
        inverse = m.full((max(nnz, 1),), -7, np.int32)
        count = m.full((1,), -7, np.int32)
        check_status(self.lib, self.lib.tt_cuda_unique(
            m.ptr(d_ids), index_type, nnz, num_rows, m.ptr(unique), m.ptr(inverse),
            m.ptr(count), *launch.ptrs(), None), "tt_cuda_unique")
        error = launch.read_error()
        n = int(m.host(count)[0])
        return m.host(unique)[:n], m.host(inverse)[:nnz], error

    @contextlib.contextmanager
    def shared_memory_budget(self, nbytes):
        """Caps the chain kernels' shared memory (process-wide) inside the block, forcing
        their slower paths; back to the device's maximum afterwards."""
        self.lib.tt_cuda_set_shared_memory_budget(nbytes)
        try:
            yield
        finally:
            self.lib.tt_cuda_set_shared_memory_budget(0)
