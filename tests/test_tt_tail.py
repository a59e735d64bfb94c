"""benchmarks/tt_tail.py: a dense model restricted to a TT model's cached rows (legacy Keras)."""

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")

from benchmarks import tt_tail  # noqa: E402
from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import model as M  # noqa: E402


def test_kept_rows_zeroes_every_other_row_and_ignores_empty_slots():
    table = np.arange(12, dtype=np.float32).reshape(6, 2) + 1
    kept = tt_tail.kept_rows(table, np.array([4, 1, 2**62], np.int64))
    np.testing.assert_array_equal(kept[[1, 4]], table[[1, 4]])
    np.testing.assert_array_equal(kept[[0, 2, 3, 5]], 0)
    assert table.min() > 0  # the input is left as it was


def test_dense_restricted_evaluates_only_the_cached_rows_and_restores_the_tables():
    tf.keras.utils.set_random_seed(0)
    dense_cfg = M.tiny_config()
    tt_cfg = M.tiny_config(cache_size=7, cache_warmup_steps=0)
    dense, tt = M.build_model(dense_cfg.replace(tt_tables=0)), M.build_model(tt_cfg)
    src = D.SyntheticCriteo(dense_cfg.table_sizes, seed=0)
    batch = src.batch(0, 64)
    held_out = tf.data.Dataset.from_tensors(batch)
    tt.fit(held_out, epochs=1, verbose=0)  # fills the caches
    features = tt_cfg.tt_features
    before = [dense.embeddings.tables[f].embeddings.numpy() for f in features]

    # The oracle: a copy of the dense model whose TT-table rows outside the caches are
    # zero, built from the same weights.
    oracle = M.build_model(dense_cfg.replace(tt_tables=0))
    oracle.set_weights(dense.get_weights())
    for f, values in zip(features, before):
        cache_ids = tt.embeddings.tables[f].cache.cache_ids.numpy()
        cached = cache_ids[cache_ids < values.shape[0]]
        assert 0 < cached.size < values.shape[0]
        zeroed = values.copy()
        zeroed[np.setdiff1d(np.arange(values.shape[0]), cached)] = 0
        oracle.embeddings.tables[f].embeddings.assign(zeroed)
    expected = tt_tail.evaluate(oracle, held_out)
    full = tt_tail.evaluate(dense, held_out)

    got = tt_tail.dense_restricted(dense, tt, features, held_out)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[1] != pytest.approx(full[1], rel=1e-6)  # the restriction changed something
    for f, values in zip(features, before):
        np.testing.assert_array_equal(dense.embeddings.tables[f].embeddings.numpy(), values)
