"""The CUDA kernels, through their C launchers (custom_ops/cuda/bindings.py), against
tt_keras.oracle.

Two builds of custom_ops/cuda/tt_kernels.cu run the same checks:
- "emu": libtt_cuda_emu.so, the kernels compiled by g++ against a host-thread emulation of
  CUDA (custom_ops/cuda/emu/cuda_emu.h). It needs only g++, so every machine checks the
  kernels' logic. Blocks run 32 emulated threads (TT_EMU_MAX_BLOCK_THREADS, unless set: the
  kernels stride by blockDim.x, so any count is valid), which keeps this near half a minute
  on two cores.
- "gpu": libtt_cuda_harness.so, the real kernels, when nvcc, a GPU and CuPy are present.

Outputs and gradients are float32 sums of O(1) terms compared with the float64 oracle.
Needs neither Keras nor TensorFlow: `make test` runs these once.
"""

import ctypes
import dataclasses
import functools
import math
import os
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from tt_keras import oracle
from tt_keras.tt_math import TTShape

from custom_ops.cuda import bindings

pytestmark = pytest.mark.no_keras

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "custom_ops", "cuda")
EMPTY = np.iinfo(np.int64).max  # an empty cache slot


# ---------------------------------------------------------------- the libraries

def _build(target, library):
    result = subprocess.run(["make", "-C", CUDA_DIR, target], capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return os.path.join(CUDA_DIR, library)


def _gpu_with_cupy():
    try:
        import cupy  # pylint: disable=import-outside-toplevel

        return cupy.cuda.runtime.getDeviceCount() > 0
    except (ImportError, RuntimeError):  # no CuPy, or no driver / device
        return False


@pytest.fixture(scope="module", params=["emu", "gpu"])
def kernels(request):
    if request.param == "emu":
        if shutil.which(os.environ.get("CXX", "g++")) is None:
            pytest.skip("g++ not found: cannot build the emulated kernels")
        path = _build("emu", "libtt_cuda_emu.so")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TT_EMU_MAX_BLOCK_THREADS",
                      os.environ.get("TT_EMU_MAX_BLOCK_THREADS", "32"))
            yield bindings.Kernels(path, emulated=True)
    else:
        if shutil.which("nvcc") is None or not _gpu_with_cupy():
            pytest.skip("needs nvcc, a GPU and CuPy")
        yield bindings.Kernels(_build("libtt_cuda_harness.so", "libtt_cuda_harness.so"),
                               emulated=False)


