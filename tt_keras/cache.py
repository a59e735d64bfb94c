"""The hot-row cache of TTEmbedding: frequency counting, (re)population, and the pure-TF
cached lookup. See docs/cache.md for the behaviour and the op contract.

Ids of recommendation data are power-law distributed, so a few rows take most lookups
(spec section 5). The cache keeps those rows uncompressed in front of the TT chain:

- During warm-up a heavy-hitter counter (batched Space-Saving, `space_saving_update`) counts
  id frequencies. Its memory is `counter_size` keys and counts, set from the cache size and
  independent of the number of rows.
- Then the `cache_size` most frequent ids are filled from the current TT product
  (`repopulate`) and trained as ordinary rows; lookups of them skip the chain.

Everything here is written with standard TF ops (it runs inside model.fit's tf.function and
in a portable SavedModel). The layer glue (variables, the per-call step logic) is
`HotRowCache`; the fast lookup is the `TTKeras>TTEmbeddingBagCached` op, reached through
`tt_keras.lookup.tt_embedding_bag_cached`, and `lookup_reference` is its pure-TF twin.
"""

import numbers

import numpy as np
import tensorflow as tf

from tt_keras import reference

# Key of an empty counter entry and id of an empty cache slot. It is >= any table's
# num_rows, so it never matches an id, and it sorts last, so cache_ids stay sorted with the
# empty slots at the end.
EMPTY_ID = np.iinfo(np.int64).max

__all__ = [
    "EMPTY_ID",
    "HotRowCache",
    "decay_counts",
    "find_slots",
    "lookup_reference",
    "repopulate",
    "space_saving_update",
    "top_ids",
]


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


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


def lookup_reference(cores, cache_ids, cache_rows, ids, row_splits, weights, combiner):
    """The pure-TF counterpart of TTKeras>TTEmbeddingBagCached (inputs already checked).

    Hits gather their cache row; misses (only those) run reference.tt_rows, each distinct
    miss once; the two are stitched back in position order and pooled like the plain
    lookup. The gather makes the cache rows' gradient a tf.IndexedSlices.

    Returns (output, num_hits).
    """
    slots = find_slots(cache_ids, ids)
    hit = slots >= 0
    hit_pos = tf.cast(tf.where(hit)[:, 0], tf.int32)
    miss_pos = tf.cast(tf.where(tf.logical_not(hit))[:, 0], tf.int32)
    hit_rows = tf.gather(cache_rows, tf.gather(slots, hit_pos))
    miss_rows = reference.tt_rows(cores, tf.gather(ids, miss_pos))
    rows = tf.dynamic_stitch([hit_pos, miss_pos], [hit_rows, miss_rows])
    num_hits = tf.size(hit_pos, out_type=tf.int64)
    if combiner == "none":
        return rows, num_hits
    return reference.pool_rows(rows, row_splits, weights, combiner), num_hits


# --------------------------------------------------------------------------------------------
# Frequency counting and population
# --------------------------------------------------------------------------------------------


def space_saving_update(keys, counts, ids):
    """One batch of the Space-Saving heavy-hitter counter, merged with standard ops.

    keys: int64 [K], EMPTY_ID in free entries; counts: int64 [K]; ids: int64 vector.
    Returns the new (keys, counts), the K largest estimates of the union of the kept keys
    and the batch's distinct ids (in no particular order).

    A kept key adds the batch's count to its estimate. A new key gets its batch count plus
    the table's smallest count when the table is full: that is Space-Saving's rule (a
    newcomer replaces the minimum and inherits its count as an error bound), applied to a
    whole batch at once. Estimates never undercount, and every id whose true frequency
    exceeds 1/K of the stream is kept (Metwally et al., 2005; Agarwal et al., "Mergeable
    summaries", 2012) -- unlike a plain top-K of exact batch counts, which can drop a
    frequent id that never stands out within one batch.
    """
    size = keys.shape[0]
    occupied = tf.not_equal(keys, EMPTY_ID)
    floor = tf.where(tf.reduce_all(occupied), tf.reduce_min(counts), tf.constant(0, tf.int64))
    # The batch is reduced to its distinct ids first: the merge below then runs over
    # K + distinct entries rather than K + batch size (measured faster despite two uniques).
    batch_keys, _, batch_counts = tf.unique_with_counts(ids, out_idx=tf.int64)
    all_keys = tf.concat([keys, batch_keys], 0)
    all_counts = tf.concat([counts, batch_counts], 0)
    was_kept = tf.concat([tf.cast(occupied, tf.int64), tf.zeros_like(batch_counts)], 0)
    union, where_in_union = tf.unique(all_keys, out_idx=tf.int64)
    num_union = tf.size(union, out_type=tf.int64)
    summed = tf.math.unsorted_segment_sum(all_counts, where_in_union, num_union)
    kept = tf.math.unsorted_segment_max(was_kept, where_in_union, num_union) > 0
    is_empty = tf.equal(union, EMPTY_ID)
    estimate = tf.where(kept, summed, summed + floor)
    estimate = tf.where(is_empty, tf.zeros_like(estimate), estimate)
    # Free entries pad the candidates to at least K. top_k need not sort (sorted=True costs
    # 2-4x more at K ~ 10^4); ties at the boundary go either way.
    pad = tf.maximum(size - num_union, 0)
    candidates = tf.concat([union, tf.fill([pad], tf.constant(EMPTY_ID, tf.int64))], 0)
    estimates = tf.concat([estimate, tf.zeros([pad], tf.int64)], 0)
    top_counts, top = tf.math.top_k(estimates, k=size, sorted=False)
    top_keys = tf.gather(candidates, top)
    top_keys = tf.where(top_counts > 0, top_keys, tf.constant(EMPTY_ID, tf.int64))
    return top_keys, top_counts


