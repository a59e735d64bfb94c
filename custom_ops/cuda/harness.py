#!/usr/bin/env python3
"""Checks and times the CUDA TT embedding-bag kernels through their C launchers.

On a GPU machine (CUDA, CuPy; PyTorch for the timings; no TensorFlow needed):

    make -C custom_ops/cuda
    python custom_ops/cuda/harness.py --lib custom_ops/cuda/libtt_cuda_harness.so

Without a GPU, the same checks run against the host-thread emulation of the kernels:

    make -C custom_ops/cuda emu
    python custom_ops/cuda/harness.py --lib custom_ops/cuda/libtt_cuda_emu.so --emu --quick

Every result is compared with a float64 NumPy oracle written here from the spec (section 1):
rows from the TT chain, cross-checked against a column-by-column reconstruction
W[idx, j] = G_1[i_1][0, j_1, :] @ ... @ G_k[i_k][:, j_k, 0]; core gradients from the chain
rule, cross-checked by central differences; the cached lookup (docs/cache.md) against the
same oracle with cached rows swapped in. Exits non-zero on any mismatch.
"""

import argparse
import ctypes
import math
import sys
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# ctypes mirror of tt_kernels.h
# --------------------------------------------------------------------------------------------

MAX_CORES = 4
OK, ERROR_INVALID_ARGUMENT, ERROR_WORKSPACE_TOO_SMALL, ERROR_CUDA = 0, 1, 2, 3
COMBINERS = {"none": 0, "sum": 1, "mean": 2, "sqrtn": 3}
INDEX_TYPES = {np.dtype(np.int32): 0, np.dtype(np.int64): 1}


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


class TTCudaCache(ctypes.Structure):
    _fields_ = [
        ("ids", ctypes.c_void_p),
        ("rows", ctypes.c_void_p),
        ("size", ctypes.c_int64),
    ]


def load_library(path):
    lib = ctypes.CDLL(path)
    P, S = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
    lk = ctypes.POINTER(TTCudaLookup)
    cache = ctypes.POINTER(TTCudaCache)
    sigs = {
        "tt_cuda_forward_workspace_size": [lk, S],
        "tt_cuda_forward": [lk, P, P, ctypes.c_size_t, P, P],
        "tt_cuda_backward_workspace_size": [lk, S],
        "tt_cuda_backward": [lk, P, P, P, ctypes.c_size_t, P, P],
        "tt_cuda_unique_workspace_size": [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, S],
        "tt_cuda_unique": [P, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, P, P, P, P,
                           ctypes.c_size_t, P, P],
        "tt_cuda_read_error": [P, ctypes.POINTER(TTCudaErrorInfo), P],
        "tt_cuda_cached_forward_workspace_size": [lk, cache, S],
        "tt_cuda_cached_forward": [lk, cache, P, P, P, P, ctypes.c_size_t, P, P],
        "tt_cuda_cached_backward_workspace_size": [lk, cache, S],
        "tt_cuda_cached_backward": [lk, cache, P, P, P, P, ctypes.c_size_t, P, P],
        "tt_cuda_cached_backward_cache_grads": [lk, cache, ctypes.c_int64, P, P, P,
                                                ctypes.c_size_t, P],
        "tt_cuda_read_count": [P, ctypes.POINTER(ctypes.c_int64), P],
    }
    for name, args in sigs.items():
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
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_status(lib, status, what):
    if status != OK:
        raise LauncherError(status, "%s: %s (%s)" % (
            what, lib.tt_cuda_status_string(status).decode(),
            lib.tt_cuda_last_error_message().decode()))


# --------------------------------------------------------------------------------------------
# Device arrays: CuPy on a GPU, NumPy (host memory) for the emulated library
# --------------------------------------------------------------------------------------------

class Backend:
    def __init__(self, emulated):
        self.emulated = emulated
        if emulated:
            self.xp = np
        else:
            import cupy
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


# --------------------------------------------------------------------------------------------
# Problems and the float64 oracle
# --------------------------------------------------------------------------------------------

