"""examples/dlrm/export.py: the trained DLRM as a SavedModel with one named input per raw
Criteo feature, served by a fresh Python that never imports tt_keras (legacy Keras only)."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

try:
    import tensorflow_recommenders as tfrs  # noqa: F401
except ImportError as e:  # Keras 3: TFRS 0.7.7 needs TF_USE_LEGACY_KERAS=1
    pytest.skip(f"tensorflow_recommenders cannot import here ({e}); the DLRM example needs "
                "TF_USE_LEGACY_KERAS=1", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import tt_keras  # noqa: E402
from tt_keras import export as tt_export  # noqa: E402

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import export as X  # noqa: E402
from examples.dlrm import model as M  # noqa: E402
from examples.dlrm.sample import criteo_sample_path  # noqa: E402

SAMPLE = criteo_sample_path()

# Serves SavedModels in a process that never imports tt_keras; inputs/outputs through .npz.
_SERVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    for job in json.loads(sys.argv[1]):
        fn = tf.saved_model.load(job["model"]).signatures["serving_default"]
        inputs = np.load(job["inputs"], allow_pickle=False)
        out = {}
        for g in sorted({k.split("__")[0] for k in inputs.files}):
            feed = {k.split("__", 1)[1]: tf.constant(inputs[k]) for k in inputs.files
                    if k.startswith(g + "__")}
            out[g] = fn(**feed)["predictions"].numpy()
        np.savez(job["outputs"], **out)
    assert "tt_keras" not in sys.modules, "tt_keras was imported"
    print("SERVED_WITHOUT_TT_KERAS")
""")


def serve_in_fresh_python(tmp_path, jobs):
    """jobs: [(saved_model_dir, {group: {input: array}})] -> [{group: predictions}]."""
    spec = []
    for i, (model_dir, groups) in enumerate(jobs):
        flat = {f"{g}__{k}": np.asarray(v) for g, feed in groups.items() for k, v in feed.items()}
        np.savez(tmp_path / f"in_{i}.npz", **flat)
        spec.append({"model": str(model_dir), "inputs": str(tmp_path / f"in_{i}.npz"),
                     "outputs": str(tmp_path / f"out_{i}.npz")})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", _SERVER, json.dumps(spec)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SERVED_WITHOUT_TT_KERAS" in proc.stdout
    out = []
    for job in spec:
        data = np.load(job["outputs"])
        out.append({g: data[g] for g in data.files})
    return out


def raw_rows(batch, seed):
    """Raw Criteo-like request rows: counts (some negative / zero), hex ids (some empty)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name in D.DENSE_FEATURES:
        v = rng.integers(-3, 2000, size=batch).astype(np.float32)
        v[rng.random(batch) < 0.2] = 0.0
        feed[name] = v
    for name in D.CAT_FEATURES:
        hexes = np.array([f"{x:08x}" for x in rng.integers(0, 2 ** 32, size=batch)])
        hexes[rng.random(batch) < 0.15] = ""
        feed[name] = hexes
    return feed


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
        groups = {"b1": raw_rows(1, seed=11), "b64": raw_rows(64, seed=12)}
        jobs.append((path, groups))
        expected.append({g: expected_predictions(model, feed) for g, feed in groups.items()})
    served = serve_in_fresh_python(tmp_path, jobs)
    for got, want in zip(served, expected):
        for g in ("b1", "b64"):
            assert got[g].shape == want[g].shape == ((1,) if g == "b1" else (64,))
            np.testing.assert_allclose(got[g], want[g], rtol=1e-5, atol=1e-6)


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
