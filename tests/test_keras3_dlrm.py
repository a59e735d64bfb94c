"""examples/keras3_dlrm: the DLRM on keras-rs and TTEmbedding under Keras 3, trained with
model.fit, evaluated (AUC), exported portably and served without tt_keras."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tt_keras._keras import IS_KERAS_3

if not IS_KERAS_3:
    pytest.skip("examples/keras3_dlrm needs Keras 3 (keras-rs); this is legacy tf_keras",
                allow_module_level=True)
keras_rs = pytest.importorskip("keras_rs")

import tt_keras  # noqa: E402
from tt_keras import export as tt_export  # noqa: E402

from examples.dlrm import data as dlrm_data  # noqa: E402
from examples.dlrm import export as dlrm_export  # noqa: E402
from examples.keras3_dlrm import model as k3_model  # noqa: E402
from serving import criteo_requests  # noqa: E402
from tests import serving_models  # noqa: E402
from tests.fresh_python import serve_in_fresh_python  # noqa: E402
from tests.tolerance import assert_reordered_close  # noqa: E402


def _auc(labels, scores):
    """Mann-Whitney AUC with ties counted half (the oracle for Keras' AUC metric)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def trained():
    config = k3_model.tiny_config()
    model = k3_model.build_model(config, learning_rate=0.5)
    source = dlrm_data.SyntheticCriteo(config.table_sizes, seed=1)
    tt_layer = model.get_layer(f"tt_{config.tt_features[0]}")
    before = [c.numpy() for c in tt_layer.cores]
    history = model.fit(source.dataset(64), steps_per_epoch=6, epochs=1, shuffle=False,
                        verbose=0)
    return model, source, before, history


def test_model_structure():
    config = k3_model.tiny_config(tt_tables=3)
    model = k3_model.build_model(config)
    tt = [x for x in model.layers if isinstance(x, tt_keras.TTEmbedding)]
    assert sorted(x.name for x in tt) == sorted(f"tt_{f}" for f in config.tt_features)
    assert len(config.tt_features) == 3
    largest = sorted(config.table_sizes, reverse=True)[:3]
    assert sorted(x.input_dim for x in tt) == sorted(largest)
    assert isinstance(model.get_layer("interaction"), keras_rs.layers.DotInteraction)
    with pytest.raises(ValueError, match="tt_tables"):
        k3_model.tiny_config(tt_tables=27)


def test_fit_trains_and_evaluate_reports_auc(trained):
    model, source, before, history = trained
    assert int(model.optimizer.iterations.numpy()) == 6
    assert np.all(np.isfinite(history.history["loss"]))
    tt_layer = model.get_layer(f"tt_{model.config.tt_features[0]}")
    assert any(not np.array_equal(b, c.numpy()) for b, c in zip(before, tt_layer.cores))
    features, labels = source.batch(0, 2048, stream=1)
    results = model.evaluate(features, labels, batch_size=512, return_dict=True, verbose=0)
    scores = model.predict(features, batch_size=512, verbose=0)
    assert scores.shape == (2048,)
    assert abs(results["auc"] - _auc(labels.numpy(), scores)) < 2e-3


def test_portable_export_serves_without_tt_keras(trained, tmp_path):
    model, _, _, _ = trained
    path = tmp_path / "export"
    ops = dlrm_export.export_dlrm(model, str(path))
    assert tt_export.custom_op_types(str(path)) == []
    assert "BatchMatMulV2" in ops  # the TT chain in standard ops
    requests = [criteo_requests.random_rows(b, seed=b) for b in (1, 64)]
    (served,) = serve_in_fresh_python(tmp_path, [(path, requests)])
    for request, outputs in zip(requests, served):
        assert_reordered_close(outputs["predictions"],
                               serving_models.expected_predictions(model, request))


def test_train_script_on_the_criteo_sample(tmp_path):
    if not os.path.exists(serving_models.SAMPLE):
        pytest.skip("the Criteo sample is absent")
    export_dir = tmp_path / "export"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "examples.keras3_dlrm.train", f"--data={serving_models.SAMPLE}",
         "--table_scale=1000", "--tt_tables=3", "--tt_rank=4", "--embedding_dim=8",
         "--batch_size=64", "--steps=4", "--steps_per_epoch=2", "--eval_examples=512",
         "--eval_batch_size=256", f"--export_dir={export_dir}"],
        cwd=serving_models.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert results["steps"] == 4 and 0.0 <= results["auc"] <= 1.0
    assert len(results["tt_features"]) == 3
    assert tt_export.custom_op_types(str(export_dir)) == []
