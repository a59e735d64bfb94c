"""`tt_embedding_bag`: the one entry point that picks the custom op or the pure-TF path.

Everything that looks rows up (the layer, benchmarks, export) goes through here, so the
choice of backend, the dtype handling and the input checks live in one place.
"""

import contextlib
import threading

import numpy as np
import tensorflow as tf

from tt_keras import cache as _cache
from tt_keras import reference
from tt_keras.ops import COMBINERS, tt_ops_library
from tt_keras.ops import tt_embedding_bag as _op_embedding_bag
from tt_keras.ops import tt_embedding_bag_cached as _op_embedding_bag_cached

BACKENDS = ("auto", "op", "reference")

_scope = threading.local()


@contextlib.contextmanager
def lookup_backend_scope(backend):
    """Forces `backend` for every TT lookup traced or run inside the scope.

    `lookup_backend_scope("reference")` is how a portable SavedModel is traced: the graph
    then holds standard TF ops only, whatever backend the layers were built with.
    """
    _check_backend(backend)
    previous = getattr(_scope, "backend", None)
    _scope.backend = backend
    try:
        yield
    finally:
        _scope.backend = previous


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"lookup_backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend="auto"):
    """'op' or 'reference': the path a lookup with `backend` takes here and now."""
    _check_backend(backend)
    forced = getattr(_scope, "backend", None)
    if forced is not None:
        backend = forced
    if backend == "auto":
        return "op" if tt_ops_library.available(warn=True) else "reference"
    if backend == "op":
        tt_ops_library.ops  # raises OpLibraryUnavailable with the reason
    return backend


def _invalid_argument(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _checked_ids(ids, num_rows):
    """ids, with a check that every id is in [0, num_rows) (the op checks its own)."""
    if tf.executing_eagerly():
        values = ids.numpy()
        bad = np.flatnonzero((values < 0) | (values >= num_rows))
        if bad.size:
            raise _invalid_argument(
                f"indices[{bad[0]}] = {values[bad[0]]} is out of range [0, {num_rows})"
            )
        return ids
    bad = (ids < 0) | (ids >= num_rows)
    first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int64)
    value = tf.gather(ids, first) if ids.shape[0] != 0 else tf.constant(0, ids.dtype)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["indices[", first, "] =", value, f"is out of range [0, {num_rows})"],
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


