"""tt_keras/export.py: SavedModel export of Keras models holding TTEmbedding (Keras 3 and
tf_keras alike). The portable SavedModel is loaded in a fresh Python that never imports
tt_keras and must predict what the trained model predicts."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras import export as E
from tt_keras._keras import keras

from tests.fresh_python import serve_in_fresh_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ---------------------------------------------------------------------------------------
# Replacing an export: the previous one survives a failed or killed export
# ---------------------------------------------------------------------------------------

# Exports a fresh model over argv[1], SIGKILLing itself at the point argv[2] names.
_KILLED_EXPORT = textwrap.dedent("""
    import os, signal, shutil, sys
    import tensorflow as tf
    from tests.test_export import SIGNATURE, make_model
    from tt_keras import dir_swap
    from tt_keras import export as E
    target, point = sys.argv[1], sys.argv[2]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def after(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            die()
            return out
        return wrapped

    serving_fn = None
    if point == "tracing":
        model = make_model()
        serving_fn = lambda inputs: die() or model(inputs)
    elif point == "after_save":
        tf.saved_model.save = after(tf.saved_model.save)
    elif point == "checking":
        E._check_complete = die
    elif point == "swapping":
        dir_swap._exchange = die
    elif point == "deleting_the_old":
        dir_swap.shutil.rmtree = die
    elif point == "between_renames":  # the swap where the atomic exchange is missing
        renames, real_rename = [], os.rename
        dir_swap._exchange = lambda a, b: renames.append("armed") and False
        def rename(a, b):
            if renames:
                renames.append(a)
                if len(renames) == 3:
                    die()
            real_rename(a, b)
        os.rename = rename
    E.export_saved_model(make_model(num_rows=61), target, SIGNATURE, serving_fn=serving_fn)
    print("NOT KILLED")
""")

KILL_POINTS = ["tracing", "after_save", "checking", "swapping", "deleting_the_old",
               "between_renames"]


def _served(path, feed):
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return fn(**{k: tf.constant(v) for k, v in feed.items()})["predictions"].numpy()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_during_an_export_keeps_the_previous_one(tmp_path, trained_model, point):
    target = tmp_path / "model"
    E.export_saved_model(trained_model, str(target), SIGNATURE)
    feed = make_inputs(6, seed=11)
    before = _served(target, feed)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(target), point],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
    # Only the interrupted fallback swap needs the recovery every export runs first.
    from tt_keras import dir_swap  # pylint: disable=g-import-not-at-top
    dir_swap.recover_dir(str(target))
    after = _served(target, feed)
    if point == "deleting_the_old":  # killed after the swap: the new, complete export serves
        assert after.shape == before.shape and not np.array_equal(after, before)
        E._check_complete(str(target), has_variables=True)
    else:
        np.testing.assert_array_equal(after, before)
    assert not [p for p in os.listdir(tmp_path) if p != "model"]  # nothing else is left


def test_a_raising_serving_function_keeps_the_previous_export(tmp_path, trained_model):
    target = tmp_path / "model"
    E.export_saved_model(trained_model, str(target), SIGNATURE)
    feed = make_inputs(3, seed=12)
    before = _served(target, feed)

    def broken(inputs):
        raise RuntimeError("the serving function is broken")

    with pytest.raises(RuntimeError, match="is broken"):
        E.export_saved_model(trained_model, str(target), SIGNATURE, serving_fn=broken)
    np.testing.assert_array_equal(_served(target, feed), before)
    assert os.listdir(tmp_path) == ["model"]  # no staging directory left behind


def test_successive_exports_replace_each_other(tmp_path, trained_model):
    target = tmp_path / "model"
    feed = make_inputs(4, seed=13)
    other = make_model()
    for model in (trained_model, other, trained_model):
        E.export_saved_model(model, str(target), SIGNATURE)
        expected = np.asarray(model(feed, training=False))
        np.testing.assert_allclose(_served(target, feed), expected, rtol=1e-5, atol=1e-6)
        assert os.listdir(tmp_path) == ["model"]
    with pytest.raises(FileExistsError, match=str(target)):
        E.export_saved_model(trained_model, str(target), SIGNATURE, overwrite=False)


def test_a_truncated_variables_file_fails_the_check(tmp_path, trained_model):
    path = tmp_path / "model"
    E.export_saved_model(trained_model, str(path), SIGNATURE)
    data = [p for p in os.listdir(path / "variables") if ".data-" in p][0]
    with open(path / "variables" / data, "r+b") as f:
        f.truncate(os.path.getsize(path / "variables" / data) // 2)
    with pytest.raises(RuntimeError, match="do not read back"):
        E._check_complete(str(path), has_variables=True)