def decay_counts(keys, counts, decay):
    """Counts scaled by `decay` (floored); entries that reach zero are freed."""
    if decay == 1.0:
        return keys, counts
    counts = tf.cast(tf.floor(tf.cast(counts, tf.float64) * decay), tf.int64)
    keys = tf.where(counts > 0, keys, tf.constant(EMPTY_ID, tf.int64))
    return keys, counts


def top_ids(keys, counts, cache_size):
    """The cache_size keys of largest count, sorted, EMPTY_ID-padded when fewer are known."""
    top_counts, top = tf.math.top_k(counts, k=cache_size, sorted=False)
    ids = tf.gather(keys, top)
    ids = tf.where(top_counts > 0, ids, tf.constant(EMPTY_ID, tf.int64))
    return tf.sort(ids)


def repopulate(old_ids, old_rows, new_ids, tt_rows):
    """The cache's new rows for the sorted ids new_ids.

    Rows that stay cached keep what they learned (found by id, wherever their old slot);
    newcomers start from the TT product, `tt_rows(ids) -> [len(ids), D]` of the current
    cores; empty slots are zero. Rows that leave are simply dropped: their lookups go back
    to the TT chain, i.e. they revert to the TT product.
    """
    valid = tf.not_equal(new_ids, EMPTY_ID)
    old_slot = find_slots(old_ids, new_ids)
    stays = tf.logical_and(valid, old_slot >= 0)
    kept = tf.gather(old_rows, tf.maximum(old_slot, 0))
    fresh = tt_rows(tf.where(valid, new_ids, tf.zeros_like(new_ids)))
    fresh = tf.cast(fresh, old_rows.dtype)
    rows = tf.where(stays[:, None], kept, tf.where(valid[:, None], fresh, tf.zeros_like(fresh)))
    return tf.stop_gradient(rows)


# --------------------------------------------------------------------------------------------
# The layer's cache: arguments, variables, step logic
# --------------------------------------------------------------------------------------------


def _as_count(value, name, minimum=0):
    """`value` as an int >= minimum, or a ValueError naming `name` and the value.

    Integral floats (16.0, as JSON configs may hold) are accepted; bool is refused.
    """
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _read(variable):
    """The value of a tf or Keras 3 variable (Keras 3 variables have no read_value)."""
    return tf.convert_to_tensor(variable)


def _done(*updates):
    """A tensor that exists once `updates` ran: what tf.cond branches return (they must
    return tensors of one structure, and tf.no_op is an operation)."""
    with tf.control_dependencies([u for u in updates if u is not None]):
        return tf.constant(True)


def _nothing():
    return tf.constant(True)


def _empty_ids_initializer(shape, dtype=None, **kwargs):
    del dtype, kwargs
    return tf.fill(shape, tf.constant(EMPTY_ID, tf.int64))


