"""tt_keras/export.py: SavedModel export of Keras models holding TTEmbedding (Keras 3 and
tf_keras alike). The portable SavedModel is loaded in a fresh Python that never imports
tt_keras and must predict what the trained model predicts."""


import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras import export as E
from tt_keras._keras import keras

from tests.fresh_python import serve_in_fresh_python


def op_available():
    try:
        return tt_keras.resolve_backend("auto") == "op"
    except Exception:  # pylint: disable=broad-except
        return False


def make_model(lookup_backend="auto", num_rows=60):
    ids = keras.Input(shape=(4,), dtype="int64", name="ids")
    x = keras.Input(shape=(3,), dtype="float32", name="x")
    emb = tt_keras.TTEmbedding(num_rows, 8, tt_rank=3, combiner="mean",
                               lookup_backend=lookup_backend, name="tt")(ids)
    h = keras.layers.Concatenate()([emb, x])
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model({"ids": ids, "x": x}, out)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    return model


def make_inputs(batch, seed, num_rows=60):
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(0, num_rows, size=(batch, 4)).astype(np.int64),
            "x": rng.normal(size=(batch, 3)).astype(np.float32)}


SIGNATURE = {"ids": tf.TensorSpec([None, 4], tf.int64), "x": tf.TensorSpec([None, 3], tf.float32)}


@pytest.fixture(scope="module")
def trained_model():
    keras.utils.set_random_seed(0)
    model = make_model()
    feats = make_inputs(64, seed=1)
    labels = (feats["x"][:, 0] > 0).astype(np.float32)
    before = [c.numpy().copy() for c in model.get_layer("tt").cores]
    model.fit(feats, labels, batch_size=16, epochs=2, verbose=0)
    after = [c.numpy().copy() for c in model.get_layer("tt").cores]
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))
    return model


def test_portable_export_loads_without_tt_keras(tmp_path, trained_model):
    path = tmp_path / "portable"
    ops = E.export_saved_model(trained_model, str(path), SIGNATURE)
    assert ops == E.graph_op_types(str(path))
    assert not [op for op in ops if op.startswith("TTKeras>")]
    assert "BatchMatMulV2" in ops and "Unique" in ops  # the pure-TF TT chain is there
    assert E.custom_op_types(str(path)) == []
    assert E.unregistered_op_types(str(path)) == []
    E.check_portable(str(path))

    requests = [make_inputs(1, seed=7), make_inputs(64, seed=8)]
    ((served_1, served_64),) = serve_in_fresh_python(tmp_path, [(path, requests)])
    for feed, served in zip(requests, (served_1, served_64)):
        expected = trained_model(feed, training=False)
        expected = np.asarray(expected).reshape(-1, 1)
        got = served["predictions"]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_portable_even_when_the_layer_insists_on_the_op(tmp_path):
    if not op_available():
        pytest.skip("the TT op library is not loaded here")
    model = make_model(lookup_backend="op")
    feats = make_inputs(5, seed=3)
    expected = np.asarray(model(feats, training=False))
    path = tmp_path / "portable_from_op"
    ops = E.export_saved_model(model, str(path), SIGNATURE)
    assert not [op for op in ops if op.startswith("TTKeras>")]
    loaded = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = loaded(**{k: tf.constant(v) for k, v in feats.items()})["predictions"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_native_export_keeps_the_custom_op(tmp_path, trained_model):
    if not op_available():
        pytest.skip("the TT op library is not loaded here")
    path = tmp_path / "native"
    ops = E.export_saved_model(trained_model, str(path), SIGNATURE, portable=False)
    custom = [op for op in ops if op.startswith("TTKeras>")]
    assert custom and E.custom_op_types(str(path)) == custom
    with pytest.raises(E.NonPortableGraphError, match="TTKeras>"):
        E.check_portable(str(path))
    # This process has the op library loaded, so it can run the native graph.
    feats = make_inputs(9, seed=4)
    loaded = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = loaded(**{k: tf.constant(v) for k, v in feats.items()})["predictions"].numpy()
    expected = np.asarray(trained_model(feats, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_single_input_and_custom_outputs(tmp_path):
    ids = keras.Input(shape=(), dtype="int64", name="ids")
    layer = tt_keras.TTEmbedding(30, 4, tt_rank=2, name="tt")
    model = keras.Model(ids, layer(ids))
    feed = np.array([0, 29, 7], np.int64)
    path = tmp_path / "single"
    E.export_saved_model(model, str(path), {"item_id": tf.TensorSpec([None], tf.int64)})
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = fn(item_id=tf.constant(feed))
    assert list(got) == ["predictions"]
    np.testing.assert_allclose(got["predictions"].numpy(), layer.to_dense()[feed], rtol=1e-5,
                               atol=1e-7)

    path2 = tmp_path / "custom"
    E.export_saved_model(
        model, str(path2), {"item_id": tf.TensorSpec([None], tf.int64)},
        serving_fn=lambda inputs: {"embedding": model(inputs["item_id"]),
                                   "norm": tf.norm(model(inputs["item_id"]), axis=-1)})
    fn2 = tf.saved_model.load(str(path2)).signatures["serving_default"]
    out = fn2(item_id=tf.constant(feed))
    assert sorted(out) == ["embedding", "norm"]
    np.testing.assert_allclose(out["norm"].numpy(),
                               np.linalg.norm(layer.to_dense()[feed], axis=-1), rtol=1e-5)


def test_bad_signatures():
    model = make_model()
    with pytest.raises(ValueError, match="at least one input"):
        E.export_saved_model(model, "/tmp/unused_tt_keras_export", {})
    with pytest.raises(TypeError, match="TensorSpec"):
        E.export_saved_model(model, "/tmp/unused_tt_keras_export", {"ids": [None, 4]})
