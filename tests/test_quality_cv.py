"""The quality study's cross-validation (benchmarks/quality.py --folds, quality_report.py):
folds take the place of seeds in the pairing, on fabricated run results (no training); the
flags that make no sense with it are refused. No TFRS needed."""

import json
import math
import os
import statistics

import pytest
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import quality as Q  # noqa: E402
from benchmarks import quality_report as R  # noqa: E402
from examples.dlrm.config import RECOMMENDED_TT  # noqa: E402

FLAGS = flags.FLAGS


@pytest.fixture(name="parse")
def _parse():
    """Parses the study's flags (global: the study module defines them) and unparses them
    after the test."""
    def parse(*argv):
        FLAGS.unparse_flags()
        FLAGS(["quality", *argv])
        return Q.study_settings()

    yield parse
    FLAGS.unparse_flags()


def _result(auc, logloss, compression=1.0):
    return {"auc": auc, "logloss": logloss, "embedding_bytes": 1000 / compression,
            "cache_bytes": 0, "compression_ratio": compression, "examples_per_second": 100.0}


# Fold j: dense AUC varies a lot between folds, the TT gap little, so only a pairing by fold
# gives the small interval; fold 3 of TT has no dense run under adagrad.
DENSE_AUC = [0.70, 0.74, 0.68, 0.72, 0.76]
TT_GAP = [-0.002, 0.001, -0.003, 0.000, -0.001]


def _fabricated_runs():
    runs = []
    for optimizer in ("sgd", "adagrad"):
        for j in reversed(range(5)):  # the order of the runs must not matter
            if not (optimizer == "adagrad" and j == 3):
                runs.append({"config": "dense", "optimizer": optimizer, "replicate": j,
                             "result": _result(DENSE_AUC[j], 0.5)})
            runs.insert(0, {"config": "tt", "optimizer": optimizer, "replicate": j,
                            "result": _result(DENSE_AUC[j] + TT_GAP[j], 0.5 - TT_GAP[j], 100)})
    return runs


def _check_rows(rows):
    by = {(r["config"], r["optimizer"]): r for r in rows}
    sgd, adagrad = by[("tt", "sgd")], by[("tt", "adagrad")]
    assert sgd["replicates"] == [0, 1, 2, 3, 4] and adagrad["replicates"] == [0, 1, 2, 4]
    for row, folds in ((sgd, [0, 1, 2, 3, 4]), (adagrad, [0, 1, 2, 4])):
        gaps = [TT_GAP[j] for j in folds]
        half = {5: 2.776, 4: 3.182}[len(folds)] * statistics.stdev(gaps) / math.sqrt(len(gaps))
        assert row["auc_gap"] == pytest.approx(statistics.mean(gaps), abs=1e-12)
        assert row["auc_gap_ci"] == pytest.approx(half, rel=1e-3)
        assert row["logloss_gap"] == pytest.approx(-statistics.mean(gaps), abs=1e-12)
        assert row["replicate_auc_gap"] == pytest.approx(gaps, abs=1e-12)
        assert row["auc"] == pytest.approx(statistics.mean(DENSE_AUC[j] + TT_GAP[j]
                                                           for j in folds))
        assert row["compression"] == 100
    assert by[("dense", "sgd")]["auc"] == pytest.approx(statistics.mean(DENSE_AUC))
    assert by[("dense", "sgd")]["auc_gap"] == 0.0
    return by


def test_folds_are_paired_like_seeds():
    rows = R.summarize(_fabricated_runs())
    _check_rows(rows)
    table = R.format_replicates(rows, "fold")
    assert "fold 0" in table and "fold 4" in table
    tt_gap_line = next(line for line in table.splitlines() if line.startswith("tt gap")
                       and "sgd" in line)
    assert "-0.0030" in tt_gap_line and "+0.0010" in tt_gap_line


def test_cv_settings_and_runs(parse):
    settings = parse("--data=criteo_sample", "--folds=5")
    assert (settings["grid"], settings["steps"], settings["batch_size"],
            settings["table_scale"], settings["seeds"], settings["out_dir"]) == (
        "cv", 400, 128, 100.0, [0], "runs/quality_cv")
    runs = Q.planned_runs(settings)
    assert len(runs) == 5 * 2 * 2  # folds x optimizers x {dense, recommended}
    for name, optimizer, fold, options in runs:
        assert options["eval_every"] == 5 and options["eval_fold"] == fold
        assert options["seed"] == 0 and options["data"] == "criteo_sample"
        assert options["steps_per_epoch"] == 80
        assert "eval_examples" not in options and "teacher" not in options
        assert Q.run_id(name, optimizer, fold, "fold") == f"{name}-{optimizer}-f{fold}"
    tt = next(o for n, _, _, o in runs if n == "recommended")
    # RECOMMENDED_TT, with only its plan sized to the run.
    changed = {k for k in RECOMMENDED_TT if tt[k] != RECOMMENDED_TT[k]}
    assert changed == {"cache_plan_batches"}
    assert tt["cache_plan_batches"] == 72
    assert (tt["cache_warmup_steps"], tt["cache_prefill"]) == (0, True)

    # Flags given win over the cross-validation's defaults.
    settings = parse("--data=a.tsv,b.tsv", "--folds=3", "--steps=100", "--table_scale=10",
                     "--seeds=7", "--optimizers=sgd", "--out_dir=x")
    runs = Q.planned_runs(settings)
    assert [(n, f) for n, _, f, _ in runs] == [(n, f) for f in range(3)
                                               for n in ("dense", "recommended")]
    assert {(o["steps"], o["table_scale"], o["seed"], o["data"]) for *_, o in runs} == {
        (100, 10.0, 7, "a.tsv,b.tsv")}
    assert settings["out_dir"] == "x"


