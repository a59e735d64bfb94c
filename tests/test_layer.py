"""TTEmbedding against the NumPy-reconstructed dense table, in Keras 3 and in tf_keras."""

import os
import threading
import warnings

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras import oracle, tt_math
from tt_keras._keras import IS_KERAS_3, keras
from tt_keras.ops.loader import LazyOpLibrary

from tests import tolerance
from tests.keras_saved_model import saved_model_predictions

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
    emb = [x for x in model.layers if isinstance(x, tt_keras.TTEmbedding)][0]
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
    got = saved_model_predictions(model, path, x)
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


# ---------------------------------------------------------------- hardening

def test_concurrent_first_calls_build_the_layer_once(backend):
    """Threads making the first call of an unbuilt layer: one set of cores, and every call
    (then and later) returns the oracle's rows."""
    layer = tt_keras.TTEmbedding(N, D, tt_rank=[3, 4], tt_row_shape=(5, 6, 10),
                                 tt_col_shape=(2, 2, 3), lookup_backend=backend)
    ids = tf.constant([[1, 2], [299, 0]])
    start = threading.Barrier(4)
    outputs, errors = [None] * 4, []

    def first_call(i):
        start.wait()
        try:
            outputs[i] = layer(ids).numpy()
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)

    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(v.name.split("/")[-1].split(":")[0] for v in layer.weights) == [
        "core_0", "core_1", "core_2"]
    table = oracle.dense_table([c.numpy() for c in layer.cores], N)
    for out in outputs + [layer(ids).numpy()]:
        np.testing.assert_allclose(out, table[ids.numpy()], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(input_dim=100, output_dim=4, tt_row_shape=(2**16,) * 4),
     r"tt_row_shape \(65536, 65536, 65536, 65536\) holds 18446744073709551616 rows"),
    (dict(input_dim=2**63 + 10, output_dim=4), r"input_dim = 9223372036854775818 exceeds 2\^62"),
    (dict(input_dim=10_000, output_dim=16, tt_rank=100_000),
     r"tt_rank \(1, 100000, 100000, 1\) gives 400,014,000,000 TT parameters"),
])
def test_tables_beyond_the_limits_are_refused_at_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tt_keras.TTEmbedding(**kwargs)


def test_sizes_of_an_unbuilt_layer_create_no_variables():
    layer = tt_keras.TTEmbedding(10_131_227, 16, tt_rank=32, cache_size=1013)
    sizes = (layer.cache_size, layer.cache_bytes, layer.cache_hit_rate, layer.embedding_bytes,
             layer.compression_ratio, layer.num_params)
    assert sizes[:3] == (1013, 1013 * 16 * 4 + 1013 * 8 + 2 * 4052 * 8 + 3 * 8, 0.0)
    assert sizes[3] == 495_360 * 4 + sizes[1]
    assert not layer.built and not layer.weights and not layer.cache.built


def empty_input(kind):
    if kind == "ragged":
        return tf.RaggedTensor.from_row_splits(tf.zeros([0], tf.int64), tf.zeros([1], tf.int64))
    if kind == "sparse":
        return tf.sparse.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64),
                                      [0, 3])
    return tf.zeros([0, 3], tf.int64)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("kind", ["dense", "ragged", "sparse", "dense_none"])
@pytest.mark.parametrize("cache_size,training", [(0, False), (3, False), (3, True)])
def test_an_empty_batch_gives_an_empty_result(backend, graph, kind, cache_size, training):
    layer = make_layer(backend, combiner=None if kind == "dense_none" else "sum",
                       cache_size=cache_size, cache_warmup_steps=0)
    call = lambda x: layer(x, training=training)  # noqa: E731
    out = (tf.function(call) if graph else call)(empty_input(kind))
    assert out.shape == ((0, 3, D) if kind == "dense_none" else (0, D))
    if cache_size and training:
        assert int(np.asarray(layer.cache.cache_step)) == 1 and layer.cache_hit_rate == 0.0


def test_the_portable_export_serves_an_empty_batch(tmp_path):
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    model = keras.Model(ids, make_layer(combiner="mean", cache_size=3)(ids))
    path = str(tmp_path / "export")
    tt_keras.export_saved_model(model, path, {"ids": tf.TensorSpec([None, 3], tf.int64)})
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert serve(ids=tf.zeros([0, 3], tf.int64))["predictions"].shape == (0, D)
    full = serve(ids=tf.constant([[1, 2, 3]], tf.int64))["predictions"].numpy()
    tolerance.assert_reordered_close(full, model(np.array([[1, 2, 3]])).numpy())


