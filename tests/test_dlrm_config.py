"""examples/dlrm/config.py: the trainer's options, their absl flags and the runs a config
plans; the Criteo sample's path. No TFRS needed: runs under both Kerases."""

import dataclasses
import os

import numpy as np
import pytest
from absl import app, flags

import tt_keras
from tt_keras.cache_budget import cache_row_bytes, split_cache_budget

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import cache_plan, sample  # noqa: E402
from examples.dlrm import config as C  # noqa: E402
from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import train as T  # noqa: E402

# The trainer's flags and defaults as they were before the options became dataclass fields
# (README.md and examples/dlrm/README.md quote commands with them): none may change.
LEGACY_FLAGS = {
    "data": "synthetic", "model": "both", "synthetic_sizes": "kaggle", "table_scale": 1.0,
    "max_table_size": 0, "embedding_dim": 0, "tt_tables": 3, "tt_rank": 16, "tt_cores": 3,
    "cache_size": 0, "cache_warmup_steps": 100, "cache_refresh_steps": 0,
    "tt_initializer": "sampled_gaussian", "lookup_backend": "auto", "batch_size": 128,
    "steps": 1000, "learning_rate": 0.1, "optimizer": "sgd", "steps_per_epoch": 200,
    "eval_examples": 50000, "periodic_eval_examples": 8192, "eval_batch_size": 1024,
    "eval_every": 10, "shuffle_buffer": 0, "seed": 0, "zipf_a": 1.05, "model_dir": "",
    "export_dir": "", "export_format": "raw", "export_portable": True, "out_dir": "runs/dlrm",
    "report_only": False, "init_ablation": False, "verbose": 1,
}

# Flags added since, with defaults that keep the earlier behaviour.
ADDED_FLAGS = {
    "cache_budget_mb": 0.0, "cache_coverage": 0.0, "cache_plan_batches": 1000,
    "cache_plan_min_count": 2, "cache_counter_multiple": 4, "cache_prefill": False,
    "cache_fold_sweeps": 1, "tt_init_scale": 1.0,
    "tt_optimizer": "", "tt_learning_rate": 0.0, "teacher": "independent", "id_order": "hashed",
    "teacher_clusters": 1000, "teacher_cluster_share": 0.75, "init_from": "",
    "cache_compression": 0.0,
    "export_max_batch_size": 65536, "skip_bad_lines": False,
    "distribution": "none", "eval_fold": -1,
}


def _flags(argv=()):
    fv = flags.FlagValues()
    C.define_flags(fv)
    fv(["train"] + list(argv))
    return fv


def test_flags_keep_their_names_and_defaults():
    fv = _flags()
    for name, default in LEGACY_FLAGS.items():
        assert fv[name].value == default, name
    assert fv["bottom_mlp"].value == ["512", "256", "64"] and fv["top_mlp"].value == ["512", "256"]
    assert set(fv) == set(LEGACY_FLAGS) | set(ADDED_FLAGS) | {"bottom_mlp", "top_mlp"}
    for name, default in ADDED_FLAGS.items():
        assert fv[name].value == default, name


def test_each_flag_is_its_field():
    """The flag's default and help are the field's: written once, in the dataclass."""
    fv = _flags()
    for section in C.Config.sections().values():
        for field in C.option_fields(section):
            flag = fv[field.name]
            default = flag.default
            if isinstance(field.default, tuple):
                default = tuple(type(field.default[0])(v) for v in default)
            assert default == field.default, field.name
            assert flag.help.endswith(field.metadata["help"]), field.name  # enums: "<a|b>: "


def test_defaults_round_trip():
    assert C.config_from_flags(_flags()) == C.Config()
    assert C.config_from_flags(_flags(C.config_to_argv(C.Config()))) == C.Config()


def test_changed_config_round_trips_through_argv():
    changed = C.Config().override(
        data="a.tsv,b.tsv", model="tt", synthetic_sizes="terabyte", table_scale=2.5,
        max_table_size=77, embedding_dim=32, tt_tables=7, tt_rank=8, tt_cores=4,
        cache_size=10, bottom_mlp=(32, 16), top_mlp=(), lookup_backend="reference",
        optimizer="adam", learning_rate=0.01, export_portable=False, init_ablation=True,
        out_dir="", verbose=2)
    argv = C.config_to_argv(changed)
    assert "--noexport_portable" in argv and "--bottom_mlp=32,16" in argv
    assert C.config_from_flags(_flags(argv)) == changed
    assert changed.run.model == "tt" and changed.model.tt_cores == 4
    assert changed.training.optimizer == "adam" and changed.output.export_portable is False
    assert changed.options()["top_mlp"] == ()