@pytest.fixture
def rng(request):
    """A generator seeded by the test's name: reproducible, different for every case."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------- tables and inputs

@dataclasses.dataclass
class Table:
    shape: TTShape
    num_rows: int
    cores: list

    @property
    def dim(self):
        return self.shape.dim

    @functools.cached_property
    def dense(self):
        return oracle.dense_table(self.cores, self.num_rows)


TABLES = {
    "k2": (TTShape((37, 29), (4, 4), (1, 8, 1)), 1000),
    "k3": (TTShape((13, 11, 9), (2, 2, 4), (1, 16, 16, 1)), 1200),
    "k4": (TTShape((7, 6, 5, 8), (2, 2, 2, 2), (1, 4, 8, 4, 1)), 1600),
    "k3r64": (TTShape((20, 20, 20), (4, 4, 4), (1, 64, 64, 1)), 7000),
    "k4r64": (TTShape((6, 6, 6, 6), (2, 4, 4, 2), (1, 64, 64, 64, 1)), 1200),
    "k2r128D256": (TTShape((50, 40), (16, 16), (1, 128, 1)), 1999),
    "k3r128D256": (TTShape((10, 10, 10), (4, 8, 8), (1, 128, 128, 1)), 1000),
    # Ids past 2^32: 64-bit sort keys. Too large for a dense table.
    "wide": (TTShape((2000, 2000, 2000), (2, 2, 2), (1, 4, 4, 1)), 5_000_000_000),
}


@functools.lru_cache(maxsize=None)
def table(name):
    shape, num_rows = TABLES[name]
    seed = list(TABLES).index(name)
    return Table(shape, num_rows, oracle.random_cores(shape, np.random.default_rng(seed)))


def big(name):
    return max(TABLES[name][0].ranks) >= 64


def make_ids(rng, kind, nnz, num_rows, dtype=np.int64):
    if kind == "uniform":
        ids = rng.integers(0, num_rows, size=nnz)
    elif kind == "zipf":
        # Zipf(1.1) ranks, then a bijection of [0, N) so that hot ids are spread out (as
        # hashed ids are) rather than all being the smallest.
        ranks = (rng.zipf(1.1, size=nnz) - 1) % num_rows
        mult = 2654435761 % num_rows or 1
        while math.gcd(mult, num_rows) != 1:
            mult += 1
        ids = (ranks.astype(object) * mult % num_rows).astype(np.int64)
    elif kind == "zipf-sorted":
        ids = (rng.zipf(1.1, size=nnz) - 1) % num_rows  # hot ids are the small ids
    else:  # "distinct"
        ids = rng.choice(num_rows, size=nnz, replace=False)
    return np.asarray(ids, dtype=dtype)


def make_splits(rng, nnz, num_bags):
    """Random bag sizes summing to nnz, with empty bags (first and last included)."""
    cuts = np.sort(rng.integers(0, nnz + 1, size=num_bags - 1))
    splits = np.concatenate([[0], cuts, [nnz]]).astype(np.int64)
    if num_bags >= 3:
        splits[1] = 0  # bag 0 empty
        splits[-2] = nnz  # last bag empty
        splits = np.maximum.accumulate(splits)
    return splits


def bags_of(ids, splits, weights, combiner):
    """The oracle's ragged bags and weights for the launchers' flat ids and splits."""
    if combiner == "none":
        return [ids], None
    w = None if weights is None else oracle.split_bags(weights, splits)
    return oracle.split_bags(ids, splits), w


def assert_close(got, want):
    """float32 sums of up to a few hundred O(1) terms against the float64 oracle."""
    want = np.asarray(want)
    atol = 1e-5 * float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


def check_lookup(kernels, t, ids, splits, weights, combiner, rng):
    """Forward and backward of the plain launchers against the oracle."""
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, weights, combiner)
    out, error = kernels.forward(lookup)
    assert error.clean
    if t.num_rows <= 10**6:
        dense, looked_up = t.dense, ids
    else:  # only the rows looked up, as a small table
        unique_ids, looked_up = np.unique(ids, return_inverse=True)
        dense = oracle.sampled_rows(t.cores, unique_ids)
    bags, w = bags_of(ids, splits, weights, combiner)
    assert_close(out, oracle.pooled_oracle(dense, bags_of(looked_up, splits, None, combiner)[0],
                                           w, combiner))
    grad = rng.normal(size=out.shape).astype(np.float32)
    grads, error = kernels.backward(lookup, grad)
    assert error.clean
    for got, want in zip(grads, oracle.core_grads_oracle(t.cores, bags, w, combiner, grad)):
        assert_close(got, want)


# ---------------------------------------------------------------- plain lookups

DISTS = ("uniform", "zipf", "zipf-sorted", "distinct")
COMBOS = [("none", False), ("sum", False), ("sum", True), ("mean", False), ("mean", True),
          ("sqrtn", False), ("sqrtn", True)]


def _lookup_cases():
    """A third of the (distribution, combiner) pairs, rotating, plus weighted mean always:
    every small table sees every distribution, combiner and id width; the rank-64 and -128
    tables (slow to emulate) Zipf ids only."""
    for name in TABLES:
        if name == "wide":
            continue
        for di, dist in enumerate(DISTS):
            if big(name) and dist != "zipf":
                continue
            for ci, (combiner, weighted) in enumerate(COMBOS):
                if (ci + di) % 3 and (combiner, weighted) != ("mean", True):
                    continue
                dtype = np.int32 if (ci + di) % 2 == 0 else np.int64
                yield pytest.param(name, dist, combiner, weighted, dtype, id="-".join(
                    [name, dist, combiner + ("+w" if weighted else ""), dtype.__name__]))


@pytest.mark.parametrize("name,dist,combiner,weighted,dtype", list(_lookup_cases()))
def test_lookup_matches_oracle(kernels, rng, name, dist, combiner, weighted, dtype):
    t = table(name)
    nnz = 60 if big(name) else 250
    n = min(nnz, t.num_rows) if dist == "distinct" else nnz
    ids = make_ids(rng, dist, n, t.num_rows, dtype)
    splits = make_splits(rng, n, max(nnz // 9, 3))
    weights = None
    if weighted:
        weights = rng.uniform(0.0, 2.0, size=n).astype(np.float32)
        weights[:3] = 0.0  # zero weights (and possibly zero-norm bags)
    check_lookup(kernels, t, ids, splits, weights, combiner, rng)


@pytest.mark.parametrize("budget", [1024, 1], ids=["unstaged", "global-scratch"])
@pytest.mark.parametrize("name", ["k2", "k3", "k4"])
def test_slower_paths_match_oracle(kernels, rng, name, budget):
    """Small shared-memory budgets: core slices read from global memory, then partial
    products kept in global memory."""
    t = table(name)
    ids = make_ids(rng, "zipf", 200, t.num_rows)
    splits = make_splits(rng, len(ids), 25)
    with kernels.shared_memory_budget(budget):
        check_lookup(kernels, t, ids, splits, None, "sum", rng)
        weights = rng.uniform(0.5, 1.5, len(ids)).astype(np.float32)
        check_lookup(kernels, t, ids, splits, weights, "sqrtn", rng)


def test_single_and_repeated_ids(kernels, rng):
    t = table("k3")
    check_lookup(kernels, t, np.array([5], np.int64), np.array([0, 1], np.int64), None, "sum",
                 rng)
    check_lookup(kernels, t, np.array([t.num_rows - 1] * 7, np.int32),
                 np.array([0, 3, 7], np.int64), None, "mean", rng)


def test_ids_past_2_to_the_32(kernels, rng):
    t = table("wide")
    ids = rng.integers(0, t.num_rows, size=300, dtype=np.int64)
    ids[::7] = ids[0]
    check_lookup(kernels, t, ids, make_splits(rng, len(ids), 30), None, "sum", rng)


def test_empty_batch_gives_zero_rows_and_gradients(kernels):
    t = table("k3")
    lookup = kernels.lookup(t.cores, t.num_rows, np.zeros(0, np.int64), np.zeros(5, np.int64),
                            None, "mean")
    out, error = kernels.forward(lookup)
    assert out.shape == (4, t.dim) and not out.any() and error.clean
    grads, error = kernels.backward(lookup, np.ones((4, t.dim), np.float32))
    assert all(g.shape == c.shape and not g.any() for g, c in zip(grads, t.cores))
    assert error.clean


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_unique_matches_numpy(kernels, rng, dtype):
    ids = make_ids(rng, "zipf", 500, 10_000, dtype)
    unique_ids, inverse, error = kernels.unique(ids, 10_000)
    want_unique, want_inverse = np.unique(ids.astype(np.int64), return_inverse=True)
    np.testing.assert_array_equal(unique_ids, want_unique)
    np.testing.assert_array_equal(inverse, want_inverse.reshape(-1))
    assert error.clean


def test_unique_puts_bad_ids_in_one_extra_slot(kernels):
    ids = np.array([4, 9, 4, -2, 12, 9, 10], np.int64)
    unique_ids, inverse, error = kernels.unique(ids, 11)  # -2 and 12 share the slot of 11
    assert unique_ids.tolist() == [4, 9, 10, 11]
    assert inverse.tolist() == [0, 1, 0, 3, 3, 1, 2]
    assert (error.index_position, error.index_value) == (3, -2)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_bad_ids_are_reported_and_read_nothing_out_of_bounds(kernels, rng, dtype):
    t = table("k3")
    ids = make_ids(rng, "uniform", 100, t.num_rows, dtype)
    ids[40] = -3
    ids[17] = t.num_rows
    ids[90] = t.num_rows + 5
    splits = make_splits(rng, 100, 10)
    for combiner in ("sum", "none"):
        out, error = kernels.forward(kernels.lookup(t.cores, t.num_rows, ids, splits, None,
                                                    combiner))
        assert (error.index_position, error.index_value) == (17, t.num_rows), combiner
        assert error.split_position == -1 and np.isfinite(out).all()
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, None, "sum")
    grads, error = kernels.backward(lookup, np.ones((10, t.dim), np.float32))
    assert error.index_position == 17 and all(np.isfinite(g).all() for g in grads)
    # Bad ids get zero rows; the valid ones are still right.
    ids[2] = -1
    out, error = kernels.forward(kernels.lookup(t.cores, t.num_rows, ids, None, None, "none"))
    good = (ids >= 0) & (ids < t.num_rows)
    assert (error.index_position, error.index_value) == (2, -1)
    assert not out[~good].any()
    assert_close(out[good], t.dense[ids[good]])


def test_only_bad_ids(kernels):
    t = table("k3")
    ids = np.array([-1, t.num_rows, -5, 2**40], np.int64)
    lookup = kernels.lookup(t.cores, t.num_rows, ids, np.array([0, 2, 4], np.int64), None,
                            "sum")
    out, error = kernels.forward(lookup)
    assert (error.index_position, error.index_value) == (0, -1) and not out.any()
    grads, error = kernels.backward(lookup, np.ones((2, t.dim), np.float32))
    assert error.index_position == 0 and all(not g.any() for g in grads)


@pytest.mark.parametrize("splits,position,value,previous", [
    ([1, 20, 50], 0, 1, 0),
    ([0, 30, 20, 50], 2, 20, 30),
    ([0, 20, 40], 2, 40, 20),
    ([0, 20, 60], 2, 60, 20),
    ([0, -5, 50], 1, -5, 0),
], ids=["first-not-0", "decreasing", "short", "past-the-end", "negative"])
def test_malformed_row_splits_are_reported(kernels, rng, splits, position, value, previous):
    t = table("k3")
    splits = np.array(splits, np.int64)
    lookup = kernels.lookup(t.cores, t.num_rows, make_ids(rng, "uniform", 50, t.num_rows),
                            splits, None, "mean")
    out, error = kernels.forward(lookup)
    assert (error.split_position, error.split_value, error.split_previous) == (
        position, value, previous)
    assert np.isfinite(out).all()
    grads, error = kernels.backward(lookup, np.ones((len(splits) - 1, t.dim), np.float32))
    assert error.split_position == position and all(np.isfinite(g).all() for g in grads)


def test_launchers_check_their_arguments(kernels):
    t = table("k3")
    ids, splits = np.zeros(10, np.int64), np.array([0, 5, 10], np.int64)
    size = ctypes.c_size_t()
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, None, "sum")
    lookup.struct.shape.ranks[0] = 2
    assert kernels.lib.tt_cuda_forward_workspace_size(lookup.ref, ctypes.byref(size)) == \
        bindings.ERROR_INVALID_ARGUMENT
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, None, "sum")
    lookup.struct.shape.num_rows = math.prod(t.shape.row_shape) + 1
    assert kernels.lib.tt_cuda_forward_workspace_size(lookup.ref, ctypes.byref(size)) == \
        bindings.ERROR_INVALID_ARGUMENT
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, None, "sum")
    forward = bindings.Forward(kernels, lookup)
    workspace, nbytes, error = forward.ptrs()
    assert kernels.lib.tt_cuda_forward(lookup.ref, kernels.memory.ptr(forward.output),
                                       workspace, nbytes - 300, error, None) == \
        bindings.ERROR_WORKSPACE_TOO_SMALL


# ---------------------------------------------------------------- cached lookups

def check_cached(kernels, t, cache_ids, ids, splits, weights, combiner, rng):
    """The cached launchers against the oracle: output, slots and hit count, the misses'
    core gradients, and the cache rows' gradient slot by slot."""
    cache_rows = rng.normal(size=(len(cache_ids), t.dim)).astype(np.float32)
    lookup = kernels.lookup(t.cores, t.num_rows, ids, splits, weights, combiner)
    cache = kernels.cache(cache_ids, cache_rows)
    out, slots, hits, error = kernels.cached_forward(lookup, cache)
    assert error.clean
    bags, w = bags_of(ids, splits, weights, combiner)
    table_read = oracle.cached_table(t.cores, t.num_rows, cache_ids, cache_rows)
    assert_close(out, oracle.pooled_oracle(table_read, bags, w, combiner))
    want_slots = oracle.cache_slots(cache_ids, ids, t.num_rows)
    np.testing.assert_array_equal(slots, want_slots)
    assert hits == int((want_slots >= 0).sum())

    grad = rng.normal(size=out.shape).astype(np.float32)
    grads, hit_slots, hit_values, error = kernels.cached_backward(lookup, cache, grad)
    assert error.clean
    want_cores, want_slot_grads = oracle.cached_grads_oracle(
        t.cores, t.num_rows, cache_ids, bags, w, combiner, grad)
    for got, want in zip(grads, want_cores):
        assert_close(got, want)
    np.testing.assert_array_equal(hit_slots, np.unique(want_slots[want_slots >= 0]))
    assert_close(hit_values, want_slot_grads[hit_slots])