def _checked_splits(row_splits, nnz):
    """row_splits, with a check that they start at 0, never decrease and end at nnz."""
    if tf.executing_eagerly():
        s = row_splits.numpy()
        n = int(nnz)
        if s.size == 0 or s[0] != 0:
            raise _invalid_argument(f"row_splits must start with 0, got {s[:5].tolist()}")
        drops = np.flatnonzero(np.diff(s) < 0)
        if drops.size:
            b = drops[0]
            raise _invalid_argument(
                f"row_splits must not decrease: row_splits[{b + 1}] = {s[b + 1]} < "
                f"row_splits[{b}] = {s[b]}"
            )
        if s[-1] != n:
            raise _invalid_argument(
                f"row_splits[-1] = {s[-1]} must equal the number of indices, {n}"
            )
        return row_splits
    checks = [
        tf.debugging.assert_equal(row_splits[0], tf.constant(0, tf.int64),
                                  message="row_splits must start with 0"),
        tf.debugging.assert_non_negative(row_splits[1:] - row_splits[:-1],
                                         message="row_splits must not decrease"),
        tf.debugging.assert_equal(row_splits[-1], tf.cast(nnz, tf.int64),
                                  message="row_splits[-1] must equal the number of indices"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(row_splits)


def _splits_from_segment_ids(segment_ids, num_bags, num_ids):
    """row_splits of bags given as sorted segment ids (the bag of each id, as
    tf.math.segment_sum takes them); bags with no id are empty. Checks that the segment ids
    are integers, one per id, non-negative, non-decreasing and below num_bags."""
    segment_ids = tf.convert_to_tensor(segment_ids)
    if not segment_ids.dtype.is_integer:
        raise TypeError(f"segment_ids must be integers, got dtype {segment_ids.dtype.name}")
    segment_ids = tf.cast(segment_ids, tf.int64)
    if segment_ids.shape.rank != 1:
        raise ValueError(f"segment_ids must be a vector, got shape {segment_ids.shape}")
    n_seg = segment_ids.shape[0]
    if n_seg is not None and num_ids is not None and n_seg != num_ids:
        raise ValueError(f"segment_ids has {n_seg} entries but ids has {num_ids}")
    if num_bags is None:
        num_bags = (tf.reduce_max(segment_ids) + 1 if n_seg != 0
                    else tf.constant(0, tf.int64))
    elif not isinstance(num_bags, tf.Tensor) and int(num_bags) < 0:
        raise ValueError(f"num_bags must be >= 0, got {num_bags}")
    num_bags = tf.cast(num_bags, tf.int64)
    if tf.executing_eagerly():
        s = segment_ids.numpy()
        negative = np.flatnonzero(s < 0)
        if negative.size:
            i = negative[0]
            raise _invalid_argument(f"segment_ids[{i}] = {s[i]} is negative")
        drops = np.flatnonzero(np.diff(s) < 0)
        if drops.size:
            i = drops[0] + 1
            raise _invalid_argument(f"segment_ids must be sorted: segment_ids[{i}] = {s[i]} < "
                                    f"segment_ids[{i - 1}] = {s[i - 1]}")
        too_big = np.flatnonzero(s >= int(num_bags))
        if too_big.size:
            i = too_big[0]
            raise _invalid_argument(f"segment_ids[{i}] = {s[i]} is not below num_bags = "
                                    f"{int(num_bags)}")
    else:
        checks = [
            tf.debugging.assert_non_negative(segment_ids,
                                             message="segment_ids must be non-negative"),
            tf.debugging.assert_non_negative(segment_ids[1:] - segment_ids[:-1],
                                             message="segment_ids must be sorted"),
            tf.debugging.assert_less(segment_ids, num_bags,
                                     message="segment_ids must be below num_bags"),
        ]
        with tf.control_dependencies(checks):
            segment_ids = tf.identity(segment_ids)
    counts = tf.math.bincount(segment_ids, minlength=num_bags, maxlength=num_bags,
                              dtype=tf.int64)
    return tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], 0)


def _bag_boundaries(ids, row_splits, segment_ids, num_bags):
    """The row_splits a lookup runs on: the given ones, or those of segment_ids."""
    if segment_ids is None:
        if num_bags is not None:
            raise ValueError("num_bags goes with segment_ids; row_splits already give the "
                             "number of bags")
        return row_splits
    if row_splits is not None:
        raise ValueError("give the bags as row_splits or as segment_ids, not both")
    num_ids = tf.convert_to_tensor(ids).shape[0] if ids is not None else None
    return _splits_from_segment_ids(segment_ids, num_bags, num_ids)


def _prepared_inputs(cores, ids, row_splits, weights, combiner, num_rows):
    """Checks and normalises the arguments shared by the lookups (static checks only).

    Returns (float32 cores, ids, int64 row_splits, float32 weights or None, num_rows,
    output dtype).
    """
    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
    cores = [tf.convert_to_tensor(c) for c in cores]
    row_shape = [int(c.shape[0]) for c in cores]
    padded_rows = int(np.prod(row_shape))
    if num_rows is None:
        num_rows = padded_rows
    if num_rows > padded_rows:
        raise ValueError(f"num_rows = {num_rows} exceeds the {padded_rows} rows the cores hold")
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"ids must be integers, got ids of dtype {ids.dtype.name}")
    if ids.dtype not in (tf.int32, tf.int64):
        ids = tf.cast(ids, tf.int64)
    if ids.shape.rank != 1:
        raise ValueError(f"ids must be a vector, got shape {ids.shape}")
    if combiner == "none":
        if weights is not None:
            raise ValueError("weights need a combiner ('sum', 'mean' or 'sqrtn'); combiner is "
                             "'none'")
        row_splits = tf.zeros([0], tf.int64)
    else:
        if row_splits is None:
            raise ValueError(f"combiner={combiner!r} needs row_splits (bag boundaries)")
        row_splits = tf.convert_to_tensor(row_splits)
        if not row_splits.dtype.is_integer:
            raise TypeError(f"row_splits must be integers, got dtype {row_splits.dtype.name}")
        row_splits = tf.cast(row_splits, tf.int64)
    if weights is not None:
        weights = tf.convert_to_tensor(weights)
        if not weights.dtype.is_floating:
            raise TypeError(f"weights must be floats, got dtype {weights.dtype.name}")
        weights = tf.cast(weights, tf.float32)
        if weights.shape.rank != 1:
            raise ValueError(f"weights must be a vector, got shape {weights.shape}")
        n_w, n_ids = weights.shape[0], ids.shape[0]
        if n_w is not None and n_ids is not None and n_w != n_ids:
            raise ValueError(f"weights has {n_w} entries but ids has {n_ids}")

    # The kernels compute in float32; mixed-precision layers hand over float16/bfloat16 cores.
    out_dtype = cores[0].dtype
    cores = [tf.cast(c, tf.float32) for c in cores]
    return cores, ids, row_splits, weights, num_rows, out_dtype


