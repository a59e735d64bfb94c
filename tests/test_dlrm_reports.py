"""examples/dlrm/reports.py and plots.py: the data of the size report and the comparison,
then their formatters (no TFRS needed: runs under both Kerases)."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tt_keras import tt_math  # noqa: E402

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import plots  # noqa: E402
from examples.dlrm import reports as R  # noqa: E402


@pytest.fixture(scope="module")
def report():
    return R.size_report()


def _largest(sizes, k):
    return sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))[:k]


def test_size_report_matches_the_spec(report):
    kaggle, terabyte = report
    assert (kaggle["dataset"], terabyte["dataset"]) == ("kaggle", "terabyte")
    assert kaggle["rows"] == 33_762_577 and kaggle["dim"] == 16
    assert kaggle["dense_params"] == 540_201_232 and kaggle["dense_bytes"] == 4 * 540_201_232
    assert terabyte["rows"] == 49_126_297 and terabyte["dim"] == 64
    # The README's example: the largest Kaggle table at rank 32 -> 495,360 params, 327x.
    big = kaggle["largest"]
    assert (big["feature"], big["rows"]) == ("C3", 10_131_227)
    assert big["row_shape"] == (200, 220, 250) and big["col_shape"] == (2, 2, 4)
    assert big["params"] == 495_360 and round(big["ratio"]) == 327
    configs = {(d["dataset"], r["tt_tables"], r["rank"]): r for d in report for r in d["configs"]}
    assert len(configs) == 2 * 3 * 4  # (kaggle, terabyte) x (3, 5, 7 tables) x 4 ranks
    # The paper's headline ratios: Kaggle 7 tables at rank 32: 117x; Terabyte at rank 8: 112x.
    assert configs["kaggle", 7, 32]["ratio_all"] == pytest.approx(117.4, abs=0.05)
    assert configs["terabyte", 7, 8]["ratio_all"] == pytest.approx(112.5, abs=0.05)


def test_size_report_rows_against_tt_math(report):
    """Without a cache, a TT table's bytes are 4 * its TT shape's parameters."""
    for d in report:
        sizes = D.TABLE_SIZES[d["dataset"]]
        dim = d["dim"]
        for r in d["configs"]:
            tt = _largest(sizes, r["tt_tables"])
            params = sum(tt_math.TTShape.create(sizes[i], dim, r["rank"]).num_params
                         for i in tt)
            other = (sum(sizes) - sum(sizes[i] for i in tt)) * dim
            assert (r["tt_params"], r["other_params"], r["cache_bytes"]) == (params, other, 0)
            assert r["total_bytes"] == 4 * (params + other)
            assert r["ratio_all"] == pytest.approx(sum(sizes) * dim / (params + other))
            assert r["ratio_tt"] == pytest.approx(sum(sizes[i] for i in tt) * dim / params)


def test_size_report_counts_the_cache(report):
    cached = R.size_report(tt_tables_options=(3, 7), ranks=(16,), cache_size=1000)
    plain = {(d["dataset"], r["tt_tables"]): r for d in report for r in d["configs"]
             if r["rank"] == 16}
    for d in cached:
        assert d["cache_size"] == 1000
        for r in d["configs"]:
            base = plain[d["dataset"], r["tt_tables"]]
            assert r["tt_params"] == base["tt_params"]
            # At least the cached rows themselves (float32), on each TT table.
            assert r["cache_bytes"] >= r["tt_tables"] * 1000 * d["dim"] * 4
            assert r["total_bytes"] == base["total_bytes"] + r["cache_bytes"]
            assert r["ratio_all"] < base["ratio_all"]


def test_size_layers_stay_unbuilt():
    layer = R.tt_layer(10_131_227, 16, 32, 3, cache_size=500)
    assert layer.cache_bytes > 500 * 16 * 4
    assert layer.embedding_bytes == 4 * 495_360 + layer.cache_bytes
    assert not layer.built and not layer.weights


def test_format_size_report(report):
    lines = R.format_size_report(report).strip().splitlines()
    # Per dataset: the dense line, the header, 12 rows, the largest table.
    assert len([line for line in lines if line.strip()]) == 2 * (1 + 1 + 12 + 1)
    assert "540,201,232 embedding parameters" in lines[0]


def _result(label, tt_tables, peak, maxrss=900.0, steps=4):
    """A results dict shaped like reports.model_result's."""
    return {"label": label, "tt_tables": tt_tables, "tt_rank": 8 if tt_tables else None,
            "cache_size": 0 if tt_tables else None, "steps": steps, "auc": 0.7, "logloss": 0.5,
            "accuracy": 0.75, "embedding_bytes": 1e6 if tt_tables else 4e6,
            "compression_ratio": 4.0 if tt_tables else 1.0,
            "tt_tables_ratio": 100.0 if tt_tables else None, "examples_per_second": 1000.0,
            "phase_peak_rss_mb": peak, "process_maxrss_mb": maxrss,
            "curve": {"steps": list(range(1, steps + 1)), "loss": [0.7, 0.6, 0.55, 0.5][:steps],
                      "eval_steps": [2, 4], "eval_auc": [0.6, 0.7],
                      "eval_logloss": [0.6, 0.5]}}


def test_comparison_rows_and_table():
    results = [_result("dense", 0, peak=None), _result("tt", 3, peak=300.0)]
    rows = R.comparison_rows(results)
    assert [r["label"] for r in rows] == ["dense", "tt"]
    assert rows[0]["peak_rss_mb"] == 900.0  # no phase peak: the process maxrss
    assert rows[1]["peak_rss_mb"] == 300.0
    assert rows[1]["tt_tables_ratio"] == 100.0 and rows[0]["tt_tables_ratio"] is None
    assert "curve" not in rows[0]
    lines = R.format_comparison(rows).splitlines()
    assert len(lines) == 2 + len(rows) + 1  # header, rule, rows, note
    assert lines[2].split()[:4] == ["dense", "0", "-", "-"]
    assert lines[3].split()[:4] == ["tt", "3", "8", "0"]


def test_format_bytes():
    assert [R.format_bytes(b) for b in (12, 1500, 2.5e6, 2.16e9)] == [
        "12 B", "1.50 KB", "2.50 MB", "2.16 GB"]


def test_plot_curves(tmp_path):
    results = [_result("dense", 0, None), _result("tt", 3, 300.0, steps=1)]
    path = plots.plot_curves(results, str(tmp_path / "sub" / "curves.png"), window=2)
    assert path == str(tmp_path / "sub" / "curves.png")
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000