class HotRowCache:
    """Arguments and step logic of a TTEmbedding's cache (the layer owns the variables).

    Args mirror the layer's: cache_size (C), cache_warmup_steps (W), cache_refresh_steps
    (R, 0 = never), cache_counter_size (K, default min(4 C, input_dim)), and
    cache_counter_decay (counts are multiplied by it at each (re)population).

    Steps are training calls of the layer. Call n (1-based) counts its batch, then fills the
    cache when n == W + 1, and refills it when R > 0 and n = W + 1 + j R (j >= 1), before
    its own lookup; so W = 0 fills the cache from the first training batch.

    The counter runs in the calls 1..W+1 and, with R > 0, in the W calls before each
    refresh and at the refresh itself (every call when R <= W + 1): each refill sees as
    many fresh batches as the first fill did, on top of the decayed older counts. Outside
    those windows training pays nothing for the counter, which matters: one Space-Saving
    merge costs about as much as the lookup itself (3-10 ms for 53k ids, K = 4k-40k, on 2
    CPU cores). With R = 0 the counter stops once the cache is filled.
    """

    DEFAULT_COUNTER_MULTIPLE = 4

    def __init__(self, input_dim, cache_size=0, cache_warmup_steps=0, cache_refresh_steps=0,
                 cache_counter_size=None, cache_counter_decay=0.5):
        self.cache_size = _as_count(cache_size, "cache_size")
        if self.cache_size > input_dim:
            raise ValueError(f"cache_size = {self.cache_size} exceeds input_dim = {input_dim}: "
                             "the cache cannot hold more rows than the table has")
        self.warmup_steps = _as_count(cache_warmup_steps, "cache_warmup_steps")
        self.refresh_steps = _as_count(cache_refresh_steps, "cache_refresh_steps")
        if cache_counter_size is None:
            counter_size = min(self.DEFAULT_COUNTER_MULTIPLE * self.cache_size, input_dim)
        else:
            counter_size = _as_count(cache_counter_size, "cache_counter_size")
            if self.cache_size and counter_size < self.cache_size:
                raise ValueError(f"cache_counter_size = {counter_size} is smaller than "
                                 f"cache_size = {self.cache_size}: the counter must be able "
                                 "to rank at least as many ids as the cache holds")
        self.counter_size = counter_size if self.cache_size else 0
        # get_config keeps None: a clone with another cache_size gets its own default.
        self.user_counter_size = None if cache_counter_size is None else counter_size
        if isinstance(cache_counter_decay, bool) or not isinstance(cache_counter_decay,
                                                                   numbers.Real):
            raise ValueError(f"cache_counter_decay must be a number in (0, 1], got "
                             f"{cache_counter_decay!r}")
        if not 0.0 < float(cache_counter_decay) <= 1.0:
            raise ValueError(f"cache_counter_decay must be in (0, 1], got {cache_counter_decay}")
        self.counter_decay = float(cache_counter_decay)

    @property
    def enabled(self):
        return self.cache_size > 0

    def variable_specs(self, dim, rows_dtype):
        """(attribute name, shape, dtype, initializer, trainable) of each cache variable;
        rows_dtype None means the layer's variable dtype."""
        c, k = self.cache_size, self.counter_size
        return [
            ("cache_ids", (c,), "int64", _empty_ids_initializer, False),
            ("cache_rows", (c, dim), rows_dtype, "zeros", True),
            ("cache_counter_keys", (k,), "int64", _empty_ids_initializer, False),
            ("cache_counter_counts", (k,), "int64", "zeros", False),
            ("cache_step", (), "int64", "zeros", False),
            ("cache_last_hits", (), "int64", "zeros", False),
            ("cache_last_lookups", (), "int64", "zeros", False),
        ]

    def train_update(self, state, ids, tt_rows, training=True):
        """The state changes of one training call, before its lookup; returns the tensors
        the lookup must depend on.

        state: object with the variables of `variable_specs` as attributes; ids: int64
        vector of the batch; tt_rows: ids -> TT rows of the current cores; training: True,
        or a boolean tensor (legacy Keras may pass one) to decide at run time.
        """
        if training is False:
            return []
        if training is not True:
            return [tf.cond(training, lambda: _done(*self.train_update(state, ids, tt_rows)),
                            _nothing)]
        n = _read(state.cache_step) + 1  # this call's number, 1-based
        fill_at = self.warmup_steps + 1
        populate = tf.equal(n, fill_at)
        count = n <= fill_at
        if self.refresh_steps:
            after = n > fill_at
            to_refresh = (self.refresh_steps - (n - fill_at) % self.refresh_steps) % \
                self.refresh_steps  # calls until the next refresh, 0 at one
            populate = tf.logical_or(populate, tf.logical_and(after, tf.equal(to_refresh, 0)))
            count = tf.logical_or(count, tf.logical_and(after,
                                                        to_refresh <= self.warmup_steps))

        def do_count():
            keys, counts = space_saving_update(_read(state.cache_counter_keys),
                                               _read(state.cache_counter_counts), ids)
            return _done(state.cache_counter_keys.assign(keys),
                         state.cache_counter_counts.assign(counts))

        counted = tf.cond(count, do_count, _nothing)

        def do_populate():
            keys = _read(state.cache_counter_keys)
            counts = _read(state.cache_counter_counts)
            new_ids = top_ids(keys, counts, self.cache_size)
            rows = repopulate(_read(state.cache_ids), _read(state.cache_rows), new_ids, tt_rows)
            keys, counts = decay_counts(keys, counts, self.counter_decay)
            return _done(state.cache_ids.assign(new_ids),
                         state.cache_rows.assign(tf.cast(rows, state.cache_rows.dtype)),
                         state.cache_counter_keys.assign(keys),
                         state.cache_counter_counts.assign(counts))

        with tf.control_dependencies([counted]):
            populated = tf.cond(populate, do_populate, _nothing)
        with tf.control_dependencies([populated]):
            stepped = state.cache_step.assign_add(1)
        return [counted, populated, stepped]

    def record_hits(self, state, num_hits, num_lookups, training=True):
        """Stores the hits and lookups of a training call (what cache_hit_rate reports)."""
        def record():
            return _done(state.cache_last_hits.assign(num_hits),
                         state.cache_last_lookups.assign(num_lookups))
        if training is False:
            return _nothing()
        return record() if training is True else tf.cond(training, record, _nothing)

    def get_config(self):
        return {
            "cache_size": self.cache_size,
            "cache_warmup_steps": self.warmup_steps,
            "cache_refresh_steps": self.refresh_steps,
            "cache_counter_size": self.user_counter_size,
            "cache_counter_decay": self.counter_decay,
        }
