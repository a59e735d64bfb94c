"""`tt_embedding_bag` and `tt_embedding_bag_cached`: the entry points that pick the custom
op or the pure-TF path.

Everything that looks rows up (the layer, the cache, benchmarks, export) goes through here,
so the choice of backend and the dtype handling live in one place, and every argument passes
the checks of tt_keras.checks: those of its shape on both backends, those of its values on
the pure-TF path (the ops check their own, with the same messages).
"""

import contextlib
import threading

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops  # variable_accessed: no public API

from tt_keras import checks, reference
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


def _splits_from_segment_ids(segment_ids, num_bags, ids):
    """row_splits of bags given as sorted segment ids (the bag of each id, as
    tf.math.segment_sum takes them); bags with no id are empty. The segment ids must be
    integers, one per id, non-negative, non-decreasing and below num_bags."""
    segment_ids = tf.convert_to_tensor(segment_ids)
    if not segment_ids.dtype.is_integer:
        raise TypeError(f"segment_ids must be integers, got dtype {segment_ids.dtype.name}")
    segment_ids = tf.cast(segment_ids, tf.int64)
    if num_bags is None:
        # One past the largest segment id (0 without ids); a bad one is named below.
        num_bags = tf.reduce_max(tf.concat([tf.reshape(segment_ids, [-1]) + 1, [0]], 0))
    elif not isinstance(num_bags, tf.Tensor) and int(num_bags) < 0:
        raise ValueError(f"num_bags must be >= 0, got {num_bags}")
    num_bags = tf.cast(num_bags, tf.int64)
    segment_ids = checks.valid_segment_ids(segment_ids, ids, num_bags)
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
    return _splits_from_segment_ids(segment_ids, num_bags, ids)


def _table(cores, num_rows):
    """The cores (tensors, or variables as given), num_rows, the row width and the output
    dtype, checked as the ops check them. The kernels compute in float32; mixed-precision
    layers hand over float16/bfloat16 cores, and get rows of that dtype back."""
    cores, padded_rows, dim = checks.core_tensors(cores)
    num_rows = checks.num_rows_value(num_rows, padded_rows)
    return cores, num_rows, dim, tf.as_dtype(cores[0].dtype)


def _float32(values):
    """The values as float32 tensors (variables read)."""
    return [tf.cast(v, tf.float32) for v in values]


def _op_values(values):
    """What an op reads `values` (the cores, and a cache's rows) from: the variables'
    handles, when every value is a float32 variable and no tf.distribute strategy is
    active; else float32 tensors.

    Handles make the kernels read the variables in place (Tcores = resource). Through a
    tensor, every read of a variable that an optimizer updates sparsely, as it does a
    cache's rows, copies the whole variable (TF's copy-on-read mode): 14 MB a step for the
    recommended DLRM's caches (docs/performance.md).
    """
    if tf.distribute.has_strategy() or not all(
            checks.is_variable(v) and tf.as_dtype(v.dtype) == tf.float32 for v in values):
        return _float32(values)
    for v in values:
        # The kernel consumes the handle, not a read: this is how a read records the
        # variable for gradient tapes and tf.function (as ResourceVariable.sparse_read does).
        resource_variable_ops.variable_accessed(v)
    return [v.handle for v in values]


def _batch(ids, row_splits, weights, combiner, segment_ids, num_bags):
    """ids, int64 row_splits and float32 weights (or None), checked as far as their shapes go
    (both backends); their values are checked by the op, or by checks.batch_values."""
    ids = checks.ids_tensor(ids)
    row_splits = _bag_boundaries(ids, row_splits, segment_ids, num_bags)
    return checks.batch_tensors(ids, row_splits, weights, combiner)


def _op_weights(weights):
    """The ops' weights input: an empty vector means "no weights"."""
    return weights if weights is not None else tf.zeros([0], tf.float32)


def _check_combiner(combiner):
    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")


def tt_embedding_bag(cores, ids, row_splits=None, weights=None, combiner="none", num_rows=None,
                     backend="auto", check_splits=True, segment_ids=None, num_bags=None):
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
      check_splits: set False when row_splits are valid by construction (the bags of a
        dense or sparse tensor); the op checks them regardless.
      segment_ids: instead of row_splits, the bag of each id: an integer vector [len(ids)],
        sorted, as tf.math.segment_sum takes it.
      num_bags: with segment_ids, the number of bags (default: max(segment_ids) + 1); bags
        that no id names are empty.

    Returns:
      [len(ids), D] for combiner "none", else [num_bags, D], in the cores' dtype.
    """
    _check_combiner(combiner)
    cores, num_rows, _, out_dtype = _table(cores, num_rows)
    ids, row_splits, weights = _batch(ids, row_splits, weights, combiner, segment_ids, num_bags)
    if resolve_backend(backend) == "op":
        out = _op_embedding_bag(_op_values(cores), ids, row_splits, _op_weights(weights),
                                num_rows=num_rows, combiner=combiner)
    else:
        ids, row_splits = checks.batch_values(ids, row_splits, combiner, num_rows, check_splits)
        out = reference.tt_embedding_bag(_float32(cores), tf.cast(ids, tf.int64), row_splits,
                                         weights, combiner)
    return tf.cast(out, out_dtype)


def tt_embedding_bag_cached(cores, cache_ids, cache_rows, ids, row_splits=None, weights=None,
                            combiner="none", num_rows=None, backend="auto", check_splits=True,
                            return_num_hits=False, segment_ids=None, num_bags=None):
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
    _check_combiner(combiner)
    cores, num_rows, dim, out_dtype = _table(cores, num_rows)
    cache_ids, cache_rows = checks.cache_tensors(cache_ids, cache_rows, dim)
    ids, row_splits, weights = _batch(ids, row_splits, weights, combiner, segment_ids, num_bags)
    if resolve_backend(backend) == "op":
        values = _op_values(cores + [cache_rows])
        out, num_hits = _op_embedding_bag_cached(
            values[:-1], cache_ids, values[-1], ids, row_splits, _op_weights(weights),
            num_rows=num_rows, combiner=combiner)
    else:
        cache_ids = checks.valid_cache_ids(cache_ids, num_rows)
        ids, row_splits = checks.batch_values(ids, row_splits, combiner, num_rows, check_splits)
        out, num_hits = reference.tt_embedding_bag_cached(
            _float32(cores), cache_ids, _float32([cache_rows])[0], tf.cast(ids, tf.int64),
            row_splits, weights, combiner)
    out = tf.cast(out, out_dtype)
    return (out, num_hits) if return_num_hits else out
