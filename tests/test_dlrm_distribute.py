"""examples/dlrm/distribution.py and the trainer's --distribution: the workers' places, their
disjoint parts of the data, and a two-worker MultiWorkerMirroredStrategy run of the trainer
started by examples/dlrm/launch.py (legacy Keras only: TFRS)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from examples.dlrm import data as dlrm_data
from examples.dlrm import distribution, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dlrm_data.scale_table_sizes(dlrm_data.TABLE_SIZES["kaggle"], 10_000)


def test_worker_from_tf_config():
    config = {"TF_CONFIG": launch.tf_config([1, 2, 3], 2)}
    worker = distribution.worker_from_tf_config(config)
    assert (worker.index, worker.count, worker.is_chief) == (2, 3, False)
    assert distribution.worker_from_tf_config({}) == distribution.ONLY_WORKER
    bad = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}})
    with pytest.raises(ValueError, match="index 1 is not one of the 1 workers"):
        distribution.worker_from_tf_config({"TF_CONFIG": bad})


def test_only_the_chief_writes_where_asked(tmp_path):
    chief, other = distribution.Worker(0, 2), distribution.Worker(1, 2)
    target = str(tmp_path / "run" / "checkpoints")
    assert chief.write_dir(target) == target
    scratch = other.write_dir(target)
    assert scratch == str(tmp_path / "run" / "_worker1_checkpoints")
    os.makedirs(scratch)
    other.discard(target)
    assert not os.path.exists(scratch)
    assert other.write_dir("") == ""


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribution.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="distribution must be one of"):
        distribution.make_strategy("ps")


def _labels(dataset):
    return [np.asarray(labels) for _, labels in dataset]


def test_synthetic_parts_are_the_streams_batches_dealt_round_robin():
    stream = dlrm_data.SyntheticCriteo(SIZES, seed=1)
    whole = _labels(stream.dataset(8, start_batch=1, num_batches=4))
    parts = [_labels(stream.dataset(8, start_batch=0, num_batches=3, shard_index=i,
                                    shard_count=2)) for i in range(2)]
    # Part i holds batches i, i + 2, i + 4 of the stream: disjoint, and together the stream.
    np.testing.assert_array_equal(parts[1][0], whole[0])
    np.testing.assert_array_equal(parts[0][1], whole[1])
    np.testing.assert_array_equal(parts[1][1], whole[2])
    with pytest.raises(ValueError, match="shard_index must be in"):
        stream.dataset(8, shard_index=2, shard_count=2)


def test_file_parts_are_disjoint_lines(tmp_path):
    lines = []
    for i in range(40):
        dense = [str(i)] + [""] * 12
        lines.append("\t".join([str(i % 2)] + dense + ["0a"] * 26))
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")

    def first_dense(shard_index, shard_count):
        ds = dlrm_data.criteo_tsv_dataset(str(path), SIZES, 4, split="train", eval_every=10,
                                          shard_index=shard_index, shard_count=shard_count)
        return sorted(np.concatenate([f["dense"][:, 0].numpy() for f, _ in ds]).tolist())

    whole = first_dense(0, 1)
    parts = [first_dense(i, 2) for i in range(2)]
    assert len(whole) == 36  # every 10th line held out
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == whole


def test_two_workers_train_the_dlrm(tmp_path):
    try:
        import tensorflow_recommenders  # noqa: F401
    except ImportError as e:
        pytest.skip(f"TFRS needs TF_USE_LEGACY_KERAS=1 ({e})")
    assert tf.keras.__name__.startswith("tf_keras")
    lines = []
    status = launch.launch(
        "examples.dlrm.train",
        ["--distribution=multi_worker", "--data=synthetic", "--model=tt", "--table_scale=1000",
         "--steps=4", "--steps_per_epoch=2", "--batch_size=32", "--eval_examples=256",
         "--periodic_eval_examples=64", "--eval_batch_size=64", "--tt_rank=4",
         "--cache_size=50", "--cache_warmup_steps=1", "--verbose=0",
         f"--out_dir={tmp_path / 'out'}", f"--model_dir={tmp_path / 'md'}",
         f"--export_dir={tmp_path / 'export'}"],
        num_workers=2, timeout=600, log=lines.append)
    assert status == 0, "\n".join(line for line in lines if "I0000" not in line)[-4000:]
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["steps"] == 4
    # Metrics are the cluster's, not summed over the workers.
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["auc"] <= 1.0
    assert (tmp_path / "export" / "tt" / "4" / "saved_model.pb").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "md" / "tt" / "checkpoints"))
    # The other worker's scratch copies are gone.
    leftovers = [p for p in tmp_path.rglob("_worker*")]
    assert not leftovers, leftovers
    both = [line for line in lines if "held-out: AUC" in line]
    assert len(both) == 2 and both[0].split("]", 1)[1].split("(")[0] == (
        both[1].split("]", 1)[1].split("(")[0])


def test_communication_bytes_from_sizes():
    from examples.dlrm import communication

    kaggle = dlrm_data.TABLE_SIZES["kaggle"]
    one = communication.step_bytes(kaggle, 16, 7, 32, workers=1, batch_size=1024)
    assert one["ring_traffic_bytes"] == 0 and one["all_gathered_bytes"] == 0
    two = communication.step_bytes(kaggle, 16, 7, 32, workers=2, batch_size=1024)
    # Ring all-reduce: 2 (N - 1) / N of the dense gradients; 19 Embedding tables gather the
    # other worker's 512 rows of 16 floats and an int64 index each.
    assert two["ring_traffic_bytes"] == two["all_reduced_bytes"]
    assert two["all_gathered_bytes"] == 512 * 19 * (16 * 4 + 8)
    dense = communication.step_bytes(kaggle, 16, 0, 32, workers=2, batch_size=1024)
    assert dense["replicated_embedding_bytes"] == 4 * 16 * sum(kaggle)
    assert dense["all_reduced_bytes"] == 4 * communication.mlp_params(16)
    with pytest.raises(ValueError, match="multiple of workers"):
        communication.step_bytes(kaggle, 16, 7, 32, workers=3, batch_size=1024)


def test_mlp_params_match_the_model():
    try:
        from examples.dlrm import model as dlrm_model
    except ImportError as e:
        pytest.skip(f"TFRS needs TF_USE_LEGACY_KERAS=1 ({e})")
    from examples.dlrm import communication
    from examples.dlrm.config import Config

    config = Config.from_options({"table_scale": 10_000}).dlrm_config()
    model = dlrm_model.build_model(config)
    assert dlrm_model.dense_param_count(model) == communication.mlp_params(16)
