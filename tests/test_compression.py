"""tt_keras.compress: trained Embedding tables -> TTEmbeddings by TT-SVD, the rest kept.

The oracle is the dense table rebuilt with NumPy from the new cores: at full rank it is the
trained table (to float32 round-off); at lower ranks its error obeys the TT-SVD bound
computed from the singular values of the trained table's unfoldings."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras import oracle
from tt_keras._keras import IS_KERAS_3, keras
from tt_keras.compression import SubclassedModelError, compress

from tests.tolerance import assert_reordered_close
from tests.tt_svd_bound import unfolding_tails

BIG, MID, SMALL = 700, 300, 30
FULL_RANK = 10_000  # above every unfolding's rank: TT-SVD keeps them all


def _ids(batch, seed):
    rng = np.random.default_rng(seed)
    return {f"{name}_ids": rng.integers(0, n, size=batch)
            for name, n in (("big", BIG), ("mid", MID), ("small", SMALL))}


def _functional_model():
    inputs = {f"{name}_ids": keras.Input(shape=(), dtype="int64", name=f"{name}_ids")
              for name in ("big", "mid", "small")}
    rows = [keras.layers.Embedding(n, 8, name=name)(inputs[f"{name}_ids"])
            for name, n in (("big", BIG), ("mid", MID), ("small", SMALL))]
    x = keras.layers.Concatenate(name="concat")(rows)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x), name="functional")


def _fit(model, steps=8, seed=0):
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = _ids(64 * steps, seed)
    # Something for the tables to learn.
    y = np.sin(x["big_ids"] * 0.37) + np.cos(x["mid_ids"] * 0.11)
    model.fit(x, y.astype(np.float32)[:, None], batch_size=64, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained():
    return _fit(_functional_model())


def _table(layer):
    return tf.convert_to_tensor(layer.embeddings).numpy().astype(np.float64)


def test_full_rank_gives_back_the_trained_table(trained):
    small = compress(trained, min_rows=MID, tt_rank=FULL_RANK)
    for name in ("big", "mid"):
        layer = small.get_layer(name)
        assert isinstance(layer, tt_keras.TTEmbedding)
        table = _table(trained.get_layer(name))
        rebuilt = oracle.dense_table([c.numpy() for c in layer.cores], len(table))
        assert rebuilt.shape == table.shape
        np.testing.assert_allclose(rebuilt, table, rtol=0, atol=2e-6 * np.abs(table).max())
    assert type(small.get_layer("small")) is keras.layers.Embedding


@pytest.mark.parametrize("tt_rank", [1, 3, 6])
def test_lower_rank_error_is_within_the_tt_svd_bound(trained, tt_rank):
    small = compress(trained, min_rows=BIG, tt_rank=tt_rank)
    layer = small.get_layer("big")
    table = _table(trained.get_layer("big"))
    tails, unfolding_ranks, padded = unfolding_tails(table, layer.tt_shape)
    assert list(layer.tt_shape.inner_ranks) == [min(tt_rank, r) for r in unfolding_ranks]
    error = np.linalg.norm(oracle.dense_table([c.numpy() for c in layer.cores]) - padded)
    # Oseledets: ||W - W_tt|| <= sqrt(sum eps_t^2); the best error of these ranks is at
    # least max eps_t, so this is within sqrt(k - 1) of the best.
    k = layer.tt_shape.num_cores
    assert error <= math.sqrt(sum(e * e for e in tails)) * (1 + 1e-5) + 1e-6
    assert error <= math.sqrt(k - 1) * max(tails) * (1 + 1e-5) + 1e-6
    assert error >= max(tails) * (1 - 1e-5) - 1e-6  # no TT of these ranks does better
    assert max(tails) > 1e-3 * np.linalg.norm(table)  # the truncation really loses something


def test_full_rank_model_predicts_like_the_original_and_fine_tunes(trained):
    x = _ids(256, seed=7)
    before = [w.copy() for w in trained.get_weights()]
    small = compress(trained, min_rows=MID, tt_rank=FULL_RANK)
    assert_reordered_close(small.predict(x, verbose=0), trained.predict(x, verbose=0))
    for name in ("hidden", "head", "small"):
        for got, want in zip(small.get_layer(name).get_weights(),
                             trained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    cores = [c.numpy() for c in small.get_layer("big").cores]
    _fit(small, steps=2, seed=1)
    assert any(not np.array_equal(a, c.numpy())
               for a, c in zip(cores, small.get_layer("big").cores))
    for got, want in zip(trained.get_weights(), before):  # the original is untouched
        np.testing.assert_array_equal(got, want)


def test_sequential_and_nested_models():
    inner = keras.Sequential([keras.Input(shape=(2,), dtype="int64"),
                              keras.layers.Embedding(BIG, 4, name="inner_emb"),
                              keras.layers.Flatten(name="inner_flat")], name="inner")
    ids = keras.Input(shape=(2,), dtype="int64")
    outer = keras.Model(ids, keras.layers.Dense(1, name="out")(inner(ids)), name="outer")
    sequential = keras.Sequential([keras.Input(shape=(2,), dtype="int64"),
                                   keras.layers.Embedding(BIG, 4, name="emb"),
                                   keras.layers.Flatten(), keras.layers.Dense(1)])
    x = np.random.default_rng(3).integers(0, BIG, size=(32, 2))
    for model, name in ((sequential, "emb"), (outer, "inner")):
        small = compress(model, min_rows=BIG, tt_rank=FULL_RANK)
        assert_reordered_close(small.predict(x, verbose=0), model.predict(x, verbose=0))
        if name == "inner":
            assert isinstance(small.get_layer("inner").get_layer("inner_emb"),
                              tt_keras.TTEmbedding)
        else:
            assert isinstance(small.get_layer(name), tt_keras.TTEmbedding)


def test_refusals_name_the_problem(trained):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = keras.layers.Embedding(BIG, 4)

        def call(self, ids):
            return self.emb(ids)

    model = Subclassed()
    model(np.zeros((1, 2), np.int64))
    with pytest.raises(SubclassedModelError, match="from_dense"):
        compress(model, min_rows=10, tt_rank=4)
    assert tt_keras.compress is compress  # the public name
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="min_rows"):
            compress(trained, min_rows=bad, tt_rank=4)
    ids = keras.Input(shape=(2,), dtype="int64")
    masked = keras.Model(ids, keras.layers.Embedding(BIG, 4, mask_zero=True, name="m")(ids))
    with pytest.raises(ValueError, match="'m' has mask_zero=True"):
        compress(masked, min_rows=10, tt_rank=4)
    with pytest.raises(ValueError, match="tt_rank"):
        compress(trained, min_rows=10, tt_rank=0)


def test_keras3_dlrm_compresses_to_the_same_predictions():
    if not IS_KERAS_3:
        pytest.skip("the keras-rs DLRM needs Keras 3")
    k3_model = pytest.importorskip("examples.keras3_dlrm.model",
                                   reason="keras-rs is not installed")
    from examples.dlrm import data as dlrm_data  # pylint: disable=g-import-not-at-top

    config = k3_model.tiny_config(tt_tables=0)
    dense = k3_model.build_model(config, learning_rate=0.5)
    source = dlrm_data.SyntheticCriteo(config.table_sizes, seed=2)
    dense.fit(source.dataset(64), steps_per_epoch=3, epochs=1, shuffle=False, verbose=0)
    small = compress(dense, min_rows=2000, tt_rank=FULL_RANK)
    tt_names = sorted(x.name for x in small.layers if isinstance(x, tt_keras.TTEmbedding))
    assert tt_names == sorted(f"emb_C{i + 1}" for i, n in enumerate(config.table_sizes)
                              if n >= 2000)
    features, _ = source.batch(0, 256, stream=1)
    assert_reordered_close(small(features, training=False), dense(features, training=False))
