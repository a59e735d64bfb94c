"""examples/dlrm/init_from.py: the DLRM trainer's --init_from (legacy Keras only).

A tiny dense DLRM is trained and checkpointed; the TT model started from it is checked
against the oracle: the dense tables rebuilt with NumPy from its cores. At full rank they are
the checkpoint's tables and the TT model predicts what the dense one does; at a lower rank the
TT-SVD error bound holds. The checkpoint's tables and MLPs are read with TensorFlow's
checkpoint reader, not through init_from."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import app

# TFRS 0.7.7 imports only under legacy Keras (TF_USE_LEGACY_KERAS=1).
pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tt_keras import oracle  # noqa: E402

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import init_from, training  # noqa: E402
from examples.dlrm import model as M  # noqa: E402
from examples.dlrm import reports as R  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm import train as T  # noqa: E402
from examples.dlrm.config import Config  # noqa: E402
from tests.tolerance import assert_reordered_close  # noqa: E402
from tests.tt_svd_bound import unfolding_tails  # noqa: E402

DENSE_STEPS = 6
FULL_RANK = 64  # above every unfolding rank of the tiny TT tables (at most 40)
TABLE_KEY = "model/_embedding_layer/tables/{}/embeddings/.ATTRIBUTES/VARIABLE_VALUE"


def _config(model_dir, **changes):
    base = dict(data="synthetic", batch_size=16, steps=DENSE_STEPS, steps_per_epoch=3,
                eval_examples=64, periodic_eval_examples=32, eval_batch_size=32,
                model_dir=str(model_dir), out_dir="", verbose=0)
    base.update(changes)
    return Config.from_options(base)


def _source(config):
    return S.make_source(config.data, M.tiny_config().table_sizes, config.training.seed)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """A --model_dir holding a trained tiny dense DLRM (dense/checkpoints)."""
    model_dir = tmp_path_factory.mktemp("dense_run")
    config = _config(model_dir, learning_rate=0.5)
    training.train_model("dense", M.tiny_config(tt_tables=0), config, _source(config))
    return model_dir


def _checkpoint_arrays(dense_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        str(dense_dir / "dense" / "checkpoints")))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def _initialized(dense_dir, tmp_path, **model_changes):
    """A TT model of the tiny config (model_changes applied) initialised from dense_dir."""
    config = _config(tmp_path, init_from=str(dense_dir))
    model = M.build_model(M.tiny_config(**model_changes), name="dlrm_tt_init")
    return model, init_from.initialize(model, config, _source(config)), config


def _rebuilt(layer):
    return oracle.dense_table([c.numpy() for c in layer.cores], layer.input_dim)


def _held_out_batch(config):
    features, _ = next(iter(_source(config).held_out(32)))
    return features


def test_full_rank_reproduces_the_dense_model(dense_dir, tmp_path):
    model, init, config = _initialized(dense_dir, tmp_path, tt_rank=FULL_RANK)
    arrays = _checkpoint_arrays(dense_dir)
    for name in D.CAT_FEATURES:
        table = arrays[TABLE_KEY.format(name)]
        layer = model.embeddings.tables[name]
        if model.embeddings.is_tt(name):
            # The ranks are the layer's: TT-SVD's lower ones padded with zeros up to them.
            assert [c.shape for c in layer.cores] == [tuple(s) for s in
                                                      layer.tt_shape.core_shapes]
            assert layer.tt_shape.inner_ranks == (FULL_RANK, FULL_RANK)
            np.testing.assert_allclose(_rebuilt(layer), table, rtol=0,
                                       atol=2e-6 * np.abs(table).max())
        else:
            np.testing.assert_array_equal(layer.get_weights()[0], table)
    assert [t["feature"] for t in init["tables"]] == list(model.config.tt_features)
    assert all(t["relative_error"] < 1e-5 for t in init["tables"]), init["tables"]
    for stack in ("_bottom_stack", "_top_stack"):
        for i, layer in enumerate(getattr(model, stack)._sublayers):
            for part, value in zip(("kernel", "bias"), layer.get_weights()):
                key = f"model/{stack}/_sublayers/{i}/{part}/.ATTRIBUTES/VARIABLE_VALUE"
                np.testing.assert_array_equal(value, arrays[key])

    dense = M.build_model(M.tiny_config(tt_tables=0))
    tf.train.Checkpoint(model=dense).read(
        tf.train.latest_checkpoint(str(dense_dir / "dense" / "checkpoints"))).expect_partial()
    features = _held_out_batch(config)
    assert_reordered_close(model(features, training=False).numpy(),
                           dense(features, training=False).numpy())
    for key in ("auc", "logloss", "accuracy"):
        assert_reordered_close(init["tt_svd"][key], init["dense"][key])
    assert init["dense_steps"] == DENSE_STEPS


@pytest.mark.parametrize("tt_rank", [2, 5])
def test_lower_rank_error_is_within_the_tt_svd_bound(dense_dir, tmp_path, tt_rank):
    model, init, _ = _initialized(dense_dir, tmp_path, tt_rank=tt_rank)
    arrays = _checkpoint_arrays(dense_dir)
    errors = {t["feature"]: t["relative_error"] for t in init["tables"]}
    for name in model.config.tt_features:
        layer = model.embeddings.tables[name]
        table = arrays[TABLE_KEY.format(name)].astype(np.float64)
        tails, _, padded = unfolding_tails(table, layer.tt_shape)
        rebuilt = oracle.dense_table([c.numpy() for c in layer.cores])
        error = np.linalg.norm(rebuilt - padded)
        assert error <= math.sqrt(sum(e * e for e in tails)) * (1 + 1e-5) + 1e-6, name
        assert error >= max(tails) * (1 - 1e-5) - 1e-6, name  # no TT of these ranks does better
        assert max(tails) > 1e-2 * np.linalg.norm(table), name  # the truncation loses something
        # The reported error is the oracle's over the real rows.
        real = np.linalg.norm(rebuilt[: len(table)] - table) / np.linalg.norm(table)
        assert errors[name] == pytest.approx(real, rel=1e-4), name


@pytest.mark.parametrize("changes, flag, values", [
    (dict(embedding_dim=4), "--embedding_dim", ("[8]", "D=4")),
    (dict(table_sizes=(40,) + M.tiny_config().table_sizes[1:]), "table sizes", ("C1: 37 vs 40",)),
    (dict(bottom_mlp=(32,)), "--bottom_mlp", ("[16, 8]", "[32, 8]")),
    (dict(top_mlp=(16, 4)), "--top_mlp", ("[16, 1]", "[16, 4, 1]")),
])
def test_flag_mismatch_names_the_flag_and_the_values(dense_dir, tmp_path, changes, flag, values):
    with pytest.raises(init_from.InitFromError) as raised:
        _initialized(dense_dir, tmp_path, **changes)
    message = str(raised.value)
    assert message.startswith(flag), message
    for value in values:
        assert value in message, message


def test_checkpoint_paths(dense_dir, tmp_path):
    checkpoints = dense_dir / "dense" / "checkpoints"
    latest = tf.train.latest_checkpoint(str(checkpoints))
    for path in (dense_dir, dense_dir / "dense", checkpoints, latest):
        assert init_from.find_checkpoint(str(path)) == latest
    with pytest.raises(FileNotFoundError, match="--init_from=.*nowhere"):
        init_from.find_checkpoint(str(tmp_path / "nowhere"))
    # A TT model's checkpoint has cores, not the dense tables.
    tt_dir = tmp_path / "tt_run"
    config = _config(tt_dir, steps=1)
    training.train_model("tt", M.tiny_config(), config, _source(config))
    with pytest.raises(init_from.InitFromError, match="not a dense DLRM checkpoint.*C3"):
        _initialized(tt_dir / "tt", tmp_path)


def test_trainer_fine_tunes_reports_and_resumes(dense_dir, tmp_path):
    config = _config(tmp_path / "tt_dir", init_from=str(dense_dir), steps=3)
    result = training.train_model(T.INIT_FROM_LABEL, M.tiny_config(), config, _source(config))
    rows = R.init_from_rows(result)
    assert [r["model"] for r in rows] == ["dense (checkpoint)", "TT after TT-SVD",
                                          "TT fine-tuned"]
    assert [r["steps"] for r in rows] == [DENSE_STEPS, 0, 3]
    assert rows[0]["auc"] == result["init_from"]["dense"]["auc"]
    assert rows[2]["auc"] == result["auc"] and rows[2]["logloss"] == result["logloss"]
    text = R.format_init_from(rows, result["init_from"]["tables"])
    for r in rows:
        assert r["model"] in text and f"{r['logloss']:.4f}" in text
    assert "C3" in text

    # A resumed run continues its own checkpoint: no second TT-SVD.
    resumed = training.train_model(T.INIT_FROM_LABEL, M.tiny_config(),
                                   config.override(steps=4), _source(config))
    assert resumed["steps"] == 4 and "init_from" not in resumed


@pytest.mark.parametrize("options", [dict(model="both"), dict(model="dense"),
                                     dict(model="tt", init_ablation=True)])
def test_init_from_needs_the_tt_model_alone(options):
    config = Config.from_options(dict(init_from="somewhere", **options))
    with pytest.raises(app.UsageError, match="--init_from .*--model=tt"):
        T.planned_runs(config)


def test_planned_run_has_its_own_label():
    label, runs = T.planned_runs(Config.from_options(dict(init_from="x", model="tt")))
    assert label == "" and [name for name, _ in runs] == [T.INIT_FROM_LABEL]
