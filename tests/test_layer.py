"""TTEmbedding against the NumPy-reconstructed dense table, in Keras 3 and in tf_keras."""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tests import tolerance
from tt_keras import oracle, tt_math
from tt_keras._keras import IS_KERAS_3, keras
from tt_keras.ops.loader import LazyOpLibrary

N, D = 300, 12


def make_layer(backend="auto", combiner=None, rank=(3, 4), seed=0, **kwargs):
    layer = tt_keras.TTEmbedding(N, D, tt_rank=list(rank), tt_row_shape=(5, 6, 10),
                                 tt_col_shape=(2, 2, 3), combiner=combiner,
                                 lookup_backend=backend, **kwargs)
    layer.build()
    layer.set_cores(oracle.random_cores(layer.tt_shape, np.random.default_rng(seed)))
    return layer


def grads_of(layer, fn):
    with tf.GradientTape() as tape:
        out = fn()
        upstream = tf.reshape(tf.range(tf.size(out), dtype=tf.float32) / 10.0 - 1.0,
                              tf.shape(out))
        loss = tf.reduce_sum(out * upstream)
    grads = tape.gradient(loss, layer.cores)
    return out.numpy(), upstream.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)])
def test_dense_ids_of_any_shape(backend, shape):
    layer = make_layer(backend)
    ids = np.random.default_rng(1).integers(0, N, size=shape)
    out, upstream, grads = grads_of(layer, lambda: layer(tf.constant(ids)))
    cores = [c.numpy() for c in layer.cores]
    assert out.shape == shape + (D,)
    np.testing.assert_allclose(out, oracle.dense_table(cores, N)[ids], rtol=1e-4, atol=1e-5)
    bags = [[int(i)] for i in ids.reshape(-1)]
    want = oracle.core_grads_oracle(cores, bags, None, "none", upstream.reshape(-1, D))
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def bags_and_weights():
    bags = [[1, 5, 5], [], [299, 0], [7], [], [3, 3, 3, 3]]
    weights = [[0.5, 1.0, 2.0], [], [1.5, 0.25], [3.0], [], [1.0, 0.5, 0.5, 2.0]]
    return bags, weights


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("kind", ["ragged", "sparse"])
def test_bags(backend, combiner, with_weights, kind):
    layer = make_layer(backend, combiner)
    bags, weights = bags_and_weights()
    w = weights if with_weights else None
    ragged = tf.ragged.constant(bags, dtype=tf.int64)
    ragged_w = tf.ragged.constant(weights, dtype=tf.float32, ragged_rank=1) if w else None
    if kind == "ragged":
        ids, wts = ragged, ragged_w
    else:
        ids, wts = ragged.to_sparse(), (ragged_w.to_sparse() if w else None)
    out, upstream, grads = grads_of(layer, lambda: layer(ids, weights=wts))
    cores = [c.numpy() for c in layer.cores]
    assert out.shape == (len(bags), D)
    expect = oracle.pooled_oracle(oracle.dense_table(cores, N), bags, w, combiner)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    assert not out[1].any() and not out[4].any()  # empty bags are zeros
    for g, want in zip(grads, oracle.core_grads_oracle(cores, bags, w, combiner, upstream)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)


def test_dense_bags_pool_the_last_axis(backend):
    layer = make_layer(backend, "mean")
    ids = np.array([[[1, 2], [3, 4]], [[5, 5], [0, 299]]])
    w = np.array([[[1.0, 2.0], [0.5, 0.5]], [[1.0, 1.0], [3.0, 1.0]]], np.float32)
    out = layer(tf.constant(ids), weights=tf.constant(w)).numpy()
    assert out.shape == (2, 2, D)
    table = oracle.dense_table([c.numpy() for c in layer.cores], N)
    expect = oracle.pooled_oracle(table, ids.reshape(-1, 2).tolist(), w.reshape(-1, 2).tolist(),
                                  "mean").reshape(2, 2, D)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)


def test_both_backends_agree():
    op_layer = make_layer("auto")
    ref_layer = make_layer("reference")
    ids = tf.constant(np.random.default_rng(2).integers(0, N, size=(64, 5)))
    np.testing.assert_allclose(op_layer(ids).numpy(), ref_layer(ids).numpy(), rtol=1e-5,
                               atol=1e-6)
    with tt_keras.lookup_backend_scope("reference"):
        np.testing.assert_allclose(op_layer(ids).numpy(), ref_layer(ids).numpy(), rtol=1e-5,
                                   atol=1e-6)


