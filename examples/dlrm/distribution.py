"""The DLRM trainer's tf.distribute strategy (--distribution), and what each worker does.

- none: the default strategy (one device).
- mirrored: MirroredStrategy over this machine's devices (its GPUs, else its CPU).
- multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG, one replica per
  worker on CPUs; `python -m examples.dlrm.launch --num_workers=N -- ...` starts N local
  workers with theirs.
- parameter_server: ParameterServerStrategy, the dense model's large tables sharded over the
  ps tasks of TF_CONFIG (examples/dlrm/parameter_server.py; `launch --num_ps=M` starts a
  chief, N workers and M ps tasks). Only the chief runs the trainer, so it is the only
  Worker (`worker_of`) and writes every output.

The strategy must exist before TensorFlow runs its first op (MultiWorkerMirroredStrategy
configures collective ops at startup), so the trainer makes it first. Each worker reads its
own part of the training data (`distributed_input`), and every worker writes its checkpoints and
exports, as MWMS requires (saving may run collectives), but only the chief's land where they
were asked for; the others write to a scratch directory beside them, removed afterwards
(`Worker.write_dir`, TF's multi-worker convention). docs/distribution.md.
"""

import dataclasses
import json
import os
import shutil
from typing import Optional

import tensorflow as tf

DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "parameter_server")


def make_strategy(name: str) -> Optional[tf.distribute.Strategy]:
    """The strategy `--distribution=name` names (None for none: the trainer runs without
    one); multi_worker needs TF_CONFIG."""
    if name == "none":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--distribution=multi_worker needs TF_CONFIG naming the cluster "
                             "(python -m examples.dlrm.launch --num_workers=N -- ... sets it)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        from examples.dlrm import parameter_server  # pylint: disable=import-outside-toplevel
        return parameter_server.make_strategy()
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place in the cluster: worker `index` of `count`."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def write_dir(self, path: str) -> str:
        """Where this worker writes what belongs at `path`: path itself for the chief, a
        scratch directory beside it for the others ('' stays '')."""
        if not path or self.is_chief:
            return path
        return os.path.join(os.path.dirname(path.rstrip("/")) or ".",
                            f"_worker{self.index}_{os.path.basename(path.rstrip('/'))}")

    def discard(self, path: str) -> None:
        """Removes a non-chief worker's scratch directory for `path`."""
        scratch = self.write_dir(path)
        if scratch and scratch != path:
            shutil.rmtree(scratch, ignore_errors=True)


# The one worker of a run without a cluster.
ONLY_WORKER = Worker()


def read_tf_config(environ=None) -> dict:
    """TF_CONFIG of `environ` (default this process's environment) parsed ({} without it)."""
    return json.loads((environ if environ is not None else os.environ).get("TF_CONFIG")
                      or "{}")


def worker_from_tf_config(environ=None) -> Worker:
    """The Worker that TF_CONFIG describes (one worker of one without it)."""
    config = read_tf_config(environ)
    workers = config.get("cluster", {}).get("worker", [])
    task = config.get("task", {})
    if not workers:
        return ONLY_WORKER
    if task.get("type") != "worker":
        raise ValueError(f"TF_CONFIG task must be a worker, got {task!r}")
    index = int(task.get("index", 0))
    if not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG task index {index} is not one of the "
                         f"{len(workers)} workers")
    return Worker(index, len(workers))


def worker_of(distribution: str) -> Worker:
    """This process's Worker under `--distribution`: from TF_CONFIG for multi_worker, the
    only worker otherwise (under parameter_server the chief is the only process running the
    trainer: the workers and parameter servers only serve)."""
    return worker_from_tf_config() if distribution == "multi_worker" else ONLY_WORKER


def distributed_input(dataset_fn, global_batch: int, strategy=None):
    """What model.fit takes as training data.

    dataset_fn(batch_size, shard_index, shard_count) -> a dataset of batches of that size
    from part shard_index of shard_count disjoint parts of the data. Without a strategy:
    dataset_fn(global_batch, 0, 1). Under one: a DatasetCreator whose dataset on each
    worker (each input pipeline) is its own part, in batches of one replica's share of the
    global batch.
    """
    if strategy is None:
        return dataset_fn(global_batch, 0, 1)
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"batch_size = {global_batch} must be a multiple of the "
                         f"{replicas} replicas")

    def per_worker(context: tf.distribute.InputContext):
        return dataset_fn(context.get_per_replica_batch_size(global_batch),
                          context.input_pipeline_id, context.num_input_pipelines)
    return tf.keras.utils.experimental.DatasetCreator(per_worker)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A dataset that every worker reads whole and splits batch by batch among the replicas
    (the held-out set: every worker evaluates its share, the metrics are summed)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)