def test_the_recommended_grid_is_the_measured_pick():
    # RECOMMENDED_TT is screen4's measured configuration, its budget derived from the 100x
    # target (19.5 MB at Kaggle sizes) instead of written out.
    measured = dict(Q.GRIDS["screen4"]["tt10_r8_b19.5_m1_prefill"])
    recommended = dict(Q.GRIDS["recommended"]["recommended"])
    assert measured.pop("cache_budget_mb") == 19.5
    assert recommended.pop("cache_compression") == 100.0
    assert measured == recommended == {k: v for k, v in RECOMMENDED_TT.items()
                                       if k != "cache_compression"}


def test_the_seed_study_is_unchanged(parse):
    settings = parse("--grid=recommended", "--seeds=0,1", "--optimizers=sgd")
    runs = Q.planned_runs(settings)
    assert [(n, s) for n, _, s, _ in runs] == [("dense", 0), ("recommended", 0),
                                               ("dense", 1), ("recommended", 1)]
    options = runs[1][3]
    assert options["data"] == "synthetic" and options["eval_examples"] == 500_000
    assert "eval_fold" not in options and options["steps_per_epoch"] == 1000
    assert Q.run_id("dense", "sgd", 1) == "dense-sgd-s1"  # old run directories resume


def test_the_frequency_screen_trains_a_dense_model_on_frequency_ids(parse):
    settings = parse("--grid=screen5", "--seeds=0", "--optimizers=sgd",
                     "--configs=dense_freq,tt7_r32_freq")
    runs = {name: options for name, _, _, options in Q.planned_runs(settings)}
    assert list(runs) == ["dense", "dense_freq", "tt7_r32_freq"]
    assert runs["dense"]["model"] == runs["dense_freq"]["model"] == "dense"
    assert "id_order" not in runs["dense"]
    assert runs["dense_freq"]["id_order"] == runs["tt7_r32_freq"]["id_order"] == "frequency"
    assert runs["tt7_r32_freq"]["model"] == "tt" and runs["tt7_r32_freq"]["tt_rank"] == 32


@pytest.mark.parametrize("argv, message", [
    (["--folds=5"], "--folds=5 cross-validates over the lines of files: give "
                    "--data=criteo_sample"),
    (["--data=criteo_sample"], "--data=criteo_sample is cross-validated: give --folds=k"),
    (["--data=criteo_sample", "--folds=1"], "got --folds=1"),
    (["--data=criteo_sample", "--folds=5", "--teacher=clustered"],
     "--teacher is the synthetic study's"),
    (["--data=criteo_sample", "--folds=5", "--eval_examples=1000"],
     "--eval_examples is the synthetic study's"),
    (["--data=criteo_sample", "--folds=5", "--quick"], "--quick is the synthetic study's"),
    (["--data=criteo_sample", "--folds=5", "--seeds=0,1"], "pairs by fold with one seed"),
])
def test_what_cross_validation_refuses(parse, argv, message):
    with pytest.raises(app.UsageError, match=message):
        parse(*argv)


def test_cv_summary_from_result_files(parse, tmp_path, capsys):
    """The study's summary over results.json files as the trainer writes them."""
    settings = parse("--data=criteo_sample", "--folds=5", f"--out_dir={tmp_path}")
    for name, optimizer, fold, _ in Q.planned_runs(settings):
        if (name, optimizer, fold) == ("dense", "adagrad", 3):
            continue
        result = (_result(DENSE_AUC[fold], 0.5) if name == "dense" else
                  _result(DENSE_AUC[fold] + TT_GAP[fold], 0.5 - TT_GAP[fold], 100))
        run_dir = tmp_path / "runs" / Q.run_id(name, optimizer, fold, "fold")
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps([result]))
    rows = Q.summarize(settings, str(tmp_path))
    by = _check_rows([dict(r, config="tt" if r["config"] == "recommended" else r["config"])
                      for r in rows])
    assert by[("tt", "sgd")]["replicates"] == [0, 1, 2, 3, 4]
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["settings"]["folds"] == 5
    assert {r["fold"] for r in saved["runs"]} == set(range(5))
    out = capsys.readouterr().out
    assert "5-fold cross-validation on criteo_sample" in out and "over folds" in out
    assert os.path.exists(tmp_path / "pareto.png")
