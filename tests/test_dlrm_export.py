"""examples/dlrm/export.py: the trained DLRM as a SavedModel with one named input per raw
Criteo feature, served by a fresh Python that never imports tt_keras (legacy Keras only)."""

import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

# TFRS 0.7.7 imports only under legacy Keras (TF_USE_LEGACY_KERAS=1).
pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import tt_keras  # noqa: E402
from tt_keras import export as tt_export  # noqa: E402

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import export as X  # noqa: E402
from examples.dlrm import model as M  # noqa: E402
from examples.dlrm.sample import criteo_sample_path  # noqa: E402
from serving.criteo_requests import random_rows  # noqa: E402
from tests.fresh_python import serve_in_fresh_python  # noqa: E402

SAMPLE = criteo_sample_path()

def expected_predictions(model, feed):
    feats = X.raw_to_features({k: tf.constant(v) for k, v in feed.items()},
                              model.config.table_sizes)
    return model(feats, training=False).numpy()


def _has_cache():
    return "cache_size" in inspect.signature(tt_keras.TTEmbedding.__init__).parameters


@pytest.fixture(scope="module")
def trained():
    """Tiny DLRMs: TT, dense, and TT with a filled hot-row cache, trained a few steps."""
    models = {}
    kinds = ("tt", "dense") + (("tt_cache",) if _has_cache() else ())
    for kind in kinds:
        cfg = M.tiny_config(tt_tables=0 if kind == "dense" else 3)
        if kind == "tt_cache":
            cfg = cfg.replace(cache_size=16, cache_warmup_steps=1)
        model = M.build_model(cfg, "sgd", 0.5)
        src = D.SyntheticCriteo(cfg.table_sizes, seed=5)
        model.fit(src.dataset(32), steps_per_epoch=3, epochs=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 3
        models[kind] = model
    return models


def test_signature_is_flat_and_named():
    raw = X.serving_input_signature("raw")
    assert list(raw) == list(D.DENSE_FEATURES) + list(D.CAT_FEATURES)
    assert all(raw[n].dtype == tf.float32 and raw[n].shape.as_list() == [None]
               for n in D.DENSE_FEATURES)
    assert all(raw[n].dtype == tf.string and raw[n].shape.as_list() == [None]
               for n in D.CAT_FEATURES)
    ids = X.serving_input_signature("ids")
    assert ids["dense"].shape.as_list() == [None, 13] and ids["C7"].dtype == tf.int64
    with pytest.raises(ValueError):
        X.serving_input_signature("json")


def test_portable_export_serves_the_same_predictions(tmp_path, trained):
    jobs, expected = [], []
    for kind, model in trained.items():
        path = tmp_path / f"export_{kind}"
        ops = X.export_dlrm(model, str(path))
        assert not [op for op in ops if op.startswith("TTKeras>")]
        assert tt_export.custom_op_types(str(path)) == []
        assert tt_export.unregistered_op_types(str(path)) == []
        if kind != "dense":
            assert "BatchMatMulV2" in ops and "Unique" in ops  # the pure-TF TT chain
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        assert sorted(signature.structured_input_signature[1]) == sorted(
            X.serving_input_signature("raw"))
        requests = [random_rows(1, seed=11), random_rows(64, seed=12)]
        jobs.append((path, requests))
        expected.append([expected_predictions(model, feed) for feed in requests])
    served = serve_in_fresh_python(tmp_path, jobs)
    for got_job, want_job in zip(served, expected):
        for got, want, batch in zip(got_job, want_job, (1, 64)):
            assert got["predictions"].shape == want.shape == (batch,)
            np.testing.assert_allclose(got["predictions"], want, rtol=1e-5, atol=1e-6)


def test_real_rows_through_the_served_model(tmp_path, trained):
    """Rows of the real sample, sent raw, score like the reader's features in the model."""
    if not os.path.exists(SAMPLE):
        pytest.skip(f"the Criteo sample is absent ({SAMPLE})")
    model = trained["tt"]
    sizes = model.config.table_sizes
    with open(SAMPLE) as f:
        lines = [next(f) for _ in range(16)]
    _, ints, hexes = D.decode_raw_lines(tf.constant([line.rstrip("\n") for line in lines]))
    feed = {n: tf.cast(c, tf.float32).numpy() for n, c in zip(D.DENSE_FEATURES, ints)}
    feed.update({n: c.numpy().astype(str) for n, c in zip(D.CAT_FEATURES, hexes)})
    feats, _ = D.parse_lines(tf.constant([line.rstrip("\n") for line in lines]), sizes)
    want = model(feats, training=False).numpy()
    path = tmp_path / "export_real"
    X.export_dlrm(model, str(path))
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = fn(**{k: tf.constant(v) for k, v in feed.items()})["predictions"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ids_format(tmp_path, trained):
    model = trained["tt"]
    path = tmp_path / "export_ids"
    X.export_dlrm(model, str(path), input_format="ids")
    feats, _ = D.SyntheticCriteo(model.config.table_sizes, seed=9).batch(0, 8)
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = fn(**feats)["predictions"].numpy()
    np.testing.assert_allclose(got, model(feats, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_native_export_keeps_the_op(tmp_path, trained):
    try:
        available = tt_keras.resolve_backend("auto") == "op"
    except Exception:  # pylint: disable=broad-except
        available = False
    if not available:
        pytest.skip("the TT op library is not loaded here")
    path = tmp_path / "export_native"
    ops = X.export_dlrm(trained["tt"], str(path), portable=False)
    assert [op for op in ops if op.startswith("TTKeras>")]
    with pytest.raises(tt_export.NonPortableGraphError):
        tt_export.check_portable(str(path))