# ---------------------------------------------------------------- bad input

def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="tt_row_shape .* holds 100 rows but input_dim is 1000"):
        tt_keras.TTEmbedding(1000, 8, tt_row_shape=(10, 10))
    with pytest.raises(ValueError, match="tt_col_shape .* multiplies to 8 but output_dim is 16"):
        tt_keras.TTEmbedding(1000, 16, tt_col_shape=(2, 2, 2))
    with pytest.raises(ValueError, match="tt_rank"):
        tt_keras.TTEmbedding(1000, 16, tt_rank=0)
    with pytest.raises(ValueError, match="tt_rank"):
        tt_keras.TTEmbedding(1000, 16, tt_rank=[4, -2])
    with pytest.raises(ValueError, match="input_dim"):
        tt_keras.TTEmbedding(0, 16)
    with pytest.raises(ValueError, match="combiner"):
        tt_keras.TTEmbedding(1000, 16, combiner="max")
    with pytest.raises(ValueError, match="lookup_backend"):
        tt_keras.TTEmbedding(1000, 16, lookup_backend="gpu")


def test_call_errors(backend):
    layer = make_layer(backend)
    with pytest.raises(TypeError, match="integer ids.*float32"):
        layer(tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="combiner=None"):
        layer(tf.ragged.constant([[1, 2], [3]]))
    with pytest.raises(ValueError, match="combiner=None"):
        layer(tf.sparse.from_dense(tf.constant([[1, 0], [3, 4]])))
    for bad in (-1, N):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{bad}.*out of range"):
            layer(tf.constant([[0, 1], [2, bad]]))
    pooled = make_layer(backend, "sum")
    with pytest.raises(ValueError, match="bag"):
        pooled(tf.constant([1, 2, 3]))
    with pytest.raises(TypeError, match="weights must be floats"):
        pooled(tf.constant([[1, 2]]), weights=tf.constant([[1, 2]]))
    with pytest.raises(ValueError, match="weights of shape"):
        pooled(tf.constant([[1, 2]]), weights=tf.constant([[1.0, 2.0, 3.0]]))


# ---------------------------------------------------------------- construction

def test_from_dense_recovers_an_exact_tt_table():
    shape = tt_math.TTShape((5, 6, 10), (2, 2, 3), (1, 3, 4, 1))
    cores = oracle.random_cores(shape, np.random.default_rng(3))
    table = oracle.dense_table(cores, N).astype(np.float32)
    layer = tt_keras.TTEmbedding.from_dense(table, tt_rank=[3, 4], tt_row_shape=(5, 6, 10),
                                            tt_col_shape=(2, 2, 3))
    np.testing.assert_allclose(layer.to_dense(), table, rtol=1e-4, atol=1e-4)
    ids = tf.constant([0, 17, 299])
    np.testing.assert_allclose(layer(ids).numpy(), table[[0, 17, 299]], rtol=1e-4, atol=1e-4)


def test_fbtt_cores_round_trip():
    layer = make_layer()
    fbtt = layer.to_fbtt_cores()
    assert fbtt[1].shape == (6, 3 * 2 * 4)
    again = tt_keras.TTEmbedding.from_fbtt_cores(fbtt, N, D, (5, 6, 10), (2, 2, 3))
    np.testing.assert_array_equal(again.to_dense(), layer.to_dense())


def test_sizes_of_the_spec_example():
    layer = tt_keras.TTEmbedding(10_131_227, 16, tt_rank=32)
    assert layer.tt_shape.row_shape == (200, 220, 250)
    assert layer.tt_shape.col_shape == (2, 2, 4)
    assert layer.num_params == 495_360
    assert layer.compression_ratio == pytest.approx(10_131_227 * 16 / 495_360)
    assert layer.embedding_bytes == 495_360 * 4


def test_config_round_trip():
    layer = make_layer(combiner="sqrtn", embeddings_initializer=tt_keras.SampledGaussian(seed=3))
    config = layer.get_config()
    clone = tt_keras.TTEmbedding.from_config(config)
    assert clone.get_config() == config
    assert clone.tt_shape == layer.tt_shape


