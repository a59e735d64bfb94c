"""The hot-row cache's state changes as pure functions of tensors (docs/cache.md).

A training call of a cached layer counts its batch's ids with a heavy-hitter counter
(`space_saving_update`) in the calls its `schedule` names; at a fill or refresh the cache
takes the `top_ids` of the counter, its rows are `repopulate`d, and the counts decay
(`decay_counts`). The counter's memory is its K keys and counts, set from the cache size
and independent of the number of rows. Everything here is standard TF ops (it runs in
model.fit's tf.function and in portable SavedModels); `tt_keras.cache.HotRowCache` holds the
variables these functions update.
"""

import tensorflow as tf

from tt_keras.reference import EMPTY_ID, find_slots

__all__ = [
    "counter_from_counts", "decay_counts", "repopulate", "schedule", "space_saving_update",
    "top_ids",
]


def schedule(call, warmup_steps, refresh_steps):
    """(count, populate): boolean tensors saying whether training call number `call`
    (1-based, an int64 scalar tensor) counts its batch, and whether it fills the cache.

    With W = warmup_steps and R = refresh_steps, call W + 1 fills the cache and, when R > 0,
    calls W + 1 + j R (j >= 1) refresh it. The counter runs in calls 1..W+1 and, with R > 0,
    in the W calls before each refresh and at the refresh itself (every call when
    R <= W + 1): each refill sees as many fresh batches as the first fill did, on top of the
    decayed older counts. Outside those windows training pays nothing for the counter, which
    matters: one merge costs about as much as the lookup itself.
    """
    fill_at = warmup_steps + 1
    populate = tf.equal(call, fill_at)
    count = call <= fill_at
    if refresh_steps:
        after = call > fill_at
        # Calls until the next refresh, 0 at one.
        to_refresh = (refresh_steps - (call - fill_at) % refresh_steps) % refresh_steps
        populate = tf.logical_or(populate, tf.logical_and(after, tf.equal(to_refresh, 0)))
        count = tf.logical_or(count, tf.logical_and(after, to_refresh <= warmup_steps))
    return count, populate


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


def counter_from_counts(ids, counts, size):
    """A counter's (keys, counts) holding the `size` ids of largest count.

    ids: distinct int64 ids; counts: int64 >= 0, one per id. Ids of count 0 are not kept;
    fewer than `size` kept ids leave EMPTY_ID entries of count 0.
    """
    num = tf.size(ids)
    pad = tf.maximum(size - num, 0)
    keys = tf.concat([ids, tf.fill([pad], tf.constant(EMPTY_ID, tf.int64))], 0)
    padded = tf.concat([counts, tf.zeros([pad], tf.int64)], 0)
    top_counts, top = tf.math.top_k(padded, k=size, sorted=False)
    top_keys = tf.where(top_counts > 0, tf.gather(keys, top), tf.constant(EMPTY_ID, tf.int64))
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
    cores; empty slots are zero. Rows that leave are dropped here: what they learned
    reaches the cores only through tt_keras.cache_fold, which the cache runs first.
    """
    valid = tf.not_equal(new_ids, EMPTY_ID)
    old_slot = find_slots(old_ids, new_ids)
    stays = tf.logical_and(valid, old_slot >= 0)
    kept = tf.gather(old_rows, tf.maximum(old_slot, 0))
    fresh = tt_rows(tf.where(valid, new_ids, tf.zeros_like(new_ids)))
    fresh = tf.cast(fresh, old_rows.dtype)
    rows = tf.where(stays[:, None], kept, tf.where(valid[:, None], fresh, tf.zeros_like(fresh)))
    return tf.stop_gradient(rows)
