"""The CUDA side of the TT ops builds, links and behaves, on machines without a GPU.

- `make -C custom_ops/cuda` builds tt_kernels.o and libtt_cuda_harness.so with nvcc;
- the object carries sm_80 and sm_90 cubins plus compute_90 PTX;
- the harness library (cudart linked statically) loads with ctypes without a GPU, and its
  launchers answer with status codes instead of crashing.

What the kernels compute is checked by tests/test_cuda_kernels.py, against tt_keras.oracle:
through the host-thread emulation of CUDA wherever g++ is, on the GPU where there is one.
"""

import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "custom_ops", "cuda")
OBJECT = os.path.join(CUDA_DIR, "tt_kernels.o")
HARNESS_LIB = os.path.join(CUDA_DIR, "libtt_cuda_harness.so")

pytestmark = [pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found"),
              pytest.mark.no_keras]


def _make(*targets, timeout=1800):
    return subprocess.run(["make", "-C", CUDA_DIR, *targets], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def built():
    result = _make()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def test_make_builds_and_is_up_to_date(built):
    assert os.path.isfile(OBJECT) and os.path.isfile(HARNESS_LIB)
    # `make -q` exits 0 only when every target is newer than its sources.
    assert subprocess.run(["make", "-q", "-C", CUDA_DIR], capture_output=True).returncode == 0


def _fatbin_entries(path):
    """(kind, arch) of every entry of the object's .nv_fatbin section; kind 1 = PTX,
    2 = ELF (cubin). Fatbin containers start with the magic 0xBA55ED50."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        pytest.skip("objcopy not found")
    raw = path + ".fatbin.tmp"
    try:
        subprocess.run([objcopy, "-O", "binary", "--only-section=.nv_fatbin", path, raw],
                       check=True, capture_output=True)
        data = open(raw, "rb").read()
    finally:
        if os.path.exists(raw):
            os.remove(raw)
    entries, offset = [], 0
    while offset + 16 <= len(data):
        magic, _version, header_size, body_size = struct.unpack_from("<IHHQ", data, offset)
        if magic != 0xBA55ED50:
            break
        pos, end = offset + header_size, offset + header_size + body_size
        while pos < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
            (arch,) = struct.unpack_from("<I", data, pos + 28)
            entries.append((kind, arch))
            pos += entry_header + payload
        offset = end
    return entries


def test_object_has_sm80_sm90_cubins_and_compute90_ptx(built):
    entries = set(_fatbin_entries(OBJECT))
    assert (2, 80) in entries, entries
    assert (2, 90) in entries, entries
    assert (1, 90) in entries, entries
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        elf = subprocess.run([cuobjdump, "--list-elf", OBJECT], capture_output=True, text=True)
        ptx = subprocess.run([cuobjdump, "--list-ptx", OBJECT], capture_output=True, text=True)
        assert "sm_80" in elf.stdout and "sm_90" in elf.stdout, elf.stdout
        assert "sm_90" in ptx.stdout, ptx.stdout


def test_harness_library_links_cudart_statically(built):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd not found")
    out = subprocess.run([ldd, HARNESS_LIB], capture_output=True, text=True).stdout
    assert "libcudart" not in out, out


# Runs in a child process, so that a crash shows up as a failed test instead of killing
# pytest. Without a GPU every launcher must return a status; with one, the size query works.
_LOAD_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from custom_ops.cuda import bindings as h
    lib = h.load_library({lib!r})
    lk = h.TTCudaLookup()
    lk.shape.num_cores = 3
    for t, (p, q) in enumerate([(13, 2), (11, 2), (9, 4)]):
        lk.shape.p[t], lk.shape.q[t] = p, q
    for t, r in enumerate([1, 8, 8, 1]):
        lk.shape.ranks[t] = r
    lk.shape.num_rows = 1000
    lk.index_type, lk.combiner, lk.nnz, lk.num_bags = 1, 1, 100, 10
    size = ctypes.c_size_t()
    status = lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size))
    message = lib.tt_cuda_last_error_message().decode()
    print("size query:", status, message)
    assert status in (h.OK, h.ERROR_CUDA), status
    if status == h.ERROR_CUDA:
        assert message, "a CUDA failure must come with a message"
    st = lib.tt_cuda_backward_workspace_size(ctypes.byref(lk), ctypes.byref(size))
    assert st in (h.OK, h.ERROR_CUDA), st
    st = lib.tt_cuda_unique_workspace_size(100, 1000, 1, ctypes.byref(size))
    assert st in (h.OK, h.ERROR_CUDA), st
    # Launches without a device (or with bad arguments) return codes, never crash.
    err = ctypes.create_string_buffer(64)
    ws = ctypes.create_string_buffer(1 << 16)
    st = lib.tt_cuda_forward(ctypes.byref(lk), None, ws, len(ws), err, None)
    assert st in (h.ERROR_CUDA, h.ERROR_INVALID_ARGUMENT), st
    assert lib.tt_cuda_forward(ctypes.byref(lk), None, None, 0, err, None) == \\
        h.ERROR_INVALID_ARGUMENT
    lk.shape.ranks[0] = 2
    assert lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size)) == \\
        h.ERROR_INVALID_ARGUMENT
    assert b"ranks" in lib.tt_cuda_last_error_message()
    lk.shape.ranks[0] = 1
    lk.shape.num_rows = 13 * 11 * 9 + 1
    assert lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size)) == \\
        h.ERROR_INVALID_ARGUMENT
    # The cached launchers likewise; a missing cache is an argument error.
    lk.shape.num_rows = 1000
    cache = h.TTCudaCache()
    cache.size = 4
    st = lib.tt_cuda_cached_forward_workspace_size(ctypes.byref(lk), ctypes.byref(cache),
                                                   ctypes.byref(size))
    assert st in (h.OK, h.ERROR_CUDA), st
    st = lib.tt_cuda_cached_backward_workspace_size(ctypes.byref(lk), ctypes.byref(cache),
                                                    ctypes.byref(size))
    assert st in (h.OK, h.ERROR_CUDA), st
    assert lib.tt_cuda_cached_forward_workspace_size(ctypes.byref(lk), None,
                                                     ctypes.byref(size)) == \
        h.ERROR_INVALID_ARGUMENT
    st = lib.tt_cuda_cached_forward(ctypes.byref(lk), ctypes.byref(cache), None, None, None,
                                    ws, len(ws), err, None)
    assert st in (h.ERROR_CUDA, h.ERROR_INVALID_ARGUMENT), st
    cache.size = -1
    assert lib.tt_cuda_cached_backward_workspace_size(ctypes.byref(lk), ctypes.byref(cache),
                                                      ctypes.byref(size)) == \
        h.ERROR_INVALID_ARGUMENT
    assert b"cache size" in lib.tt_cuda_last_error_message()
    count = ctypes.c_int64()
    assert lib.tt_cuda_read_count(None, ctypes.byref(count), None) == h.ERROR_INVALID_ARGUMENT
    host = h.TTCudaErrorInfo()
    st = lib.tt_cuda_read_error(err, ctypes.byref(host), None)
    assert st in (h.OK, h.ERROR_CUDA), st
    assert lib.tt_cuda_status_string(h.ERROR_CUDA) == b"CUDA runtime error"
    print("ok")
""")


def test_harness_library_loads_and_reports_errors_without_crashing(built):
    script = _LOAD_SCRIPT.format(root=ROOT, lib=HARNESS_LIB)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")

