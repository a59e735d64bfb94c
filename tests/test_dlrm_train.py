"""examples/dlrm/train.py: resume, reports, and one end-to-end CLI run (legacy Keras only)."""

import json
import os
import subprocess
import sys

import pytest

try:
    import tensorflow_recommenders as tfrs  # noqa: F401
except ImportError as e:  # Keras 3: TFRS 0.7.7 needs TF_USE_LEGACY_KERAS=1
    pytest.skip(f"tensorflow_recommenders cannot import here ({e}); the DLRM example needs "
                "TF_USE_LEGACY_KERAS=1", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from examples.dlrm import model as M  # noqa: E402
from examples.dlrm import train as T  # noqa: E402

SAMPLE = os.path.join(REPO, "..", "shared", "data", "criteo_kaggle_sample.tsv")


def _settings(tmp_path, **changes):
    base = dict(data="synthetic", batch_size=16, steps=3, steps_per_epoch=2,
                eval_examples=64, periodic_eval_examples=32, eval_batch_size=32,
                model_dir=str(tmp_path / "model_dir"), verbose=0)
    base.update(changes)
    return T.TrainSettings(**base)


@pytest.mark.parametrize("kind", ["tt", "dense"])
def test_resume_continues_the_step_count(tmp_path, kind):
    cfg = M.tiny_config(tt_tables=3 if kind == "tt" else 0)
    settings = _settings(tmp_path)
    data = T.DataSource(settings, cfg.table_sizes)
    first = T.train_model(kind, cfg, settings, data)
    assert first["steps"] == 3 and first["trained_steps_this_run"] == 3
    assert first["curve"]["steps"] == [1, 2, 3]
    ckpt_dir = tmp_path / "model_dir" / kind / "checkpoints"
    assert (ckpt_dir / "checkpoint").exists()
    assert any(p.name.startswith("ckpt-3.") for p in ckpt_dir.iterdir())

    settings.steps = 5
    second = T.train_model(kind, cfg, settings, data)
    assert second["steps"] == 5 and second["trained_steps_this_run"] == 2
    assert second["curve"]["steps"] == [4, 5]
    assert any(p.name.startswith("ckpt-5.") for p in ckpt_dir.iterdir())

    third = T.train_model(kind, cfg, settings, data)  # already there: evaluate only
    assert third["steps"] == 5 and third["trained_steps_this_run"] == 0
    for r in (first, second, third):
        for key in ("auc", "logloss", "accuracy"):
            assert 0.0 <= r[key] <= 1.0 or key == "logloss"
    assert (tmp_path / "model_dir" / kind / "tensorboard" / "train").is_dir()


def test_size_report_matches_the_spec():
    text = T.size_report()
    assert "Kaggle" in text and "Terabyte" in text
    assert "33,762,577 rows" in text and "540,201,232 embedding parameters" in text
    # The spec's example: the largest Kaggle table at rank 32 -> 495,360 params, 327x.
    assert "(200, 220, 250)" in text and "495,360 params (327x)" in text
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 * 3 * 4  # (kaggle, terabyte) x (3, 5, 7 tables) x 4 ranks


def test_comparison_table_and_plot(tmp_path):
    cfg = M.tiny_config()
    settings = _settings(tmp_path, model_dir="", steps=2)
    data = T.DataSource(settings, cfg.table_sizes)
    results = T.run_comparison([("tt", cfg), ("dense", cfg.replace(tt_tables=0))], settings,
                               data, str(tmp_path / "out"))
    assert [r["label"] for r in results] == ["dense", "tt"]
    assert results[1]["embedding_bytes"] < results[0]["embedding_bytes"]
    assert results[1]["compression_ratio"] > 1.0 and results[1]["tt_tables_ratio"] > 1.0
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["label"] for r in saved} == {"dense", "tt"}
    table = T.comparison_table(results)
    assert "dense" in table and "tt" in table


def test_cli_on_the_real_sample(tmp_path):
    if not os.path.exists(SAMPLE):
        pytest.skip(f"the Criteo sample is absent ({os.path.normpath(SAMPLE)})")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "examples.dlrm.train", f"--data={SAMPLE}", "--model=both",
           "--table_scale=1000", "--steps=4", "--steps_per_epoch=2", "--batch_size=32",
           "--eval_batch_size=512", "--tt_rank=4", "--verbose=0",
           f"--out_dir={tmp_path / 'out'}", f"--model_dir={tmp_path / 'md'}",
           f"--export_dir={tmp_path / 'export'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Dense vs TT" in proc.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in results] == ["dense", "tt"]
    for r in results:
        assert r["steps"] == 4 and r["export_custom_ops"] == []
        assert (tmp_path / "export" / r["label"] / "4" / "saved_model.pb").exists()
    assert (tmp_path / "out" / "training_curves.png").exists()


def test_cli_report_only():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "examples.dlrm.train", "--report_only"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Terabyte" in proc.stdout and "ratio (TT tables)" in proc.stdout
