"""--distribution=parameter_server (examples/dlrm/parameter_server.py): the launcher's
chief / worker / ps cluster, the flags it refuses, the shared training stream, the chief's
held-out evaluation, the bytes calculation, and a chief + 1 worker + 2 ps run of the dense
DLRM on loopback (legacy Keras only: TFRS)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import app

from examples.dlrm import data as dlrm_data
from examples.dlrm import launch, train
from examples.dlrm.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _needs_tfrs():
    try:
        import tensorflow_recommenders  # noqa: F401
    except ImportError as e:
        pytest.skip(f"TFRS needs TF_USE_LEGACY_KERAS=1 ({e})")
    assert tf.keras.__name__.startswith("tf_keras")


def test_tf_config_of_a_parameter_server_cluster():
    ports = [11, 12, 13, 14, 15]
    assert launch.cluster_tasks(2, 2) == [("chief", 0), ("worker", 0), ("worker", 1),
                                          ("ps", 0), ("ps", 1)]
    cluster = {"chief": ["127.0.0.1:11"], "worker": ["127.0.0.1:12", "127.0.0.1:13"],
               "ps": ["127.0.0.1:14", "127.0.0.1:15"]}
    for kind, index in launch.cluster_tasks(2, 2):
        config = json.loads(launch.tf_config(ports, index, kind, num_ps=2))
        assert config == {"cluster": cluster, "task": {"type": kind, "index": index}}
    # Without PS tasks: MultiWorkerMirroredStrategy's cluster, as before.
    assert launch.cluster_tasks(2) == [("worker", 0), ("worker", 1)]
    assert json.loads(launch.tf_config(ports[:2], 1))["cluster"] == {
        "worker": ["127.0.0.1:11", "127.0.0.1:12"]}
    with pytest.raises(ValueError, match="no task"):
        launch.tf_config(ports, 2, "ps", num_ps=2)


def _cluster_script(tmp_path, body):
    """A module `task` that runs `body` with `kind` and `index` of its TF_CONFIG task."""
    (tmp_path / "task.py").write_text(
        "import json, os, sys, time\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']\n"
        "kind, index = task['type'], task['index']\n"
        "print('up', kind, index, flush=True)\n" + body)
    return dict(os.environ, PYTHONPATH=str(tmp_path))


@pytest.mark.parametrize("chief_status", [0, 5])
def test_the_chief_ends_a_parameter_server_cluster(tmp_path, chief_status):
    """The cluster's status is the chief's; the servers, which never exit, are stopped."""
    env = _cluster_script(tmp_path, f"time.sleep(1 if kind == 'chief' else 600)\n"
                                    f"sys.exit({chief_status} if kind == 'chief' else 0)\n")
    lines = []
    status = launch.launch("task", [], num_workers=1, timeout=60, env=env, log=lines.append,
                           num_ps=2)
    assert status == chief_status, lines
    for prefix in ("[chief] up chief 0", "[worker 0] up worker 0", "[ps 0] up ps 0",
                   "[ps 1] up ps 1"):
        assert prefix in lines


def test_a_server_exiting_before_the_chief_is_a_failure(tmp_path):
    env = _cluster_script(tmp_path, "time.sleep(1 if kind == 'ps' and index == 1 else 600)\n")
    lines = []
    status = launch.launch("task", [], num_workers=1, timeout=60, env=env, log=lines.append,
                           num_ps=2)
    assert status == 1, lines
    assert any("ps 1 exited with status 0 before the chief" in line for line in lines)


def _config(**options):
    return Config.from_options({"distribution": "parameter_server", **options})


@pytest.mark.parametrize("model", ["tt", "both"])
def test_tt_under_parameter_server_is_a_usage_error(model):
    with pytest.raises(app.UsageError) as error:
        train.planned_runs(_config(model=model))
    message = str(error.value)
    assert f"--model={model}" in message and "--distribution=parameter_server" in message
    assert "multi_worker" in message  # the replicated alternative
    assert train.planned_runs(_config(model="dense"))[1][0][0] == "dense"


@pytest.mark.parametrize("flag", ["model_dir", "export_dir"])
def test_outputs_under_parameter_server_are_refused(flag, tmp_path):
    with pytest.raises(app.UsageError, match=f"--{flag}="):
        train.planned_runs(_config(model="dense", **{flag: str(tmp_path)}))


def test_the_workers_share_one_stream():
    """Two workers' datasets (what the DatasetCreator gives each) take every batch of the
    stream once between them, in batches of the global batch."""
    if not hasattr(tf.keras.utils, "experimental"):
        pytest.skip("DatasetCreator is tf_keras'")
    from examples.dlrm import parameter_server

    class OneReplica:
        num_replicas_in_sync = 1

    def dataset_fn(batch_size, shard_index, shard_count):
        assert (shard_index, shard_count) == (0, 1)
        return tf.data.Dataset.range(10_000).batch(batch_size)

    creator = parameter_server.shared_input(dataset_fn, 4, OneReplica())
    context = tf.distribute.InputContext(1, 0, 1)  # what PSS gives every worker
    workers = [iter(creator(context)) for _ in range(2)]
    seen = [next(it).numpy() for _ in range(6) for it in workers]
    assert all(len(batch) == 4 for batch in seen)
    ids = np.concatenate(seen)
    assert len(set(ids.tolist())) == len(ids), "a batch went to both workers"


def test_evaluate_on_chief_matches_keras_evaluate():
    _needs_tfrs()
    from examples.dlrm import model as dlrm_model
    from examples.dlrm import parameter_server

    config = dlrm_model.tiny_config(tt_tables=0)
    model = dlrm_model.build_model(config)
    stream = dlrm_data.SyntheticCriteo(config.table_sizes, seed=3)
    held_out = stream.dataset(64, "eval", num_batches=4)
    expected = model.evaluate(held_out, return_dict=True, verbose=0)
    got = parameter_server.evaluate_on_chief(model, held_out, dlrm_model.make_task)
    for key in ("auc", "logloss", "accuracy", "label_mean", "prediction_mean"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)


def test_communication_under_parameter_servers_by_hand():
    from examples.dlrm import communication

    kaggle = dlrm_data.TABLE_SIZES["kaggle"]
    mlp = communication.mlp_params(16)
    ps = communication.ps_step_bytes(kaggle, 16, workers=8, batch_size=8192)
    # Each of 8 workers: 1024 examples, 26 tables, ids out and rows back (16 floats + an
    # int64 each), gradient rows and indices out; every MLP weight in and its gradient out.
    assert ps["embedding_row_bytes"] == 2 * 1024 * 26 * (16 * 4 + 8)
    assert ps["mlp_bytes"] == 2 * 4 * mlp
    assert ps["total_bytes"] == 2 * 1024 * 26 * 72 + 8 * mlp
    # Two workers, 7 TT tables of rank 32: PS moves fewer bytes below the crossover batch.
    tt = communication.step_bytes(kaggle, 16, 7, 32, workers=2, batch_size=1024)
    cores = tt["all_reduced_bytes"]
    # PS: 2 (B / 2) 26 (72) + 8 P; TT: ring 2 (1 / 2) cores + all-gather (B / 2) 19 (72).
    by_hand = (cores - 8 * mlp) / (26 * 72 - 19 * 72 / 2)
    crossing = communication.crossover_batch(kaggle, 16, 7, 32, workers=2)
    assert crossing == pytest.approx(by_hand)
    rows = communication.compare(kaggle, 16, 7, 32, [2], [1024, 65536])
    assert [r["fewer"] for r in rows] == ["PS", "TT"] and 1024 < crossing < 65536
    # From 8 workers on, TT's all-gather grows faster than PS's pulls: no crossover.
    assert communication.crossover_batch(kaggle, 16, 7, 32, workers=8) is None


def test_chief_worker_and_two_ps_train_the_dense_dlrm(tmp_path):
    """A chief + 1 worker + 2 ps cluster trains the dense DLRM: the chief's results hold the
    held-out AUC and the step count, and the largest table was split over both PS."""
    _needs_tfrs()
    lines = []
    steps = 6
    status = launch.launch(
        "examples.dlrm.train",
        ["--distribution=parameter_server", "--data=synthetic", "--model=dense",
         # Kaggle / 100: the largest table is 6.5 MB (2 shards), the smallest ones whole.
         "--table_scale=100", f"--steps={steps}", "--steps_per_epoch=3", "--batch_size=32",
         "--eval_examples=256", "--periodic_eval_examples=64", "--eval_batch_size=64",
         "--verbose=0", f"--out_dir={tmp_path / 'out'}"],
        num_workers=1, num_ps=2, timeout=420, log=lines.append)
    tail = "\n".join(line for line in lines if "I0000" not in line)[-4000:]
    assert status == 0, tail
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["label"] == "dense" and result["steps"] == steps
    assert result["curve"]["steps"] == list(range(1, steps + 1))
    assert result["curve"]["eval_steps"] == [3, 6]
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0
    assert result["examples_per_second"] > 0
    sizes = dlrm_data.scale_table_sizes(dlrm_data.TABLE_SIZES["kaggle"], 100)
    largest = dlrm_data.CAT_FEATURES[int(np.argmax(sizes))]
    smallest = dlrm_data.CAT_FEATURES[int(np.argmin(sizes))]
    assert result["table_shards"][largest] == 2 and result["table_shards"][smallest] == 1
    assert "[ps 1] serving as ps 1" in lines and "[worker 0] serving as worker 0" in lines
    # Only the chief trains and reports.
    assert [line.split("]")[0] for line in lines if "held-out: AUC" in line] == ["[chief"]