class Table:
    def __init__(self, p, q, ranks, num_rows, seed):
        self.p, self.q, self.ranks = tuple(p), tuple(q), tuple(ranks)
        self.k = len(p)
        assert len(q) == self.k and len(ranks) == self.k + 1 and ranks[0] == ranks[-1] == 1
        assert num_rows <= math.prod(p)
        self.num_rows = num_rows
        self.dim = math.prod(q)
        rng = np.random.default_rng(seed)
        # Variance-matched cores (spec section 3) so that rows are O(1).
        inner = math.prod(ranks[1:-1])
        std = (1.0 / inner) ** (0.5 / self.k)
        self.cores = [
            rng.normal(0.0, std, size=(p[t], ranks[t], q[t], ranks[t + 1])).astype(np.float32)
            for t in range(self.k)]

    def describe(self):
        return "k=%d p=%s q=%s ranks=%s N=%d" % (self.k, self.p, self.q, self.ranks,
                                                  self.num_rows)

    def digits(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        out = []
        for t in range(self.k):
            suffix = math.prod(self.p[t + 1:])
            out.append((ids // suffix) % self.p[t])
        return out


def oracle_partials(table, ids, cores=None):
    """P_t for every id (float64): P_t has shape (n, q_0 * ... * q_t, r_{t+1})."""
    cores = table.cores if cores is None else cores
    dig = table.digits(ids)
    n = len(ids)
    P = cores[0][dig[0]].astype(np.float64).reshape(n, table.q[0], table.ranks[1])
    partials = [P]
    for t in range(1, table.k):
        G = cores[t][dig[t]].astype(np.float64)
        P = np.einsum("nar,nrjs->najs", P, G).reshape(n, -1, table.ranks[t + 1])
        partials.append(P)
    return partials


def oracle_rows(table, ids, cores=None):
    return oracle_partials(table, ids, cores)[-1].reshape(len(ids), table.dim)


def oracle_rows_columnwise(table, ids):
    """The spec's formula taken literally, one column j at a time."""
    dig = table.digits(ids)
    n = len(ids)
    out = np.zeros((n, table.dim))
    for j in range(table.dim):
        jd, rem = [], j
        for t in range(table.k - 1, -1, -1):
            jd.append(rem % table.q[t])
            rem //= table.q[t]
        jd = jd[::-1]
        v = table.cores[0][dig[0], 0, jd[0], :].astype(np.float64)
        for t in range(1, table.k):
            v = np.einsum("nr,nrs->ns", v, table.cores[t][dig[t], :, jd[t], :])
        out[:, j] = v[:, 0]
    return out


def position_coefficients(combiner, splits, weights, nnz):
    """Per position: its bag and w_i / norm(bag) (0 for a zero norm)."""
    if combiner == "none":
        return np.arange(nnz), np.ones(nnz)
    splits = np.asarray(splits, dtype=np.int64)
    counts = np.diff(splits)
    bag_of = np.repeat(np.arange(len(counts)), counts)
    w = np.ones(nnz) if weights is None else weights.astype(np.float64)
    if combiner == "sum":
        norm = np.ones(len(counts))
    elif combiner == "mean":
        norm = np.bincount(bag_of, w, minlength=len(counts))
    else:
        norm = np.sqrt(np.bincount(bag_of, w * w, minlength=len(counts)))
    norm = np.asarray(norm, dtype=np.float64)  # bincount of no positions is integer
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm != 0)
    return bag_of, w * inv[bag_of]


def oracle_forward(table, ids, splits, weights, combiner, cores=None):
    rows = oracle_rows(table, ids, cores)
    if combiner == "none":
        return rows
    bag_of, coef = position_coefficients(combiner, splits, weights, len(ids))
    out = np.zeros((len(splits) - 1, table.dim))
    np.add.at(out, bag_of, coef[:, None] * rows)
    return out


def position_row_grads(ids, splits, weights, combiner, grad):
    """d loss / d row of each position: its coefficient times its bag's output gradient."""
    bag_of, coef = position_coefficients(combiner, splits, weights, len(ids))
    return coef[:, None] * grad.astype(np.float64)[bag_of]


def oracle_backward(table, ids, splits, weights, combiner, grad):
    ids = np.asarray(ids, dtype=np.int64)
    return oracle_core_grads(table, ids, position_row_grads(ids, splits, weights, combiner,
                                                            grad))


def oracle_core_grads(table, ids, row_grad):
    """Core gradients given each position's row gradient."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    dW = np.zeros((len(uniq), table.dim))
    np.add.at(dW, inverse.reshape(-1), row_grad)
    dig = table.digits(uniq)
    partials = oracle_partials(table, uniq)
    n = len(uniq)
    grads = [np.zeros(c.shape) for c in table.cores]
    dP = dW.reshape(n, table.dim, 1)
    for t in range(table.k - 1, 0, -1):
        G = table.cores[t][dig[t]].astype(np.float64)
        dPt = dP.reshape(n, -1, table.q[t], table.ranks[t + 1])
        np.add.at(grads[t], dig[t], np.einsum("nar,najs->nrjs", partials[t - 1], dPt))
        dP = np.einsum("najs,nrjs->nar", dPt, G)
    np.add.at(grads[0], dig[0], dP.reshape(n, 1, table.q[0], table.ranks[1]))
    return grads


def cache_slots(cache_ids, ids, num_rows):
    """Each id's cache slot, or -1 (cache_ids sorted; entries >= num_rows are empty)."""
    cache_ids = np.asarray(cache_ids, dtype=np.int64)
    pos = np.searchsorted(cache_ids, ids)
    pos_c = np.minimum(pos, max(len(cache_ids) - 1, 0))
    hit = (len(cache_ids) > 0) & (ids < num_rows)
    hit = hit & (cache_ids[pos_c] == ids) if len(cache_ids) else np.zeros(len(ids), bool)
    return np.where(hit, pos_c, -1)


def oracle_cached_forward(table, cache_ids, cache_rows, ids, splits, weights, combiner):
    rows = oracle_rows(table, ids) if len(ids) else np.zeros((0, table.dim))
    slots = cache_slots(cache_ids, ids, table.num_rows)
    rows[slots >= 0] = cache_rows[slots[slots >= 0]]
    if combiner == "none":
        return rows, slots
    bag_of, coef = position_coefficients(combiner, splits, weights, len(ids))
    out = np.zeros((len(splits) - 1, table.dim))
    np.add.at(out, bag_of, coef[:, None] * rows)
    return out, slots


def oracle_cached_backward(table, cache_ids, ids, splits, weights, combiner, grad):
    """Core gradients from the misses only; the cache rows' gradient as (slots hit,
    ascending; one summed row each)."""
    ids = np.asarray(ids, dtype=np.int64)
    row_grad = position_row_grads(ids, splits, weights, combiner, grad)
    slots = cache_slots(cache_ids, ids, table.num_rows)
    hits = slots >= 0
    miss_grad = row_grad.copy()
    miss_grad[hits] = 0.0
    core = (oracle_core_grads(table, ids, miss_grad) if len(ids)
            else [np.zeros(c.shape) for c in table.cores])
    hit_slots = np.unique(slots[hits])
    values = np.zeros((len(hit_slots), table.dim))
    np.add.at(values, np.searchsorted(hit_slots, slots[hits]), row_grad[hits])
    return core, hit_slots, values


def self_check_oracle(table, ids, splits, weights, combiner, grad, rng):
    """The oracle against itself: column-wise rows, and a central difference of
    L = <forward, grad> along a random direction against the chain-rule gradient."""
    sample = ids[:64]
    a, b = oracle_rows(table, sample), oracle_rows_columnwise(table, sample)
    if not np.allclose(a, b, rtol=1e-10, atol=1e-12):
        raise AssertionError("oracle: chain rows differ from the column-wise formula")
    grads = oracle_backward(table, ids, splits, weights, combiner, grad)
    direction = [rng.normal(size=c.shape) for c in table.cores]
    eps = 1e-4

    def loss(sign):
        cores = [c.astype(np.float64) + sign * eps * d for c, d in zip(table.cores, direction)]
        return float(np.sum(oracle_forward(table, ids, splits, weights, combiner, cores) * grad))

    numeric = (loss(1) - loss(-1)) / (2 * eps)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
    if abs(numeric - analytic) > 1e-6 * max(1.0, abs(analytic)):
        raise AssertionError("oracle: gradient %r vs central difference %r" % (analytic, numeric))


def make_ids(rng, kind, nnz, num_rows, dtype):
    if kind == "uniform":
        ids = rng.integers(0, num_rows, size=nnz)
    elif kind == "zipf":
        # Zipf(1.1) ranks, then a bijection of [0, N) so that hot ids are spread out
        # (as hashed ids are) rather than all being the smallest.
        ranks = (rng.zipf(1.1, size=nnz) - 1) % num_rows
        mult = 2654435761 % num_rows or 1
        while math.gcd(mult, num_rows) != 1:
            mult += 1
        ids = (ranks.astype(object) * mult % num_rows).astype(np.int64)
    elif kind == "zipf-sorted":
        ids = (rng.zipf(1.1, size=nnz) - 1) % num_rows  # hot ids are the small ids
    elif kind == "distinct":
        assert nnz <= num_rows
        ids = rng.choice(num_rows, size=nnz, replace=False)
    else:
        raise ValueError(kind)
    return np.asarray(ids, dtype=dtype)


def make_splits(rng, nnz, num_bags):
    """Random bag sizes summing to nnz, with empty bags (first and last included)."""
    if num_bags == 0:
        return np.zeros(1, dtype=np.int64)
    cuts = np.sort(rng.integers(0, nnz + 1, size=num_bags - 1))
    splits = np.concatenate([[0], cuts, [nnz]]).astype(np.int64)
    if num_bags >= 3:
        splits[1] = 0            # bag 0 empty
        splits[-2] = nnz         # last bag empty
        splits = np.maximum.accumulate(splits)
        splits[-2] = nnz
    return splits


# --------------------------------------------------------------------------------------------
# Calling the launchers
# --------------------------------------------------------------------------------------------

class Launcher:
    def __init__(self, lib, backend):
        self.lib, self.be = lib, backend

    def lookup(self, table, d_cores, d_ids, d_splits, d_weights, combiner, nnz, num_bags,
               index_dtype):
        lk = TTCudaLookup()
        lk.shape.num_cores = table.k
        for t in range(table.k):
            lk.shape.q[t] = table.q[t]
            lk.shape.p[t] = table.p[t]
        for t in range(table.k + 1):
            lk.shape.ranks[t] = table.ranks[t]
        lk.shape.num_rows = table.num_rows
        for t in range(table.k):
            lk.cores[t] = self.be.ptr(d_cores[t]) if d_cores is not None else None
        lk.indices = self.be.ptr(d_ids)
        lk.index_type = INDEX_TYPES[np.dtype(index_dtype)]
        lk.combiner = COMBINERS[combiner]
        lk.nnz = nnz
        lk.row_splits = self.be.ptr(d_splits) if combiner != "none" else None
        lk.num_bags = num_bags
        lk.weights = self.be.ptr(d_weights)
        return lk

    def device_lookup(self, table, ids, splits, weights, combiner):
        """The lookup of host arrays copied to the device; the device arrays are returned
        too, to be kept alive while the lookup is used."""
        be = self.be
        num_bags = len(splits) - 1 if combiner != "none" else 0
        held = [be.to_device(c) for c in table.cores]
        d_ids, d_splits = be.to_device(ids), be.to_device(splits)
        d_weights = be.to_device(weights) if weights is not None else None
        held += [d_ids, d_splits, d_weights]
        lk = self.lookup(table, held[:table.k], d_ids, d_splits, d_weights, combiner, len(ids),
                         num_bags, ids.dtype)
        return lk, held

    def read_error(self, d_err):
        h = TTCudaErrorInfo()
        check_status(self.lib, self.lib.tt_cuda_read_error(self.be.ptr(d_err), ctypes.byref(h),
                                                           None), "read_error")
        return h

    def forward(self, table, ids, splits, weights, combiner):
        be, lib = self.be, self.lib
        nnz = len(ids)
        num_bags = len(splits) - 1 if combiner != "none" else 0
        lk, _held = self.device_lookup(table, ids, splits, weights, combiner)
        size = ctypes.c_size_t()
        check_status(lib, lib.tt_cuda_forward_workspace_size(ctypes.byref(lk),
                                                             ctypes.byref(size)),
                     "forward_workspace_size")
        ws = be.bytes(size.value)
        d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
        out_rows = nnz if combiner == "none" else num_bags
        out = be.full((out_rows, table.dim), np.nan, np.float32)  # must be fully written
        check_status(lib, lib.tt_cuda_forward(ctypes.byref(lk), be.ptr(out), be.ptr(ws),
                                              size.value, be.ptr(d_err), None), "forward")
        err = self.read_error(d_err)
        return be.host(out), err

    def backward(self, table, ids, splits, weights, combiner, grad):
        be, lib = self.be, self.lib
        nnz = len(ids)
        num_bags = len(splits) - 1 if combiner != "none" else 0
        lk, _held = self.device_lookup(table, ids, splits, weights, combiner)
        d_grad = be.to_device(grad.astype(np.float32))
        size = ctypes.c_size_t()
        check_status(lib, lib.tt_cuda_backward_workspace_size(ctypes.byref(lk),
                                                              ctypes.byref(size)),
                     "backward_workspace_size")
        ws = be.bytes(size.value)
        d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
        d_grads = [be.full(c.shape, np.nan, np.float32) for c in table.cores]  # must be zeroed
        ptrs = (ctypes.c_void_p * MAX_CORES)(*[be.ptr(g) for g in d_grads])
        check_status(lib, lib.tt_cuda_backward(ctypes.byref(lk), be.ptr(d_grad), ptrs,
                                               be.ptr(ws), size.value, be.ptr(d_err), None),
                     "backward")
        err = self.read_error(d_err)
        return [be.host(g) for g in d_grads], err

    def cache(self, d_cache_ids, d_cache_rows, size):
        c = TTCudaCache()
        c.ids = self.be.ptr(d_cache_ids)
        c.rows = self.be.ptr(d_cache_rows)
        c.size = size
        return c

    def cached_forward(self, table, cache_ids, cache_rows, ids, splits, weights, combiner):
        be, lib = self.be, self.lib
        nnz = len(ids)
        num_bags = len(splits) - 1 if combiner != "none" else 0
        lk, _held = self.device_lookup(table, ids, splits, weights, combiner)
        d_cids = be.to_device(np.asarray(cache_ids, np.int64))
        d_crows = be.to_device(np.asarray(cache_rows, np.float32))
        cache = self.cache(d_cids, d_crows, len(cache_ids))
        size = ctypes.c_size_t()
        check_status(lib, lib.tt_cuda_cached_forward_workspace_size(
            ctypes.byref(lk), ctypes.byref(cache), ctypes.byref(size)),
            "cached_forward_workspace_size")
        ws = be.bytes(size.value)
        d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
        out_rows = nnz if combiner == "none" else num_bags
        out = be.full((out_rows, table.dim), np.nan, np.float32)  # must be fully written
        slots = be.full((max(nnz, 1),), -7, np.int32)
        hits = be.full((1,), -7, np.int64)
        check_status(lib, lib.tt_cuda_cached_forward(
            ctypes.byref(lk), ctypes.byref(cache), be.ptr(out), be.ptr(slots), be.ptr(hits),
            be.ptr(ws), size.value, be.ptr(d_err), None), "cached_forward")
        err = self.read_error(d_err)
        return be.host(out), be.host(slots)[:nnz], int(be.host(hits)[0]), err

    def cached_backward(self, table, cache_ids, cache_rows, ids, splits, weights, combiner,
                        grad):
        be, lib = self.be, self.lib
        nnz = len(ids)
        num_bags = len(splits) - 1 if combiner != "none" else 0
        lk, _held = self.device_lookup(table, ids, splits, weights, combiner)
        d_grad = be.to_device(grad.astype(np.float32))
        d_cids = be.to_device(np.asarray(cache_ids, np.int64))
        d_crows = be.to_device(np.asarray(cache_rows, np.float32))
        cache = self.cache(d_cids, d_crows, len(cache_ids))
        size = ctypes.c_size_t()
        check_status(lib, lib.tt_cuda_cached_backward_workspace_size(
            ctypes.byref(lk), ctypes.byref(cache), ctypes.byref(size)),
            "cached_backward_workspace_size")
        ws = be.bytes(size.value)
        d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
        d_grads = [be.full(c.shape, np.nan, np.float32) for c in table.cores]  # must be zeroed
        ptrs = (ctypes.c_void_p * MAX_CORES)(*[be.ptr(g) for g in d_grads])
        d_count = be.full((1,), -7, np.int64)
        check_status(lib, lib.tt_cuda_cached_backward(
            ctypes.byref(lk), ctypes.byref(cache), be.ptr(d_grad), ptrs, be.ptr(d_count),
            be.ptr(ws), size.value, be.ptr(d_err), None), "cached_backward")
        err = self.read_error(d_err)
        count = ctypes.c_int64()
        check_status(lib, lib.tt_cuda_read_count(be.ptr(d_count), ctypes.byref(count), None),
                     "read_count")
        n = count.value
        hit_slots = be.full((max(n, 1),), -7, np.int64)
        hit_values = be.full((max(n, 1), table.dim), np.nan, np.float32)
        check_status(lib, lib.tt_cuda_cached_backward_cache_grads(
            ctypes.byref(lk), ctypes.byref(cache), n, be.ptr(hit_slots), be.ptr(hit_values),
            be.ptr(ws), size.value, None), "cached_backward_cache_grads")
        be.sync()
        return ([be.host(g) for g in d_grads], be.host(hit_slots)[:n],
                be.host(hit_values)[:n], err)

    def unique(self, ids, num_rows):
        be, lib = self.be, self.lib
        nnz = len(ids)
        itype = INDEX_TYPES[ids.dtype]
        size = ctypes.c_size_t()
        check_status(lib, lib.tt_cuda_unique_workspace_size(nnz, num_rows, itype,
                                                            ctypes.byref(size)),
                     "unique_workspace_size")
        ws = be.bytes(size.value)
        d_ids = be.to_device(ids)
        uniq = be.full((max(nnz, 1),), -7, np.int64)
        inverse = be.full((max(nnz, 1),), -7, np.int32)
        count = be.full((1,), -7, np.int32)
        d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
        check_status(lib, lib.tt_cuda_unique(be.ptr(d_ids), itype, nnz, num_rows, be.ptr(uniq),
                                             be.ptr(inverse), be.ptr(count), be.ptr(ws),
                                             size.value, be.ptr(d_err), None), "unique")
        err = self.read_error(d_err)
        n = int(be.host(count)[0])
        return be.host(uniq)[:n], be.host(inverse)[:nnz], err


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

class Checker:
    def __init__(self, launcher, verbose):
        self.launcher = launcher
        self.verbose = verbose
        self.failures = []
        self.count = 0

    def expect(self, ok, what):
        self.count += 1
        if not ok:
            self.failures.append(what)
            print("FAIL " + what, flush=True)
        elif self.verbose:
            print("ok   " + what, flush=True)

    def close(self, got, ref, what, rtol=1e-4, atol_rel=1e-5):
        got = np.asarray(got, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            self.expect(False, "%s: shape %s vs %s" % (what, got.shape, ref.shape))
            return
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        atol = atol_rel * max(scale, 1e-30)
        bad = ~(np.abs(got - ref) <= atol + rtol * np.abs(ref))  # NaN counts as bad
        if bad.any():
            idx = np.argwhere(bad)[0]
            self.expect(False, "%s: %d of %d entries differ, first at %s: %r vs %r" % (
                what, int(bad.sum()), bad.size, tuple(idx), got[tuple(idx)], ref[tuple(idx)]))
        else:
            self.expect(True, what)

    def lookup_case(self, table, ids, splits, weights, combiner, rng, label):
        L = self.launcher
        no_error = lambda e: e.index_position == -1 and e.split_position == -1
        out, err = L.forward(table, ids, splits, weights, combiner)
        self.expect(no_error(err), label + " forward: no error reported")
        self.close(out, oracle_forward(table, ids, splits, weights, combiner),
                   label + " forward")
        grad = rng.normal(size=out.shape).astype(np.float32)
        grads, err = L.backward(table, ids, splits, weights, combiner, grad)
        self.expect(no_error(err), label + " backward: no error reported")
        ref = oracle_backward(table, ids, splits, weights, combiner, grad)
        for t in range(table.k):
            self.close(grads[t], ref[t], "%s backward dG_%d" % (label, t))


def cached_case(chk, table, cache_ids, ids, splits, weights, combiner, rng, label):
    """The cached launchers against the oracle: output, slots and hit count, core gradients
    of the misses, and the cache rows' gradient."""
    L = chk.launcher
    no_error = lambda e: (e.index_position == -1 and e.split_position == -1 and
                          e.cache_position == -1)
    cache_rows = rng.normal(size=(len(cache_ids), table.dim)).astype(np.float32)
    out, slots, hits, err = L.cached_forward(table, cache_ids, cache_rows, ids, splits, weights,
                                             combiner)
    ref, ref_slots = oracle_cached_forward(table, cache_ids, cache_rows, ids, splits, weights,
                                           combiner)
    chk.expect(no_error(err), label + " cached forward: no error reported")
    chk.close(out, ref, label + " cached forward")
    chk.expect(np.array_equal(slots, ref_slots) and hits == int((ref_slots >= 0).sum()),
               label + " cached forward: slots and hit count")
    grad = rng.normal(size=out.shape).astype(np.float32)
    grads, hit_slots, hit_values, err = L.cached_backward(table, cache_ids, cache_rows, ids,
                                                          splits, weights, combiner, grad)
    ref_core, ref_hit_slots, ref_values = oracle_cached_backward(table, cache_ids, ids, splits,
                                                                 weights, combiner, grad)
    chk.expect(no_error(err), label + " cached backward: no error reported")
    for t in range(table.k):
        chk.close(grads[t], ref_core[t], "%s cached backward dG_%d" % (label, t))
    chk.expect(np.array_equal(hit_slots, ref_hit_slots),
               label + " cached backward: slots hit")
    if np.array_equal(hit_slots, ref_hit_slots):
        chk.close(hit_values, ref_values, label + " cached backward: cache rows' gradient")


def run_cached_checks(chk, tables, rng, s):
    EMPTY = np.iinfo(np.int64).max
    for name, tb in tables:
        nnz = (60 if tb.ranks[1] >= 64 else 200) * s
        ids = make_ids(rng, "zipf", nnz, tb.num_rows, np.int64)
        # The hottest ids and a few others, two empty slots at the end.
        uniq, counts = np.unique(ids, return_counts=True)
        hot = uniq[np.argsort(-counts)][:max(len(uniq) // 4, 1)]
        cold = rng.choice(tb.num_rows, size=5, replace=False)
        cache_ids = np.concatenate([np.union1d(hot, cold), [EMPTY, EMPTY]])
        for ci, (comb, weighted) in enumerate([("none", False), ("sum", False),
                                               ("mean", True), ("sqrtn", True)]):
            dtype = np.int32 if ci % 2 == 0 else np.int64
            splits = make_splits(rng, nnz, max(nnz // 9, 3))
            weights = rng.uniform(0.1, 2.0, size=nnz).astype(np.float32) if weighted else None
            cached_case(chk, tb, cache_ids, ids.astype(dtype), splits, weights, comb, rng,
                        "%s cached %s%s %s" % (name, comb, "+w" if weighted else "",
                                               np.dtype(dtype).name))
    tb = tables[1][1]
    ids = make_ids(rng, "zipf", 120, tb.num_rows, np.int64)
    splits = make_splits(rng, 120, 12)
    every = np.unique(ids)
    cases = [("all hits", every), ("no hits", np.setdiff1d(np.arange(40), every)[:5]),
             ("empty cache", np.zeros(0, np.int64)),
             ("only empty slots", np.full(3, EMPTY)),
             ("an id equal to num_rows as an empty slot", np.array([tb.num_rows]))]
    for what, cache_ids in cases:
        cached_case(chk, tb, cache_ids, ids, splits, None, "sum", rng, "k3 cached " + what)
    cached_case(chk, tb, every, np.zeros(0, np.int64), np.zeros(4, np.int64), None, "mean",
                rng, "k3 cached empty batch")
    # Bad caches and bad ids: the first offender, and nothing read out of bounds.
    L = chk.launcher
    bad_caches = [
        (np.array([3, 9, 7, 20]), 2, 7, 9),       # not sorted
        (np.array([-4, 2, 5]), 0, -4, 0),         # negative
        (np.array([2, 5, 5, 8]), 2, 5, 5),        # a row held twice
    ]
    for cache_ids, pos, val, prev in bad_caches:
        rows = np.ones((len(cache_ids), tb.dim), np.float32)
        out, _, _, err = L.cached_forward(tb, cache_ids, rows, ids, splits, None, "sum")
        grads, _, _, err2 = L.cached_backward(tb, cache_ids, rows, ids, splits, None, "sum",
                                              np.ones((12, tb.dim), np.float32))
        chk.expect(err.cache_position == pos and err.cache_value == val and
                   err.cache_previous == prev and err2.cache_position == pos and
                   np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads),
                   "bad cache %s: reported (%d, %d, %d)" % (
                       [int(c) for c in cache_ids], err.cache_position, err.cache_value,
                       err.cache_previous))
    bad = ids.copy()
    bad[7] = tb.num_rows + 3
    out, _, _, err = L.cached_forward(tb, every, np.ones((len(every), tb.dim), np.float32), bad,
                                      splits, None, "sum")
    chk.expect(err.index_position == 7 and err.index_value == tb.num_rows + 3 and
               np.isfinite(out).all(), "cached: a bad id is reported")


def run_checks(launcher, quick, verbose, seed):
    rng = np.random.default_rng(seed)
    chk = Checker(launcher, verbose)
    lib = launcher.lib
    s = 1 if quick else 4  # size multiplier

    tables = [
        ("k2", Table((37, 29), (4, 4), (1, 8, 1), 1000, seed)),
        ("k3", Table((13, 11, 9), (2, 2, 4), (1, 16, 16, 1), 1200, seed + 1)),
        ("k4", Table((7, 6, 5, 8), (2, 2, 2, 2), (1, 4, 8, 4, 1), 1600, seed + 2)),
        ("k3r64", Table((20, 20, 20), (4, 4, 4), (1, 64, 64, 1), 7000, seed + 3)),
        ("k4r64", Table((6, 6, 6, 6), (2, 4, 4, 2), (1, 64, 64, 64, 1), 1200, seed + 4)),
        ("k2r128D256", Table((50, 40), (16, 16), (1, 128, 1), 1999, seed + 5)),
        ("k3r128D256", Table((10, 10, 10), (4, 8, 8), (1, 128, 128, 1), 1000, seed + 6)),
    ]

    # The oracle first: everything below trusts it.
    t0 = tables[1][1]
    ids = make_ids(rng, "zipf", 300, t0.num_rows, np.int64)
    splits = make_splits(rng, 300, 20)
    w = rng.uniform(0.1, 2.0, size=300).astype(np.float32)
    for comb in ("none", "sum", "mean", "sqrtn"):
        g = rng.normal(size=(300 if comb == "none" else 20, t0.dim))
        self_check_oracle(t0, ids, splits, None if comb == "none" else w, comb, g, rng)
    for name, tb in tables[:3]:
        self_check_oracle(tb, make_ids(rng, "uniform", 50, tb.num_rows, np.int64),
                          make_splits(rng, 50, 7), None, "mean",
                          rng.normal(size=(7, tb.dim)), rng)
    print("oracle self-checks passed", flush=True)

    dists = ("uniform", "zipf", "zipf-sorted", "distinct")
    combos = [("none", False), ("sum", False), ("sum", True), ("mean", False), ("mean", True),
              ("sqrtn", False), ("sqrtn", True)]
    for name, tb in tables:
        big = tb.ranks[1] >= 64
        nnz = (60 if big else 250) * s
        num_bags = max(nnz // 9, 3)
        for di, dist in enumerate(dists):
            if quick and big and dist not in ("zipf",):
                continue
            n = min(nnz, tb.num_rows) if dist == "distinct" else nnz
            for ci, (comb, weighted) in enumerate(combos):
                if quick and (ci + di) % 3 != 0 and not (comb == "mean" and weighted):
                    continue
                dtype = np.int32 if (ci + di) % 2 == 0 else np.int64
                ids = make_ids(rng, dist, n, tb.num_rows, dtype)
                splits = make_splits(rng, n, num_bags)
                weights = rng.uniform(0.0, 2.0, size=n).astype(np.float32) if weighted else None
                if weighted and n > 3:
                    weights[:3] = 0.0  # zero weights (and possibly zero-norm bags)
                label = "%s %s %s%s %s nnz=%d" % (name, dist, comb, "+w" if weighted else "",
                                                  np.dtype(dtype).name, n)
                chk.lookup_case(tb, ids, splits, weights, comb, rng, label)

    # Slower paths: slices read from global memory, then partials in global memory.
    for budget, what in ((1024, "unstaged"), (1, "global-scratch")):
        lib.tt_cuda_set_shared_memory_budget(budget)
        try:
            for name, tb in (tables[1], tables[2], tables[0]):
                ids = make_ids(rng, "zipf", 200 * s, tb.num_rows, np.int64)
                splits = make_splits(rng, len(ids), 25)
                chk.lookup_case(tb, ids, splits, None, "sum", rng,
                                "%s %s zipf sum" % (name, what))
                chk.lookup_case(tb, ids, splits, rng.uniform(0.5, 1.5, len(ids)).astype(
                    np.float32), "sqrtn", rng, "%s %s zipf sqrtn+w" % (name, what))
        finally:
            lib.tt_cuda_set_shared_memory_budget(0)

    run_cached_checks(chk, tables[:4], rng, s)

    # A single id, one bag; and bags but no ids.
    tb = tables[1][1]
    chk.lookup_case(tb, np.array([5], np.int64), np.array([0, 1], np.int64), None, "sum", rng,
                    "k3 single id")
    chk.lookup_case(tb, np.array([tb.num_rows - 1] * 7, np.int32),
                    np.array([0, 3, 7], np.int64), None, "mean", rng, "k3 one repeated id")
    out, err = launcher.forward(tb, np.zeros(0, np.int64), np.zeros(5, np.int64), None, "mean")
    chk.expect(out.shape == (4, tb.dim) and not out.any() and err.split_position == -1,
               "k3 empty batch: zero rows")
    grads, err = launcher.backward(tb, np.zeros(0, np.int64), np.zeros(5, np.int64), None,
                                   "mean", np.ones((4, tb.dim), np.float32))
    chk.expect(all(not g.any() for g in grads), "k3 empty batch: zero gradients")

    # Ids past 2^32 (64-bit sort keys).
    wide = Table((2000, 2000, 2000), (2, 2, 2), (1, 4, 4, 1), 5_000_000_000, seed + 7)
    ids = rng.integers(0, wide.num_rows, size=300 * s, dtype=np.int64)
    ids[::7] = ids[0]
    chk.lookup_case(wide, ids, make_splits(rng, len(ids), 30), None, "sum", rng, "wide ids")

    # Deduplication alone.
    for dtype in (np.int32, np.int64):
        ids = make_ids(rng, "zipf", 500 * s, 10_000, dtype)
        uniq, inverse, err = launcher.unique(ids, 10_000)
        ref_u, ref_inv = np.unique(ids.astype(np.int64), return_inverse=True)
        chk.expect(np.array_equal(uniq, ref_u) and np.array_equal(inverse, ref_inv.reshape(-1))
                   and err.index_position == -1, "unique %s" % np.dtype(dtype).name)
    ids = np.array([4, 9, 4, -2, 12, 9, 10], np.int64)
    uniq, inverse, err = launcher.unique(ids, 11)  # -2 and 12 share the slot of value 11
    chk.expect(list(uniq) == [4, 9, 10, 11] and list(inverse) == [0, 1, 0, 3, 3, 1, 2] and
               err.index_position == 3 and err.index_value == -2,
               "unique with bad ids: %s %s pos=%d" % (uniq, inverse, err.index_position))

    # Bad ids: the first offending position and its value, and nothing read out of bounds.
    tb = tables[1][1]
    for dtype in (np.int32, np.int64):
        ids = make_ids(rng, "uniform", 100, tb.num_rows, dtype)
        ids[40] = -3
        ids[17] = tb.num_rows
        ids[90] = tb.num_rows + 5
        splits = make_splits(rng, 100, 10)
        for comb in ("sum", "none"):
            out, err = launcher.forward(tb, ids, splits, None, comb)
            chk.expect(err.index_position == 17 and err.index_value == tb.num_rows and
                       err.split_position == -1 and np.isfinite(out).all(),
                       "bad id forward %s %s: reported (%d, %d)" % (
                           comb, np.dtype(dtype).name, err.index_position, err.index_value))
        grad = np.ones((10, tb.dim), np.float32)
        grads, err = launcher.backward(tb, ids, splits, None, "sum", grad)
        chk.expect(err.index_position == 17 and all(np.isfinite(g).all() for g in grads),
                   "bad id backward %s: reported" % np.dtype(dtype).name)
        # Valid positions still match the oracle with the bad ones removed from their bags.
        ids2 = ids.copy()
        ids2[2] = -1
        out, err = launcher.forward(tb, ids2, splits, None, "none")
        good = (ids2 >= 0) & (ids2 < tb.num_rows)
        ref = oracle_rows(tb, ids2[good])
        chk.expect(err.index_position == 2 and err.index_value == -1 and
                   not out[~good].any(), "bad ids give zero rows, first = position 2")
        chk.close(out[good], ref, "bad ids: valid rows still right")

    # Nothing but bad ids: one slot, never looked up.
    ids = np.array([-1, tb.num_rows, -5, 2**40], np.int64)
    out, err = launcher.forward(tb, ids, np.array([0, 2, 4], np.int64), None, "sum")
    grads, err2 = launcher.backward(tb, ids, np.array([0, 2, 4], np.int64), None, "sum",
                                    np.ones((2, tb.dim), np.float32))
    chk.expect(err.index_position == 0 and err.index_value == -1 and not out.any() and
               err2.index_position == 0 and all(not g.any() for g in grads),
               "only bad ids: reported, zero rows and gradients")

    # Malformed row_splits.
    ids = make_ids(rng, "uniform", 50, tb.num_rows, np.int64)
    cases = [
        (np.array([1, 20, 50], np.int64), 0, 1, 0),
        (np.array([0, 30, 20, 50], np.int64), 2, 20, 30),
        (np.array([0, 20, 40], np.int64), 2, 40, 20),
        (np.array([0, 20, 60], np.int64), 2, 60, 20),
        (np.array([0, -5, 50], np.int64), 1, -5, 0),
    ]
    for splits, pos, val, prev in cases:
        out, err = launcher.forward(tb, ids, splits, None, "mean")
        grads, err2 = launcher.backward(tb, ids, splits, None, "mean",
                                        np.ones((len(splits) - 1, tb.dim), np.float32))
        chk.expect(err.split_position == pos and err.split_value == val and
                   err.split_previous == prev and err2.split_position == pos and
                   np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads),
                   "bad row_splits %s: reported (%d, %d, %d)" % (
                       list(splits), err.split_position, err.split_value, err.split_previous))

    # Host-side argument checks.
    lk = launcher.lookup(tb, None, None, None, None, "sum", 10, 2, np.int64)
    lk.shape.ranks[0] = 2
    size = ctypes.c_size_t()
    chk.expect(lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size)) ==
               ERROR_INVALID_ARGUMENT, "rejects ranks[0] != 1")
    lk = launcher.lookup(tb, None, None, None, None, "sum", 10, 2, np.int64)
    lk.shape.num_rows = math.prod(tb.p) + 1
    chk.expect(lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size)) ==
               ERROR_INVALID_ARGUMENT, "rejects num_rows > prod(p)")
    be = launcher.be
    d_cores = [be.to_device(c) for c in tb.cores]
    d_ids = be.to_device(np.zeros(10, np.int64))
    d_splits = be.to_device(np.array([0, 5, 10], np.int64))
    lk = launcher.lookup(tb, d_cores, d_ids, d_splits, None, "sum", 10, 2, np.int64)
    check_status(lib, lib.tt_cuda_forward_workspace_size(ctypes.byref(lk), ctypes.byref(size)),
                 "size")
    ws, d_err = be.bytes(size.value), be.bytes(64)
    out = be.full((2, tb.dim), 0, np.float32)
    chk.expect(lib.tt_cuda_forward(ctypes.byref(lk), be.ptr(out), be.ptr(ws), size.value - 300,
                                   be.ptr(d_err), None) == ERROR_WORKSPACE_TOO_SMALL,
               "rejects a short workspace")

    print("%d checks, %d failed" % (chk.count, len(chk.failures)), flush=True)
    return chk.failures


# --------------------------------------------------------------------------------------------
# Timings (GPU only)
# --------------------------------------------------------------------------------------------

def time_gpu(fn, sync, iters, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / iters


def run_benchmarks(launcher, iters, smoke=False):
    """Times forward and forward+backward for the spec's example table (sum pooling, bags of
    26 Zipf(1.1) ids), against the same math as batched GEMMs in PyTorch when it is there.
    smoke: a tiny table, one iteration, no PyTorch (to exercise this code under emulation)."""
    be, lib = launcher.be, launcher.lib
    torch = None
    if not smoke:
        try:
            import torch
        except ImportError:
            print("PyTorch not found: timing the TT kernels only, no batched-GEMM baseline")
    if smoke:
        table = Table((20, 22, 25), (2, 2, 4), (1, 8, 8, 1), 10_000, 1234)
        bag_sizes, iters = (16, 64), 1
    else:
        table = Table((200, 220, 250), (2, 2, 4), (1, 32, 32, 1), 10_131_227, 1234)
        bag_sizes = (2048, 65536)
    params = sum(c.size for c in table.cores)
    print("\ntable: %s, %d parameters (%.0fx)" % (
        table.describe(), params, table.num_rows * table.dim / params))
    rng = np.random.default_rng(99)
    d_cores = [be.to_device(c) for c in table.cores]
    results = []
    for dist in ("zipf", "zipf-sorted"):
        for bags in bag_sizes:
            nnz = bags * 26
            ids = make_ids(rng, dist, nnz, table.num_rows, np.int64)
            splits = np.arange(0, nnz + 1, 26, dtype=np.int64)
            distinct = len(np.unique(ids))
            d_ids, d_splits = be.to_device(ids), be.to_device(splits)
            lk = launcher.lookup(table, d_cores, d_ids, d_splits, None, "sum", nnz, bags,
                                 np.int64)
            fsize, bsize = ctypes.c_size_t(), ctypes.c_size_t()
            check_status(lib, lib.tt_cuda_forward_workspace_size(ctypes.byref(lk),
                                                                 ctypes.byref(fsize)), "size")
            check_status(lib, lib.tt_cuda_backward_workspace_size(ctypes.byref(lk),
                                                                  ctypes.byref(bsize)), "size")
            ws_bytes = max(fsize.value, bsize.value)
            ws = be.bytes(ws_bytes)
            d_err = be.bytes(ctypes.sizeof(TTCudaErrorInfo))
            out = be.full((bags, table.dim), np.nan, np.float32)
            h_grad = rng.normal(size=(bags, table.dim)).astype(np.float32)
            grad = be.to_device(h_grad)
            d_grads = [be.full(c.shape, np.nan, np.float32) for c in table.cores]
            gptrs = (ctypes.c_void_p * MAX_CORES)(*[be.ptr(g) for g in d_grads])

            def ours_fwd():
                check_status(lib, lib.tt_cuda_forward(ctypes.byref(lk), be.ptr(out), be.ptr(ws),
                                                      ws_bytes, be.ptr(d_err), None), "forward")

            def ours_fwd_bwd():
                ours_fwd()
                check_status(lib, lib.tt_cuda_backward(ctypes.byref(lk), be.ptr(grad), gptrs,
                                                       be.ptr(ws), ws_bytes, be.ptr(d_err),
                                                       None), "backward")

            # Correctness at scale too: the forward on a sample of bags, and for the smaller
            # batch the core gradients of the whole batch.
            ours_fwd_bwd()
            be.sync()
            sample = np.arange(0, bags, max(1, bags // 64))
            sub_ids = np.concatenate([ids[splits[b]:splits[b + 1]] for b in sample])
            sub_splits = np.concatenate([[0], np.cumsum(np.diff(splits)[sample])])
            ref = oracle_forward(table, sub_ids, sub_splits, None, "sum")
            got = be.host(out)[sample]
            ok = bool(np.allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max()))
            if bags <= 4096:
                g_ref = oracle_backward(table, ids, splits, None, "sum", h_grad)
                for t in range(table.k):
                    g, r = be.host(d_grads[t]), g_ref[t]
                    ok = ok and bool(np.allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max()))
            # The cached lookup with the batch's most frequent 0.1% of the table's rows (what
            # the layer's counter would find), forward and backward with the count read back.
            uniq, counts = np.unique(ids, return_counts=True)
            cache_size = max(1, table.num_rows // 1000)
            cache_ids = np.sort(uniq[np.argsort(-counts, kind="stable")][:cache_size])
            d_cache = launcher.cache(be.to_device(cache_ids.astype(np.int64)),
                                     be.to_device(rng.normal(size=(len(cache_ids), table.dim))
                                                  .astype(np.float32)), len(cache_ids))
            cfsize, cbsize = ctypes.c_size_t(), ctypes.c_size_t()
            check_status(lib, lib.tt_cuda_cached_forward_workspace_size(
                ctypes.byref(lk), ctypes.byref(d_cache), ctypes.byref(cfsize)), "size")
            check_status(lib, lib.tt_cuda_cached_backward_workspace_size(
                ctypes.byref(lk), ctypes.byref(d_cache), ctypes.byref(cbsize)), "size")
            cws_bytes = max(cfsize.value, cbsize.value)
            cws = be.bytes(cws_bytes)
            slots = be.full((nnz,), -7, np.int32)
            d_hits = be.full((1,), 0, np.int64)
            d_count = be.full((1,), 0, np.int64)
            hit_slots = be.full((nnz,), 0, np.int64)
            hit_values = be.full((nnz, table.dim), 0, np.float32)

            def cached_fwd_bwd():
                check_status(lib, lib.tt_cuda_cached_forward(
                    ctypes.byref(lk), ctypes.byref(d_cache), be.ptr(out), be.ptr(slots),
                    be.ptr(d_hits), be.ptr(cws), cws_bytes, be.ptr(d_err), None), "forward")
                check_status(lib, lib.tt_cuda_cached_backward(
                    ctypes.byref(lk), ctypes.byref(d_cache), be.ptr(grad), gptrs,
                    be.ptr(d_count), be.ptr(cws), cws_bytes, be.ptr(d_err), None), "backward")
                count = ctypes.c_int64()
                check_status(lib, lib.tt_cuda_read_count(be.ptr(d_count), ctypes.byref(count),
                                                         None), "read_count")
                check_status(lib, lib.tt_cuda_cached_backward_cache_grads(
                    ctypes.byref(lk), ctypes.byref(d_cache), count.value, be.ptr(hit_slots),
                    be.ptr(hit_values), be.ptr(cws), cws_bytes, None), "cache grads")

            row = {"dist": dist, "bags": bags, "nnz": nnz, "distinct": distinct, "ok": ok,
                   "ours_fwd": time_gpu(ours_fwd, be.sync, iters),
                   "ours_fwd_bwd": time_gpu(ours_fwd_bwd, be.sync, iters),
                   "cached_fwd_bwd": time_gpu(cached_fwd_bwd, be.sync, iters),
                   "cache_hits": float(np.isin(ids, cache_ids).mean())}
            if torch is not None:
                row.update(torch_baseline(torch, table, ids, splits, h_grad, iters))
            results.append(row)
            print(format_row(row), flush=True)
    return all(r["ok"] for r in results)


def torch_baseline(torch, table, ids, splits, h_grad, iters):
    """The same math as batched GEMMs: torch.unique, gathered core slices, torch.bmm, and
    index_add_ pooling; backward by autograd. Plus a dense nn.EmbeddingBag for scale."""
    dev = torch.device("cuda")
    cores = [torch.tensor(c, device=dev, requires_grad=True) for c in table.cores]
    t_ids = torch.tensor(ids, device=dev)
    counts = torch.tensor(np.diff(splits), device=dev)
    bags = len(splits) - 1
    bag_of = torch.repeat_interleave(torch.arange(bags, device=dev), counts)
    grad = torch.tensor(h_grad, device=dev)
    suffix = [math.prod(table.p[t + 1:]) for t in range(table.k)]

    def fwd():
        uniq, inv = torch.unique(t_ids, return_inverse=True)
        n = uniq.numel()
        d = [(uniq // suffix[t]) % table.p[t] for t in range(table.k)]
        P = cores[0][d[0]].reshape(n, table.q[0], table.ranks[1])
        for t in range(1, table.k):
            G = cores[t][d[t]].reshape(n, table.ranks[t], table.q[t] * table.ranks[t + 1])
            P = torch.bmm(P, G).reshape(n, -1, table.ranks[t + 1])
        rows = P.reshape(n, table.dim)
        return torch.zeros(bags, table.dim, device=dev).index_add_(0, bag_of, rows[inv])

    def fwd_nograd():
        with torch.no_grad():
            fwd()

    def fwd_bwd():
        for c in cores:
            c.grad = None
        fwd().backward(grad)

    sync = torch.cuda.synchronize
    out = {"torch_fwd": time_gpu(fwd_nograd, sync, iters),
           "torch_fwd_bwd": time_gpu(fwd_bwd, sync, iters)}
    try:
        dense = torch.nn.EmbeddingBag(table.num_rows, table.dim, mode="sum", sparse=True).to(dev)
        offsets = torch.tensor(splits[:-1], device=dev)

        def dense_fwd_bwd():
            dense.weight.grad = None
            dense(t_ids, offsets).backward(grad)

        def dense_fwd():
            with torch.no_grad():
                dense(t_ids, offsets)

        out["dense_fwd"] = time_gpu(dense_fwd, sync, iters)
        out["dense_fwd_bwd"] = time_gpu(dense_fwd_bwd, sync, iters)
        del dense
    except RuntimeError as e:  # out of memory on a small GPU
        print("dense EmbeddingBag skipped: %s" % e)
    return out


def format_row(r):
    s = "%-11s %6d bags x 26 (%5.1f%% distinct)%s: TT fwd %.3f ms, fwd+bwd %.3f ms" % (
        r["dist"], r["bags"], 100.0 * r["distinct"] / r["nnz"], "" if r["ok"] else " MISMATCH",
        r["ours_fwd"], r["ours_fwd_bwd"])
    if "cached_fwd_bwd" in r:
        s += " | cached (0.1%%, %.0f%% hits) fwd+bwd %.3f ms" % (100.0 * r["cache_hits"],
                                                               r["cached_fwd_bwd"])
    if "torch_fwd" in r:
        s += " | bmm chain fwd %.3f ms (%.1fx), fwd+bwd %.3f ms (%.1fx)" % (
            r["torch_fwd"], r["torch_fwd"] / r["ours_fwd"], r["torch_fwd_bwd"],
            r["torch_fwd_bwd"] / r["ours_fwd_bwd"])
    if "dense_fwd" in r:
        s += " | dense EmbeddingBag fwd %.3f ms, fwd+bwd %.3f ms" % (r["dense_fwd"],
                                                                     r["dense_fwd_bwd"])
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default="custom_ops/cuda/libtt_cuda_harness.so")
    ap.add_argument("--emu", action="store_true",
                    help="the library is the host-thread emulation (libtt_cuda_emu.so): "
                         "NumPy arrays instead of CuPy, no timings")
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    ap.add_argument("--no-bench", action="store_true", help="skip the timings")
    ap.add_argument("--bench-smoke", action="store_true",
                    help="run the timing code on a tiny table, once (works with --emu)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    lib = load_library(args.lib)
    be = Backend(args.emu)
    launcher = Launcher(lib, be)
    print("device: %s" % be.device_name(), flush=True)
    t0 = time.perf_counter()
    failures = run_checks(launcher, args.quick, args.verbose, args.seed)
    print("checks took %.1f s" % (time.perf_counter() - t0))
    bench_ok = True
    if args.bench_smoke:
        bench_ok = run_benchmarks(launcher, args.iters, smoke=True)
    elif not args.emu and not args.no_bench:
        print("\ntimings on %s" % be.device_name())
        bench_ok = run_benchmarks(launcher, args.iters)
    if failures or not bench_ok:
        print("FAILED: %d check(s)%s" % (len(failures), "" if bench_ok else
                                          " and a benchmark mismatch"))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
