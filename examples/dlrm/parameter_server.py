"""--distribution=parameter_server: the dense DLRM with its large tables sharded over
parameter servers (tf.distribute.ParameterServerStrategy), the baseline TT is compared with
(docs/distribution.md).

TF_CONFIG names a chief, N workers and M ps tasks (`python -m examples.dlrm.launch
--num_workers=N --num_ps=M -- --distribution=parameter_server ...` starts them on loopback).
The workers and parameter servers only serve (`serve`: a tf.distribute.Server, joined until
the launcher kills them). The chief is the coordinator and the only process that runs the
trainer: it makes the strategy, builds the model in its scope (each variable of at least
2 * MIN_SHARD_BYTES is split into up to M shards, one per PS; the MLPs stay whole), and
model.fit schedules each step on a free worker, which pulls the rows and weights it needs
from the parameter servers and pushes its gradients back, asynchronously.

What differs from the replicated strategies, and why:
- Data: under PSS every worker's dataset comes from the same traced function with the same
  InputContext (one input pipeline, id 0), so per-worker sharding is impossible and every
  worker would read the same stream. The training stream is instead served from the chief
  by a tf.data service (`shared_input`): each batch goes to exactly one worker, so the
  workers together read the global stream once. One step consumes one batch of
  `context.get_per_replica_batch_size(B)` = B (one replica per CPU worker): the global batch.
- Callbacks: Keras hands batch callbacks the step's logs as a RemoteValue and waits for it
  unless every batch callback accepts tensors; the trainer's StepRecorder and StopAtStep
  read the loss and the global step every step, which would serialize the workers.
  `AsyncStepRecorder` times from the end of the first step (which waits: tracing) to the end
  of each epoch (after fit joins the workers), fetches the losses then, and stops at the
  last step by counting the steps it scheduled.
- Evaluation: Keras' inexact PSS evaluation gives every worker the whole held-out set and
  its exact one refuses TFRS' task metrics; `evaluate_on_chief` evaluates the held-out set
  once, in the chief, reading the variables from the parameter servers.
"""

import itertools
import os
import time
from typing import Callable, Dict, Optional

import tensorflow as tf

from examples.dlrm.callbacks import StepRecorder, global_step
from examples.dlrm.distribution import read_tf_config

# Variables smaller than twice this stay whole. 1 MiB is above DLRM's largest MLP kernel
# (367 x 512 floats, 752 KB, at the default widths), so the MLPs are not split; a table of
# at least 2 MiB is split into min(M, bytes // MIN_SHARD_BYTES) shards.
MIN_SHARD_BYTES = 1 << 20
SERVER_TASKS = ("worker", "ps")


def task_of(environ=None) -> dict:
    """TF_CONFIG's task ({} without TF_CONFIG)."""
    return read_tf_config(environ).get("task", {})


def is_server_task(environ=None) -> bool:
    """Whether this process is a worker or ps task of a PSS cluster (it serves; the chief
    runs the trainer)."""
    return task_of(environ).get("type") in SERVER_TASKS