@pytest.mark.parametrize("combiner,weighted,dtype", [
    ("none", False, np.int32), ("sum", False, np.int64), ("mean", True, np.int32),
    ("sqrtn", True, np.int64)], ids=["none-int32", "sum-int64", "mean+w-int32",
                                     "sqrtn+w-int64"])
@pytest.mark.parametrize("name", ["k2", "k3", "k4", "k3r64"])
def test_cached_lookup_matches_oracle(kernels, rng, name, combiner, weighted, dtype):
    t = table(name)
    nnz = 60 if big(name) else 200
    ids = make_ids(rng, "zipf", nnz, t.num_rows)
    # The hottest quarter of the ids and a few others, two empty slots at the end.
    unique_ids, counts = np.unique(ids, return_counts=True)
    hot = unique_ids[np.argsort(-counts)][:max(len(unique_ids) // 4, 1)]
    cold = rng.choice(t.num_rows, size=5, replace=False)
    cache_ids = np.concatenate([np.union1d(hot, cold), [EMPTY, EMPTY]])
    splits = make_splits(rng, nnz, max(nnz // 9, 3))
    weights = rng.uniform(0.1, 2.0, size=nnz).astype(np.float32) if weighted else None
    check_cached(kernels, t, cache_ids, ids.astype(dtype), splits, weights, combiner, rng)


@pytest.mark.parametrize("case", ["all-hits", "no-hits", "empty-cache", "only-empty-slots",
                                  "num_rows-as-an-empty-slot", "empty-batch"])
def test_cached_lookup_edge_cases(kernels, rng, case):
    t = table("k3")
    ids = make_ids(rng, "zipf", 120, t.num_rows)
    splits = make_splits(rng, 120, 12)
    every = np.unique(ids)
    cache_ids = {"all-hits": every,
                 "no-hits": np.setdiff1d(np.arange(40), every)[:5],
                 "empty-cache": np.zeros(0, np.int64),
                 "only-empty-slots": np.full(3, EMPTY),
                 "num_rows-as-an-empty-slot": np.array([t.num_rows]),
                 "empty-batch": every}[case]
    if case == "empty-batch":
        ids, splits = np.zeros(0, np.int64), np.zeros(4, np.int64)
    check_cached(kernels, t, cache_ids, ids, splits, None, "mean" if case == "empty-batch"
                 else "sum", rng)


@pytest.mark.parametrize("cache_ids,position,value,previous", [
    ([3, 9, 7, 20], 2, 7, 9),
    ([-4, 2, 5], 0, -4, 0),
    ([2, 5, 5, 8], 2, 5, 5),
], ids=["unsorted", "negative", "a-row-held-twice"])
def test_bad_cache_is_reported(kernels, rng, cache_ids, position, value, previous):
    t = table("k3")
    ids = make_ids(rng, "zipf", 120, t.num_rows)
    lookup = kernels.lookup(t.cores, t.num_rows, ids, make_splits(rng, 120, 12), None, "sum")
    cache = kernels.cache(cache_ids, np.ones((len(cache_ids), t.dim), np.float32))
    out, _, _, error = kernels.cached_forward(lookup, cache)
    assert (error.cache_position, error.cache_value, error.cache_previous) == (
        position, value, previous)
    assert np.isfinite(out).all()
    grads, _, _, error = kernels.cached_backward(lookup, cache,
                                                 np.ones((12, t.dim), np.float32))
    assert error.cache_position == position and all(np.isfinite(g).all() for g in grads)


def test_cached_lookup_reports_a_bad_id(kernels, rng):
    t = table("k3")
    ids = make_ids(rng, "zipf", 120, t.num_rows)
    every = np.unique(ids)
    ids[7] = t.num_rows + 3
    lookup = kernels.lookup(t.cores, t.num_rows, ids, make_splits(rng, 120, 12), None, "sum")
    cache = kernels.cache(every, np.ones((len(every), t.dim), np.float32))
    out, _, _, error = kernels.cached_forward(lookup, cache)
    assert (error.index_position, error.index_value) == (7, t.num_rows + 3)
    assert np.isfinite(out).all()