@pytest.mark.parametrize("splits,needle", [
    ([0, 5, 3], r"row_splits must not decrease: row_splits\[2\] = 3 < row_splits\[1\] = 5"),
    ([1, 2, 3], r"row_splits\[0\] = 1 must be 0"),
    ([0, 1, 2], r"row_splits\[-1\] = 2 must equal the number of indices, 3"),
])
def test_ragged_ids_with_bad_splits_are_refused(backend, splits, needle):
    layer = make_layer(backend, "sum")
    ids = tf.RaggedTensor.from_row_splits(tf.constant([1, 2, 3], tf.int64),
                                          tf.constant(splits, tf.int64), validate=False)
    for call in (layer, tf.function(layer)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
            call(ids)


def test_ragged_ids_with_bad_outer_splits_are_refused(backend):
    layer = make_layer(backend, "sum")
    inner = tf.RaggedTensor.from_row_splits(tf.constant([1, 2, 3], tf.int64),
                                            tf.constant([0, 1, 3], tf.int64))
    ids = tf.RaggedTensor.from_row_splits(inner, tf.constant([0, 3], tf.int64), validate=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        layer(ids)


def test_dense_weights_of_another_shape_are_refused_in_graphs(backend):
    """The right number of weights in the wrong shape would pair weights with other ids."""
    layer = make_layer(backend, "sum")
    call = tf.function(lambda ids, w: layer(ids, weights=w), input_signature=[
        tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"weights of shape \[3,2\] do not match ids of shape \[2,3\]"):
        call(tf.ones([2, 3], tf.int64), tf.ones([3, 2]))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    table = oracle.dense_table([c.numpy() for c in layer.cores], N)
    np.testing.assert_allclose(call(tf.constant(ids), tf.constant(w)).numpy(),
                               oracle.pooled_oracle(table, ids.tolist(), w.tolist(), "sum"),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cache_size", [0, 3])
def test_second_order_gradients(backend, cache_size):
    """The op's gradient ops have no gradient: asked for one, they say so. The pure-TF path
    differentiates twice (checked against finite differences of its first derivative)."""
    layer = make_layer(backend, "sum", cache_size=cache_size, cache_warmup_steps=0)
    ids = tf.constant([[1, 2, 2], [7, 299, 0]])
    if cache_size:
        layer(ids, training=True)  # fills the cache with 2, and two of 0, 1, 7, 299
    def grad_norm():
        with tf.GradientTape() as inner:
            loss = tf.reduce_sum(layer(ids) ** 2)
        grads = inner.gradient(loss, layer.cores)
        return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g) ** 2) for g in grads])

    with tf.GradientTape() as outer:
        norm = grad_norm()
    if backend == "op":
        with pytest.raises(tf.errors.UnimplementedError,
                           match="second-order gradients of TTKeras>TTEmbeddingBag"):
            outer.gradient(norm, layer.cores)
        return
    second = tf.convert_to_tensor(outer.gradient(norm, layer.cores)[0]).numpy()
    # Central difference of the first derivative along one direction of the first core.
    core = layer.cores[0]
    start = core.numpy()
    direction = np.random.default_rng(8).normal(size=start.shape).astype(np.float32)
    eps = 1e-2
    core.assign(start + eps * direction)
    ahead = float(grad_norm())
    core.assign(start - eps * direction)
    behind = float(grad_norm())
    core.assign(start)
    np.testing.assert_allclose(float((second * direction).sum()), (ahead - behind) / (2 * eps),
                               rtol=2e-2, atol=1e-3)


def test_a_vocabulary_sorted_by_frequency_feeds_the_layer():
    """Frequency-ordered ids through a vocabulary (docs/quality.md): Keras' IntegerLookup,
    adapted on a sample, numbers its vocabulary by descending count after its
    out-of-vocabulary index 0, so behind it the hottest raw id reads row 1 of the TT table,
    the next row 2, and ids the sample never saw row 0."""
    rng = np.random.default_rng(5)
    raw = rng.choice(10 ** 9, size=N - 1, replace=False).astype(np.int64)  # hashed ids
    sample = rng.permutation(np.repeat(raw, np.arange(N - 1, 0, -1)))  # raw[k]: N - 1 - k
    vocabulary = keras.layers.IntegerLookup()
    vocabulary.adapt(sample)
    assert vocabulary.vocabulary_size() == N
    layer = make_layer()
    unseen = np.int64(10 ** 9 + 7)
    query = np.concatenate([raw[::-1][:40], raw[:5], [unseen]])
    rows = layer(vocabulary(tf.constant(query)))
    expect = np.concatenate([np.arange(N - 1, N - 41, -1), np.arange(1, 6), [0]])
    table = oracle.dense_table([c.numpy() for c in layer.cores], N)
    np.testing.assert_allclose(np.asarray(rows), table[expect], rtol=1e-4, atol=1e-5)