def serve() -> None:
    """Runs this worker or ps task's server until the process is killed (the launcher
    stops it when the chief exits)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    print(f"serving as {resolver.task_type} {resolver.task_id}", flush=True)
    server.join()


def make_strategy() -> tf.distribute.ParameterServerStrategy:
    """The coordinator's strategy over TF_CONFIG's cluster (this process is its chief)."""
    task = task_of()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec().as_dict()
    if task.get("type") != "chief" or not cluster.get("ps") or not cluster.get("worker"):
        raise ValueError("--distribution=parameter_server needs TF_CONFIG naming a chief, "
                         "workers and ps tasks, run in the chief (python -m "
                         "examples.dlrm.launch --num_workers=N --num_ps=M -- ... sets it); "
                         f"got task {task!r} of {sorted(cluster)}")
    # Fail fast, in the caller, when a worker is unreachable (TF's recommendation).
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=len(cluster["ps"]))
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def is_parameter_server(strategy) -> bool:
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


# ---------------------------------------------------------------------------------------
# The training stream: one stream, each batch to one worker
# ---------------------------------------------------------------------------------------

_service: Optional[tuple] = None
_jobs = itertools.count()


def _data_service() -> str:
    """The address of this process's tf.data service (a dispatcher and one tf.data worker,
    started once, in the chief)."""
    global _service  # pylint: disable=global-statement
    if _service is None:
        dispatcher = tf.data.experimental.service.DispatchServer()
        worker = tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(
                dispatcher_address=dispatcher.target.split("://")[1]))
        _service = (dispatcher, worker)
    return _service[0].target


def shared_input(dataset_fn, global_batch: int, strategy):
    """model.fit's training data under PSS: dataset_fn(batch, 0, 1), the whole stream in
    batches of one replica's share of the global batch, served by the chief's tf.data
    service to the workers, each batch to one of them (a job every worker's dataset
    shares)."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"batch_size = {global_batch} must be a multiple of the "
                         f"{replicas} replicas of a worker")
    batch = global_batch // replicas
    dataset = dataset_fn(batch, 0, 1)
    service = _data_service()
    dataset_id = tf.data.experimental.service.register_dataset(service, dataset).numpy()
    spec, job = dataset.element_spec, f"dlrm_train_{next(_jobs)}"

    def per_worker(context: tf.distribute.InputContext):
        # PSS gives every worker this context: one pipeline, every replica's batch.
        if context.get_per_replica_batch_size(global_batch) != batch:
            raise ValueError(f"a replica's batch is {batch}, the context says "
                             f"{context.get_per_replica_batch_size(global_batch)}")
        return tf.data.experimental.service.from_dataset_id(
            tf.data.experimental.service.ShardingPolicy.OFF, service, dataset_id, spec,
            job_name=job)
    return tf.keras.utils.experimental.DatasetCreator(per_worker)


# ---------------------------------------------------------------------------------------
# Steps, timing and evaluation without waiting for every step
# ---------------------------------------------------------------------------------------

class AsyncStepRecorder(StepRecorder):
    """StepRecorder for PSS (see the module doc): the loss of every step, fetched at the
    epoch's end and numbered in the order the steps were scheduled; examples/s over every
    step but the first of the fit, timed to the end of each epoch (the held-out evaluation
    left out); `evaluate(model)` (a dict with "auc" and "logloss") at each epoch's end; stops
    training at `last_step` by counting the steps scheduled from `start_step`."""

    def __init__(self, batch_size: int, start_step: int, last_step: int,
                 evaluate: Callable[[tf.keras.Model], Dict[str, float]]):
        super().__init__(batch_size)
        self._supports_tf_logs = True  # the batch logs stay RemoteValues: no wait
        self.scheduled = start_step
        self.last_step = last_step
        self.evaluate = evaluate
        self._pending = []
        self._timing_since: Optional[float] = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_step_seconds is not None:
            self._timing_since = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.scheduled += 1
        if self.first_step_seconds is None:  # wait for the first step (it traces)
            self.losses.append(float(logs.fetch()["loss"]))
            self.steps.append(self.scheduled)
            self.first_step_seconds = time.perf_counter() - self._t0
            self._timing_since = time.perf_counter()
        else:
            self._pending.append((self.scheduled, logs))
            self.timed_steps += 1
        if self.scheduled >= self.last_step:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # fit has joined the workers: every scheduled step is done.
        if self._timing_since is not None:
            self.timed_seconds += time.perf_counter() - self._timing_since
            self._timing_since = None
        for step, remote in self._pending:
            self.steps.append(step)
            self.losses.append(float(remote.fetch()["loss"]))
        self._pending = []
        metrics = self.evaluate(self.model)
        self.eval_steps.append(global_step(self.model))
        self.eval_auc.append(float(metrics["auc"]))
        self.eval_logloss.append(float(metrics["logloss"]))


def evaluate_on_chief(model, dataset: tf.data.Dataset, make_task) -> Dict[str, float]:
    """The model's held-out metrics over `dataset`, each example once, computed in this
    process (the chief) with fresh metrics of `make_task()` (a TFRS Ranking task: the
    model's own metric variables live on the parameter servers and are updated by the
    training steps). Returns {metric name: value, "loss": mean log loss}."""
    task = make_task()

    @tf.function
    def step(features, labels):
        return task(labels=labels, predictions=model(features, training=False))

    for features, labels in dataset:
        step(features, labels)
    results = {m.name: float(m.result()) for m in task.metrics}
    results["loss"] = results["logloss"]
    return results


def table_shards(model) -> Dict[str, int]:
    """{feature: shards of its embedding table} (1: a whole variable)."""
    return {name: len(getattr(layer.embeddings, "variables", [layer.embeddings]))
            for name, layer in model.embeddings.tables.items()}