def _checked_reference_inputs(ids, row_splits, weights, combiner, num_rows, check_splits):
    """ids, row_splits, weights with the run-time checks the ops make themselves."""
    ids = _checked_ids(ids, num_rows)
    if weights is not None:
        check = tf.debugging.assert_equal(
            tf.size(weights), tf.size(ids), message="weights must have one entry per id")
        with tf.control_dependencies([check]):
            weights = tf.identity(weights)
    if combiner != "none" and check_splits:
        row_splits = _checked_splits(row_splits, tf.size(ids, out_type=tf.int64))
    return ids, row_splits, weights


def tt_embedding_bag(
    cores,
    ids,
    row_splits=None,
    weights=None,
    combiner="none",
    num_rows=None,
    backend="auto",
    check_splits=True,
    segment_ids=None,
    num_bags=None,
):
    """Looks up and pools rows of a TT-compressed table.

    Args:
      cores: list of 2-4 core tensors, core t shaped (p_t, r_{t-1}, q_t, r_t).
      ids: integer vector of row ids in [0, num_rows).
      row_splits: int vector [num_bags + 1] of bag boundaries; required unless combiner is
        "none".
      weights: optional float vector [len(ids)] of per-id weights (needs a combiner).
      combiner: "none" (one row per id), "sum", "mean" or "sqrtn", as
        tf.nn.embedding_lookup_sparse.
      num_rows: rows of the table (default: prod(p_t)).
      backend: "auto" (the custom op when its library loads, else pure TF), "op" or
        "reference"; `lookup_backend_scope` overrides it.
      check_splits: set False when row_splits are valid by construction (RaggedTensor).
      segment_ids: instead of row_splits, the bag of each id: an integer vector [len(ids)],
        sorted, as tf.math.segment_sum takes it.
      num_bags: with segment_ids, the number of bags (default: max(segment_ids) + 1); bags
        that no id names are empty.

    Returns:
      [len(ids), D] for combiner "none", else [num_bags, D], in the cores' dtype.
    """
    row_splits = _bag_boundaries(ids, row_splits, segment_ids, num_bags)
    cores, ids, row_splits, weights, num_rows, out_dtype = _prepared_inputs(
        cores, ids, row_splits, weights, combiner, num_rows)
    if resolve_backend(backend) == "op":
        out = _op_embedding_bag(
            cores,
            ids,
            row_splits,
            weights if weights is not None else tf.zeros([0], tf.float32),
            num_rows=num_rows,
            combiner=combiner,
        )
    else:
        ids, row_splits, weights = _checked_reference_inputs(
            ids, row_splits, weights, combiner, num_rows, check_splits)
        out = reference.tt_embedding_bag(cores, tf.cast(ids, tf.int64), row_splits, weights,
                                         combiner)
    return tf.cast(out, out_dtype)