def test_mixed_precision():
    layer = tt_keras.TTEmbedding(N, D, tt_rank=4, dtype="mixed_float16")
    ids = tf.constant([[1, 2], [3, 299]])
    out = layer(ids)
    assert out.dtype == tf.float16
    expect = oracle.dense_table([c.numpy() for c in layer.cores], N)[ids.numpy()]
    np.testing.assert_allclose(out.numpy().astype(np.float64), expect, rtol=2e-2, atol=1e-4)


# ---------------------------------------------------------------- models and saving

def build_models():
    """The same lookup as Sequential, functional and subclassed models."""
    seq = keras.Sequential()
    seq.add(keras.Input(shape=(4,), dtype="int64"))
    seq.add(make_layer(combiner="sum", seed=1))
    seq.add(keras.layers.Dense(1))

    inputs = keras.Input(shape=(4,), dtype="int64")
    x = make_layer(combiner="mean", seed=2)(inputs)
    functional = keras.Model(inputs, keras.layers.Dense(1)(x))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = make_layer(combiner="sqrtn", seed=3)
            self.head = keras.layers.Dense(1)

        def call(self, ids):
            return self.head(self.embedding(ids))

    sub = Subclassed()
    sub(tf.zeros([1, 4], tf.int64))
    return {"sequential": seq, "functional": functional, "subclassed": sub}


def training_data():
    rng = np.random.default_rng(4)
    x = rng.integers(0, N, size=(64, 4))
    y = (x.sum(axis=1, keepdims=True) % 2).astype(np.float32)
    return x, y


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_models_train(kind):
    model = build_models()[kind]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = training_data()
    emb = [l for l in model.layers if isinstance(l, tt_keras.TTEmbedding)][0]
    before = [c.numpy().copy() for c in emb.cores]
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(b, c.numpy()) for b, c in zip(before, emb.cores))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_keras_file_round_trip(tmp_path, kind):
    if not IS_KERAS_3:
        pytest.skip(".keras files are Keras 3's format")
    model = build_models()[kind]
    x, _ = training_data()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_savedmodel_round_trip(tmp_path):
    model = build_models()["functional"]
    x, _ = training_data()
    path = str(tmp_path / "saved")
    if IS_KERAS_3:
        model.export(path)
        restored = tf.saved_model.load(path)
        got = restored.serve(tf.constant(x)).numpy()
    else:
        model.save(path, save_format="tf")
        got = keras.models.load_model(path).predict(x, verbose=0)
    tolerance.assert_reordered_close(got, model.predict(x, verbose=0))


def test_checkpoint_round_trip(tmp_path):
    a = make_layer(seed=5)
    b = make_layer(seed=6)
    ids = tf.constant([0, 7, 299])
    prefix = tf.train.Checkpoint(embedding=a).save(str(tmp_path / "ckpt"))
    assert not np.allclose(a(ids).numpy(), b(ids).numpy())
    tf.train.Checkpoint(embedding=b).restore(prefix).assert_consumed()
    np.testing.assert_array_equal(a(ids).numpy(), b(ids).numpy())


# ---------------------------------------------------------------- op library fallback

def test_missing_library_falls_back_with_one_warning(tmp_path, monkeypatch):
    import tt_keras.lookup as lookup
    monkeypatch.setattr(lookup, "tt_ops_library", LazyOpLibrary(str(tmp_path)))
    layer = make_layer("auto")
    ids = tf.constant([1, 2, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = layer(ids).numpy()
        layer(ids)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "missing" in messages[0]
    expect = oracle.dense_table([c.numpy() for c in layer.cores], N)[[1, 2, 3]]
    np.testing.assert_allclose(first, expect, rtol=1e-4, atol=1e-5)
    with pytest.raises(tt_keras.OpLibraryUnavailable):
        make_layer("op")(ids)


def test_library_built_for_another_tensorflow_is_not_loaded(tmp_path, monkeypatch):
    import tt_keras.lookup as lookup
    from tt_keras.ops import tt_ops_library
    os.symlink(tt_ops_library.path, tmp_path / "_tt_ops.so")
    (tmp_path / "_tt_ops.version").write_text("1.15.0\n")
    monkeypatch.setattr(lookup, "tt_ops_library", LazyOpLibrary(str(tmp_path)))
    with pytest.warns(RuntimeWarning, match="built for TensorFlow 1.15.0"):
        make_layer("auto")(tf.constant([1]))
