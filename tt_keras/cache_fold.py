"""Folding the rows that leave the hot-row cache back into the TT cores.

A cached row trains as an ordinary dense row; when a refresh evicts it, its lookups go back
to the TT chain. Without a fold the row would silently revert to the TT product and lose
what it learned. `fold_rows` fits the cores to the leaving rows instead: it minimises

    L(G) = 1/2 sum_i m_i ||TT_G(id_i) - row_i||^2        (m_i = 1 for a leaving row)

by block-coordinate steepest descent with an exact line search. A TT row is linear in each
core, so along core k's gradient g_k the loss is a quadratic in the step t:

    L(G_k - t g_k) = 1/2 ||R - t B||^2,   R = m (TT_G(ids) - rows),   B = m TT_{G_k <- g_k}(ids)

whose minimum is t* = <R, B> / ||B||^2. Each core step therefore never increases L, needs
no learning rate (the cores' scale varies by orders of magnitude with the initializer and
the table size, so a fixed rate would be wrong for most tables), and costs one lookup, its
gradient and one more lookup of the leaving rows.

The rows of other ids move too: TT shares its parameters across rows. The fold runs only at
refreshes, over the rows that leave, and the rows still cached are unaffected (they are
looked up in the cache, not the chain). Everything here is standard TF plus the lookup
given (the op or the pure-TF path), so it runs inside model.fit and in SavedModels.
"""

import tensorflow as tf

from tt_keras.reference import EMPTY_ID, find_slots

__all__ = ["fold_rows", "leaving_rows"]


def leaving_rows(old_ids, new_ids):
    """Boolean [C]: which slots of the sorted old_ids hold an id that new_ids (sorted,
    EMPTY_ID-padded) no longer holds."""
    valid = tf.not_equal(old_ids, EMPTY_ID)
    return tf.logical_and(valid, find_slots(new_ids, old_ids) < 0)


def fold_rows(cores, ids, rows, mask, tt_rows, sweeps=1):
    """New core values fitted to `rows` of the ids where `mask` is set.

    cores: list of core tensors; ids: int64 [n] (any valid id where mask is False);
    rows: [n, D] targets; mask: boolean [n]; tt_rows(cores, ids) -> [n, D], the TT rows of
    the given cores (the layer's lookup with combiner "none"); sweeps: passes over the
    cores, each a line-searched gradient step per core.

    Returns a list of tensors shaped and typed like `cores`. With no row masked in, the
    gradient is zero and the cores come back unchanged.
    """
    cores = [tf.convert_to_tensor(c) for c in cores]
    weight = tf.cast(mask, rows.dtype)[:, None]
    for _ in range(sweeps):
        for k in range(len(cores)):
            with tf.GradientTape() as tape:
                tape.watch(cores[k])
                residual = (tf.cast(tt_rows(cores, ids), rows.dtype) - rows) * weight
                loss = 0.5 * tf.reduce_sum(tf.square(residual))
            grad = tf.convert_to_tensor(tape.gradient(loss, cores[k]))
            direction = cores[:k] + [grad] + cores[k + 1:]
            moved = tf.cast(tt_rows(direction, ids), rows.dtype) * weight
            step = tf.math.divide_no_nan(tf.reduce_sum(residual * moved),
                                         tf.reduce_sum(tf.square(moved)))
            cores[k] = cores[k] - tf.cast(step, cores[k].dtype) * grad
    return cores
