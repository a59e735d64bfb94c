"""Folding rows that leave the hot-row cache back into the cores (tt_keras.cache_fold),
against a NumPy oracle of the same line-searched block steps. Run under both Kerases."""

import numpy as np
import pytest
import tensorflow as tf

from tt_keras import cache_fold, oracle, tt_math
from tt_keras.cache import EMPTY_ID
from tt_keras.lookup import tt_embedding_bag

SHAPES = {
    2: tt_math.TTShape((7, 9), (2, 3), (1, 5, 1)),
    3: tt_math.TTShape((5, 6, 7), (2, 2, 2), (1, 4, 3, 1)),
    4: tt_math.TTShape((3, 4, 2, 5), (2, 1, 3, 2), (1, 3, 4, 2, 1)),
}


def fit_loss(cores, ids, rows, mask, num_rows):
    residual = (oracle.dense_table(cores, num_rows)[ids] - rows) * mask[:, None]
    return 0.5 * float(np.sum(residual ** 2))


def fold_oracle(cores, ids, rows, mask, num_rows, sweeps):
    """The same descent in float64 NumPy: per core, the gradient of the masked squared
    error (oracle.core_grads_oracle with one id per bag) and the exact minimising step
    along it, from the dense tables of the cores and of the cores with the gradient."""
    cores = [np.asarray(c, np.float64) for c in cores]
    m = mask.astype(np.float64)[:, None]
    for _ in range(sweeps):
        for k in range(len(cores)):
            residual = (oracle.dense_table(cores, num_rows)[ids] - rows) * m
            grad = oracle.core_grads_oracle(cores, [[int(i)] for i in ids], None, "sum",
                                            residual)[k]
            moved = oracle.dense_table(cores[:k] + [grad] + cores[k + 1:], num_rows)[ids] * m
            denom = float(np.sum(moved ** 2))
            step = float(np.sum(residual * moved)) / denom if denom else 0.0
            cores[k] = cores[k] - step * grad
    return cores


def problem(k, seed=0, n=40):
    rng = np.random.default_rng(seed)
    shape = SHAPES[k]
    num_rows = shape.padded_rows - 3
    cores = oracle.random_cores(shape, rng)
    ids = rng.integers(0, num_rows, n).astype(np.int64)
    rows = rng.normal(size=(n, shape.dim)).astype(np.float32)
    mask = rng.random(n) < 0.6
    return cores, ids, rows, mask, num_rows


def fold(backend, cores, ids, rows, mask, num_rows, sweeps):
    def tt_rows(some_cores, some_ids):
        return tt_embedding_bag(some_cores, some_ids, combiner="none", num_rows=num_rows,
                                backend=backend)
    out = cache_fold.fold_rows([tf.constant(c) for c in cores], tf.constant(ids),
                               tf.constant(rows), tf.constant(mask), tt_rows, sweeps)
    return [c.numpy() for c in out]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("sweeps", [1, 2])
def test_fold_matches_oracle(backend, k, sweeps):
    cores, ids, rows, mask, num_rows = problem(k)
    got = fold(backend, cores, ids, rows, mask, num_rows, sweeps)
    want = fold_oracle(cores, ids, rows, mask, num_rows, sweeps)
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("k", [2, 3, 4])
def test_each_sweep_lowers_the_fit_error(backend, k):
    cores, ids, rows, mask, num_rows = problem(k, seed=k)
    losses = [fit_loss(cores, ids, rows, mask, num_rows)]
    for sweeps in (1, 2, 4):
        losses.append(fit_loss(fold(backend, cores, ids, rows, mask, num_rows, sweeps),
                               ids, rows, mask, num_rows))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_rows_outside_the_mask_do_not_count(backend):
    cores, ids, rows, mask, num_rows = problem(3, seed=5)
    other = rows.copy()
    other[~mask] = 100.0
    a = fold(backend, cores, ids, rows, mask, num_rows, 1)
    b = fold(backend, cores, ids, other, mask, num_rows, 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    unchanged = fold(backend, cores, ids, rows, np.zeros_like(mask), num_rows, 2)
    for x, y in zip(unchanged, cores):
        np.testing.assert_array_equal(x, y)


def test_leaving_rows():
    old = tf.constant([1, 4, 9, EMPTY_ID], tf.int64)
    new = tf.constant([4, 7, EMPTY_ID, EMPTY_ID], tf.int64)
    np.testing.assert_array_equal(cache_fold.leaving_rows(old, new).numpy(),
                                  [True, False, True, False])
