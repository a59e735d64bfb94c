"""The pure-TensorFlow TT lookup: gathers of core slices and a batched matmul chain.

This is the readable statement of the math in docs/ops.md and docs/cache.md (the lookup
with a hot-row cache in front), the fallback when the op library is unavailable, and the
graph of standard ops that stock TF Serving can run. Gradients come from TF's autodiff.
"""

import numpy as np
import tensorflow as tf

from tt_keras.tt_math import row_strides

# The id of an empty cache slot (and key of a free counter entry). It is >= any table's
# num_rows, so it never matches an id, and it sorts last, so cache_ids stay sorted with the
# empty slots at the end.
EMPTY_ID = np.iinfo(np.int64).max


def tt_rows(cores, ids):
    """Rows W[ids] of the TT table (ids: int64 vector) -> [len(ids), D].

    Each distinct id is computed once (tf.unique), then scattered back.
    """
    row_shape = [int(c.shape[0]) for c in cores]
    unique_ids, position_to_unique = tf.unique(ids)
    partial = None  # (u, cols, r_t): rows of the product of the first t cores
    cols = 1
    for core, p, stride in zip(cores, row_shape, row_strides(row_shape)):
        _, r_in, q, r_out = core.shape
        digit = (unique_ids // stride) % p
        slices = tf.gather(core, digit)  # (u, r_in, q, r_out)
        if partial is None:
            partial = tf.reshape(slices, [-1, q, r_out])
        else:
            step = tf.matmul(partial, tf.reshape(slices, [-1, r_in, q * r_out]))
            # (u, cols, q * r_out) -> (u, cols * q, r_out): the new column digit is minor.
            partial = tf.reshape(step, [-1, cols * q, r_out])
        cols *= q
    unique_rows = tf.reshape(partial, [-1, cols])
    return tf.gather(unique_rows, position_to_unique)


def pool_rows(rows, row_splits, weights, combiner):
    """Pools per-id rows into bags with tf.nn.embedding_lookup_sparse's combiner semantics.

    rows: [nnz, D]; row_splits: int64 [num_bags + 1]; weights: [nnz] or None.
    Empty bags and zero norms give zero rows (div_no_nan).
    """
    num_bags = tf.shape(row_splits, out_type=tf.int64)[0] - 1
    bag = tf.ragged.row_splits_to_segment_ids(row_splits, out_type=tf.int64)
    if weights is None:
        weights = tf.ones(tf.shape(rows)[:1], rows.dtype)
    sums = tf.math.unsorted_segment_sum(rows * weights[:, None], bag, num_bags)
    if combiner == "sum":
        return sums
    if combiner == "mean":
        norm = tf.math.unsorted_segment_sum(weights, bag, num_bags)
    elif combiner == "sqrtn":
        norm = tf.sqrt(tf.math.unsorted_segment_sum(tf.square(weights), bag, num_bags))
    else:
        raise ValueError(f"combiner must be 'sum', 'mean' or 'sqrtn', got {combiner!r}")
    return tf.math.divide_no_nan(sums, norm[:, None])


def tt_embedding_bag(cores, ids, row_splits, weights, combiner):
    """The pure-TF counterpart of the TTKeras>TTEmbeddingBag op (inputs already checked)."""
    rows = tt_rows(cores, ids)
    if combiner == "none":
        return rows
    return pool_rows(rows, row_splits, weights, combiner)


def find_slots(cache_ids, ids):
    """Cache slot of each id (int64, -1 where the id is not cached).

    cache_ids: sorted int64 [C] with EMPTY_ID in empty slots; ids: int64 vector.
    A binary search (tf.searchsorted): no table of num_rows entries anywhere.
    """
    # One EMPTY_ID past the end keeps every search result a valid index (also for C = 0)
    # and can never equal an id.
    padded = tf.concat([cache_ids, tf.constant([EMPTY_ID], tf.int64)], 0)
    pos = tf.searchsorted(padded, ids, side="left", out_type=tf.int64)
    hit = tf.equal(tf.gather(padded, pos), ids)
    return tf.where(hit, pos, tf.constant(-1, tf.int64))


def tt_embedding_bag_cached(cores, cache_ids, cache_rows, ids, row_splits, weights, combiner):
    """The pure-TF counterpart of TTKeras>TTEmbeddingBagCached (inputs already checked).

    Hits gather their cache row; misses (only those) run tt_rows, each distinct miss once;
    the two are stitched back in position order and pooled like the plain lookup. The
    gather makes the cache rows' gradient a tf.IndexedSlices.

    Returns (output, num_hits).
    """
    slots = find_slots(cache_ids, ids)
    hit = slots >= 0
    hit_pos = tf.cast(tf.where(hit)[:, 0], tf.int32)
    miss_pos = tf.cast(tf.where(tf.logical_not(hit))[:, 0], tf.int32)
    hit_rows = tf.gather(cache_rows, tf.gather(slots, hit_pos))
    miss_rows = tt_rows(cores, tf.gather(ids, miss_pos))
    rows = tf.dynamic_stitch([hit_pos, miss_pos], [hit_rows, miss_rows])
    num_hits = tf.size(hit_pos, out_type=tf.int64)
    if combiner == "none":
        return rows, num_hits
    return pool_rows(rows, row_splits, weights, combiner), num_hits
