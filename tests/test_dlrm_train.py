"""examples/dlrm/training.py and train.py: resume, checkpoints, TensorBoard, the comparison,
and end-to-end CLI runs (legacy Keras only)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# TFRS 0.7.7 imports only under legacy Keras (TF_USE_LEGACY_KERAS=1).
pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tt_keras import tt_math  # noqa: E402

from examples.dlrm import model as M  # noqa: E402
from examples.dlrm import reports as R  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm import train as T  # noqa: E402
from examples.dlrm import training  # noqa: E402
from examples.dlrm.config import Config  # noqa: E402
from examples.dlrm.sample import criteo_sample_path  # noqa: E402
from tests.test_dlrm_callbacks import event_scalars  # noqa: E402
from tests.tolerance import assert_reordered_close  # noqa: E402


def _config(tmp_path, **changes):
    base = dict(data="synthetic", batch_size=16, steps=3, steps_per_epoch=2,
                eval_examples=64, periodic_eval_examples=32, eval_batch_size=32,
                model_dir=str(tmp_path / "model_dir"), out_dir="", verbose=0)
    base.update(changes)
    return Config.from_options(base)


def _check_metrics(result):
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0
    # Barely trained: near the log loss of a constant prediction of the ~25% positive rate.
    assert 0.3 < result["logloss"] < 1.0, result["logloss"]


@pytest.mark.parametrize("kind", ["tt", "dense"])
def test_resume_continues_the_step_count(tmp_path, kind):
    cfg = M.tiny_config(tt_tables=3 if kind == "tt" else 0)
    config = _config(tmp_path)
    source = S.make_source(config.data, cfg.table_sizes, config.training.seed)
    first = training.train_model(kind, cfg, config, source)
    assert first["steps"] == 3 and first["trained_steps_this_run"] == 3
    assert first["curve"]["steps"] == [1, 2, 3] and first["curve"]["eval_steps"] == [2, 3]
    ckpt_dir = tmp_path / "model_dir" / kind / "checkpoints"
    assert (ckpt_dir / "checkpoint").exists()
    assert any(p.name.startswith("ckpt-3.") for p in ckpt_dir.iterdir())

    config = config.override(steps=5)
    second = training.train_model(kind, cfg, config, source)
    assert second["steps"] == 5 and second["trained_steps_this_run"] == 2
    assert second["curve"]["steps"] == [4, 5]
    assert any(p.name.startswith("ckpt-5.") for p in ckpt_dir.iterdir())

    third = training.train_model(kind, cfg, config, source)  # already there: evaluate only
    assert third["steps"] == 5 and third["trained_steps_this_run"] == 0
    assert third["train_seconds"] == 0.0
    for r in (first, second, third):
        _check_metrics(r)
    # The third run evaluates the second's last checkpoint on the same held-out data.
    for key in ("auc", "logloss", "accuracy", "eval_prediction_mean"):
        assert_reordered_close(third[key], second[key])

    # TensorBoard: epoch scalars of both runs; the second continues at epoch 1 (steps 3-4).
    tb = tmp_path / "model_dir" / kind / "tensorboard"
    loss = event_scalars(tb / "train")["epoch_loss"]
    assert [step for step, _ in loss] == [0, 1, 1] and np.all(np.isfinite([v for _, v in loss]))
    auc = event_scalars(tb / "validation")["epoch_auc"]
    assert [step for step, _ in auc] == [0, 1, 1]
    np.testing.assert_allclose([v for _, v in auc],
                               first["curve"]["eval_auc"] + second["curve"]["eval_auc"],
                               rtol=1e-6)


def test_comparison_results_and_outputs(tmp_path):
    cfg = M.tiny_config()
    config = _config(tmp_path, model_dir="", steps=2)
    source = S.make_source(config.data, cfg.table_sizes, config.training.seed)
    results = training.run_comparison([("tt", cfg), ("dense", cfg.replace(tt_tables=0))],
                                      config, source)
    assert [r["label"] for r in results] == ["dense", "tt"]
    dense, tt = results
    dim = cfg.embedding_dim
    # Oracle: dense tables 4 * rows * D bytes, TT tables 4 * their TT shape's parameters.
    tt_params = sum(tt_math.TTShape.create(n, dim, cfg.tt_rank).num_params
                    for name, n in zip(M.CAT_FEATURES, cfg.table_sizes)
                    if name in cfg.tt_features)
    tt_rows = sum(n for name, n in zip(M.CAT_FEATURES, cfg.table_sizes)
                  if name in cfg.tt_features)
    assert dense["embedding_bytes"] == dense["uncompressed_embedding_bytes"] == \
        4 * dim * sum(cfg.table_sizes)
    assert tt["embedding_bytes"] == 4 * (dim * (sum(cfg.table_sizes) - tt_rows) + tt_params)
    assert tt["tt_tables_ratio"] == pytest.approx(tt_rows * dim / tt_params)
    assert tt["compression_ratio"] == pytest.approx(
        dense["embedding_bytes"] / tt["embedding_bytes"])
    assert dense["tt_tables_ratio"] is None and tt["cache_bytes"] == dense["cache_bytes"] == 0
    for r in results:
        _check_metrics(r)
        assert r["steps"] == 2 and r["examples_per_second"] > 0
    rows = R.comparison_rows(results)
    assert [r["label"] for r in rows] == ["dense", "tt"]
    T.write_outputs(results, str(tmp_path / "out"))
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in saved] == ["dense", "tt"]
    assert saved[1]["curve"] == tt["curve"] and saved[1]["auc"] == tt["auc"]


def _run_cli(args, timeout):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "examples.dlrm.train"] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_cli_on_the_real_sample(tmp_path):
    if not os.path.exists(criteo_sample_path()):
        pytest.skip(f"the Criteo sample is absent ({criteo_sample_path()})")
    _run_cli(["--data=criteo_sample", "--model=both", "--table_scale=1000", "--steps=4",
              "--steps_per_epoch=2", "--batch_size=32", "--eval_batch_size=512", "--tt_rank=4",
              "--verbose=0", f"--out_dir={tmp_path / 'out'}", f"--model_dir={tmp_path / 'md'}",
              f"--export_dir={tmp_path / 'export'}"], timeout=600)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in results] == ["dense", "tt"]
    for r in results:
        assert r["steps"] == 4 and r["export_custom_ops"] == []
        assert r["export_path"] == str(tmp_path / "export" / r["label"] / "4")
        assert (tmp_path / "export" / r["label"] / "4" / "saved_model.pb").exists()
        _check_metrics(r)
    assert results[1]["tt_rank"] == 4 and results[1]["tt_tables"] == 3
    assert (tmp_path / "out" / "training_curves.png").exists()


def test_cli_report_only(tmp_path):
    _run_cli(["--report_only", "--cache_size=100", f"--out_dir={tmp_path}"], timeout=300)
    saved = json.loads((tmp_path / "size_report.json").read_text())
    assert saved == json.loads(json.dumps(R.size_report(cache_size=100)))
    assert saved[0]["cache_size"] == 100 and saved[0]["configs"][0]["cache_bytes"] > 0