def test_model_section_is_the_dlrm_config():
    from_flags = C.config_from_flags(_flags(["--synthetic_sizes=terabyte", "--table_scale=10",
                                             "--max_table_size=500000", "--tt_rank=4"]))
    model = from_flags.dlrm_config()
    assert model.table_sizes == D.scale_table_sizes(D.TERABYTE_TABLE_SIZES, 10, 500000)
    assert model.embedding_dim == 64 and model.tt_rank == 4 and model.tt_tables == 3
    assert from_flags.override(embedding_dim=8).dlrm_config().embedding_dim == 8
    assert C.Config().dlrm_config().table_sizes == D.KAGGLE_TABLE_SIZES


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown options.*'stepz'"):
        C.Config().override(stepz=3)
    with pytest.raises(ValueError, match="optimizer must be one of .* got 'rmsprop'"):
        C.TrainingConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        C.Config().override(batch_size=0)
    with pytest.raises(ValueError, match=r"bottom_mlp must be >= 1, got \(8, 0\)"):
        C.DLRMConfig(bottom_mlp=(8, 0))
    with pytest.raises(ValueError, match="tt_tables must be in"):
        C.DLRMConfig(tt_tables=27)
    with pytest.raises(flags.IllegalFlagValueError):
        _flags(["--optimizer=rmsprop"])
    with pytest.raises(ValueError, match="--top_mlp: .* not a list of int"):
        C.config_from_flags(_flags(["--top_mlp=8,x"]))
    with pytest.raises(ValueError, match="eval_every must be >= 2, got 1"):
        C.config_from_flags(_flags(["--eval_every=1"]))


def test_sections_are_frozen():
    cfg = C.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.steps = 5  # type: ignore[misc]


def test_planned_runs():
    subdir, runs = T.planned_runs(C.Config().override(table_scale=100))
    assert subdir == "" and [label for label, _ in runs] == ["tt", "dense"]
    assert runs[0][1].tt_tables == 3 and runs[1][1].tt_tables == 0
    assert runs[0][1].table_sizes == D.scale_table_sizes(D.KAGGLE_TABLE_SIZES, 100)
    subdir, runs = T.planned_runs(C.Config().override(init_ablation=True, tt_tables=7))
    assert subdir == "init_ablation"
    assert [(label, m.tt_initializer, m.tt_tables) for label, m in runs] == [
        (init, init, 7) for init in C.INIT_ABLATION]
    _, runs = T.planned_runs(C.Config().override(model="dense", tt_tables=0))
    assert [label for label, _ in runs] == ["dense"]
    for bad in (dict(tt_tables=0), dict(model="tt", tt_tables=0),
                dict(init_ablation=True, tt_tables=0)):
        with pytest.raises(app.UsageError, match="--tt_tables > 0"):
            T.planned_runs(C.Config().override(**bad))


def test_criteo_sample_path(monkeypatch, tmp_path):
    monkeypatch.delenv(sample.ENV_VAR, raising=False)
    default = os.path.normpath(os.path.join(REPO, "..", "shared", "data",
                                            "criteo_kaggle_sample.tsv"))
    assert sample.criteo_sample_path() == default
    monkeypatch.setenv(sample.ENV_VAR, str(tmp_path / "rows.tsv"))
    assert sample.criteo_sample_path() == str(tmp_path / "rows.tsv")
    assert C.DataConfig(data="criteo_sample").paths == [str(tmp_path / "rows.tsv")]
    assert C.DataConfig(data="a.tsv,,b.tsv").paths == ["a.tsv", "b.tsv"]


def _compression_config(**changes):
    sizes = [max(1, n // 1000) for n in D.TABLE_SIZES["kaggle"]]
    return C.DLRMConfig(table_sizes=sizes, embedding_dim=16, tt_tables=5, tt_rank=4,
                        cache_counter_multiple=1, **changes)


@pytest.mark.parametrize("ratio", [8.0, 20.0])
def test_cache_compression_budget_meets_the_ratio(ratio):
    """Caches split from the compression budget, built as the DLRM builds them, leave all
    embedding memory (dense tables, TT layers with their caches) within one cached row per
    table of dense / ratio."""
    config = _compression_config(cache_compression=ratio)
    rng = np.random.default_rng(0)
    counts = {f: rng.zipf(1.2, size=config.table_sizes[D.CAT_FEATURES.index(f)]).clip(max=10**6)
              for f in config.tt_features}
    row_bytes = cache_row_bytes(16, counter_multiple=1)
    sizes = split_cache_budget(counts, row_bytes,
                               budget_bytes=cache_plan.compression_budget_bytes(config),
                               min_count=1)
    total = 0
    for f, n in zip(D.CAT_FEATURES, config.table_sizes):
        if f in config.tt_features:
            layer = tt_keras.TTEmbedding(n, 16, tt_rank=4, num_cores=config.tt_cores,
                                         **({"cache_size": sizes[f], "cache_counter_size":
                                             sizes[f]} if sizes[f] else {}))
            total += layer.embedding_bytes
        else:
            total += 4 * 16 * n
    dense = 4 * 16 * sum(config.table_sizes)
    assert total <= dense / ratio
    assert total > dense / ratio - len(config.tt_features) * row_bytes


def test_cache_compression_is_refused_when_it_cannot_be_met():
    with pytest.raises(ValueError, match="cache_compression=500"):
        cache_plan.compression_budget_bytes(_compression_config(cache_compression=500.0))
    with pytest.raises(ValueError, match="cache_budget_mb .* or cache_compression"):
        _compression_config(cache_compression=50.0, cache_budget_mb=1.0)
    with pytest.raises(ValueError, match="must exceed 1, got 0.5"):
        _compression_config(cache_compression=0.5)