def _checked_cache_ids(cache_ids, num_rows):
    """cache_ids, with the op's check: non-negative, sorted, ids below num_rows distinct."""
    if tf.executing_eagerly():
        c = cache_ids.numpy()
        negative = np.flatnonzero(c < 0)
        if negative.size:
            s = negative[0]
            raise _invalid_argument(f"cache_ids[{s}] = {c[s]} is negative (empty slots hold "
                                    "ids >= num_rows, e.g. INT64_MAX)")
        drops = np.flatnonzero(c[1:] < c[:-1])
        if drops.size:
            s = drops[0] + 1
            raise _invalid_argument(f"cache_ids must be sorted: cache_ids[{s}] = {c[s]} < "
                                    f"cache_ids[{s - 1}] = {c[s - 1]}")
        twins = np.flatnonzero((c[1:] == c[:-1]) & (c[1:] < num_rows))
        if twins.size:
            s = twins[0] + 1
            raise _invalid_argument(f"cache_ids[{s - 1}] and cache_ids[{s}] both hold row "
                                    f"{c[s]}")
        return cache_ids
    steps = cache_ids[1:] - cache_ids[:-1]
    checks = [
        tf.debugging.assert_non_negative(cache_ids, message="cache_ids must be non-negative"),
        tf.debugging.assert_non_negative(steps, message="cache_ids must be sorted"),
        tf.debugging.Assert(
            tf.reduce_all((steps > 0) | (cache_ids[1:] >= num_rows)),
            ["cache_ids must not hold a row twice"]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(cache_ids)


def tt_embedding_bag_cached(
    cores,
    cache_ids,
    cache_rows,
    ids,
    row_splits=None,
    weights=None,
    combiner="none",
    num_rows=None,
    backend="auto",
    check_splits=True,
    return_num_hits=False,
    segment_ids=None,
    num_bags=None,
):
    """tt_embedding_bag with a cache of uncompressed rows in front of the TT chain.

    Row `id` is cache_rows[s] where cache_ids[s] == id, else the TT product; pooling as in
    tt_embedding_bag. Gradients: the cores get those of the misses only, cache_rows a
    tf.IndexedSlices over the slots hit (docs/cache.md).

    Args:
      cores, ids, row_splits, weights, combiner, num_rows, backend, check_splits,
        segment_ids, num_bags: as tt_embedding_bag.
      cache_ids: int64 [C], sorted; ids below num_rows must be distinct, larger entries
        (tt_keras.cache.EMPTY_ID) mark empty slots.
      cache_rows: float [C, D], the cached rows.
      return_num_hits: also return how many ids were served by the cache (int64 scalar).

    Returns:
      The pooled rows as tt_embedding_bag, in the cores' dtype; with return_num_hits,
      (rows, num_hits).
    """
    row_splits = _bag_boundaries(ids, row_splits, segment_ids, num_bags)
    cores, ids, row_splits, weights, num_rows, out_dtype = _prepared_inputs(
        cores, ids, row_splits, weights, combiner, num_rows)
    cache_ids = tf.convert_to_tensor(cache_ids)
    if not cache_ids.dtype.is_integer:
        raise TypeError(f"cache_ids must be integers, got dtype {cache_ids.dtype.name}")
    cache_ids = tf.cast(cache_ids, tf.int64)
    if cache_ids.shape.rank != 1:
        raise ValueError(f"cache_ids must be a vector, got shape {cache_ids.shape}")
    cache_rows = tf.convert_to_tensor(cache_rows)
    if not cache_rows.dtype.is_floating:
        raise TypeError(f"cache_rows must be floats, got dtype {cache_rows.dtype.name}")
    dim = int(np.prod([int(c.shape[2]) for c in cores]))
    if cache_rows.shape.rank != 2 or cache_rows.shape[1] not in (None, dim):
        raise ValueError(f"cache_rows must have shape [cache_size, {dim}], got "
                         f"{cache_rows.shape}")
    slots, rows_held = cache_ids.shape[0], cache_rows.shape[0]
    if slots is not None and rows_held is not None and slots != rows_held:
        raise ValueError(f"cache_ids has {slots} slots but cache_rows has {rows_held} rows")
    cache_rows = tf.cast(cache_rows, tf.float32)

    if resolve_backend(backend) == "op":
        out, num_hits = _op_embedding_bag_cached(
            cores,
            cache_ids,
            cache_rows,
            ids,
            row_splits,
            weights if weights is not None else tf.zeros([0], tf.float32),
            num_rows=num_rows,
            combiner=combiner,
        )
    else:
        ids, row_splits, weights = _checked_reference_inputs(
            ids, row_splits, weights, combiner, num_rows, check_splits)
        cache_ids = _checked_cache_ids(cache_ids, num_rows)
        out, num_hits = _cache.lookup_reference(cores, cache_ids, cache_rows,
                                                tf.cast(ids, tf.int64), row_splits, weights,
                                                combiner)
    out = tf.cast(out, out_dtype)
    return (out, num_hits) if return_num_hits else out
