"""Training one DLRM, and the models of a run one after the other (Model Garden's "task").

`train_model` builds a compiled DLRM, checks that a resume keeps the recorded options and
restores its newest readable checkpoint (examples/dlrm/checkpoints.py; a resumed run
continues the global step up to --steps), trains it with Keras fit (periodic held-out
evaluation at each epoch end, checkpoints, TensorBoard), evaluates it on the held-out data,
optionally exports it, and returns reports.model_result. Needs legacy Keras (TFRS):
TF_USE_LEGACY_KERAS=1.
"""

import contextlib
import gc
import math
import os
import time
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from examples.dlrm import (
    cache_plan,
    checkpoints,
    distribution,
    init_from,
    parameter_server,
    reports,
)
from examples.dlrm import callbacks as dlrm_callbacks
from examples.dlrm import export as dlrm_export
from examples.dlrm import model as dlrm_model
from examples.dlrm.config import Config, DLRMConfig, OutputConfig
from examples.dlrm.distribution import Worker
from examples.dlrm.memory import MemoryPhase


def fit(model, source, config: Config, start_step: int, callbacks: list,
        strategy=None) -> float:
    """Trains from start_step to config.training.steps; returns the seconds it took. Under
    a strategy each worker reads its own part of the training data, in per-replica batches
    (distribution.distributed_input); under ParameterServerStrategy the workers share one
    stream, and the held-out evaluation is the callbacks' (parameter_server.py)."""
    total, spe = config.training.steps, config.training.steps_per_epoch
    if start_step >= total:
        print(f"  already trained to step {start_step} >= --steps={total}; evaluating only")
        return 0.0
    spe = min(spe, total)
    # A step takes one batch per replica from its worker's input pipeline.
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    pipelines = distribution.worker_of(config.training.distribution).count

    def train_data(batch_size, shard_index, shard_count):
        return source.train(start_step * replicas // pipelines, batch_size, shard_index,
                            shard_count)

    held_out = source.held_out(config.data.periodic_eval_examples)
    verbose = config.training.verbose
    if parameter_server.is_parameter_server(strategy):
        data = parameter_server.shared_input(train_data, config.data.batch_size, strategy)
        validation = None
        verbose = min(verbose, 2)  # Keras refuses progress bars (1) under PSS
    else:
        data = distribution.distributed_input(train_data, config.data.batch_size, strategy)
        validation = held_out if strategy is None else distribution.shard_by_data(held_out)
    t0 = time.perf_counter()
    model.fit(data, epochs=math.ceil(total / spe), steps_per_epoch=spe,
              initial_epoch=start_step // spe, validation_data=validation,
              callbacks=callbacks, verbose=verbose)
    return time.perf_counter() - t0


def export(model, label: str, output: OutputConfig,
           worker: Worker = distribution.ONLY_WORKER) -> dict:
    """A SavedModel in TF Serving's layout, <export_dir>/<label>/<global step>/ (written by
    every worker, kept from the chief only: distribution.Worker.write_dir)."""
    path = os.path.join(output.export_dir, label, str(dlrm_callbacks.global_step(model)))
    ops = dlrm_export.export_dlrm(model, worker.write_dir(path), output.export_format,
                                  portable=output.export_portable,
                                  max_batch_size=output.export_max_batch_size)
    worker.discard(path)
    custom = [op for op in ops if op.startswith("TTKeras>")]
    if worker.is_chief:
        print(f"  exported SavedModel to {path} ({len(ops)} op types; "
              f"{'custom ops: ' + ', '.join(custom) if custom else 'portable: no TTKeras> ops'})")
    return {"export_path": path, "export_custom_ops": custom}


def train_model(label: str, model_config: DLRMConfig, config: Config, source,
                cache_sample: Optional[dict] = None, strategy=None) -> dict:
    """Builds, trains (resuming from <model_dir>/<label>), evaluates and optionally exports
    one DLRM on `source` (sources.make_source). Returns reports.model_result.

    cache_sample: the cache plan's {feature: (ids, counts)}, which seed the caches'
    counters when model_config.cache_prefill is set. strategy: the tf.distribute strategy
    of --distribution (None: none); the model is built in its scope."""
    memory = MemoryPhase()
    tf.keras.utils.set_random_seed(config.training.seed)
    training = config.training
    worker = distribution.worker_of(training.distribution)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = dlrm_model.build_model(
            model_config, training.optimizer, training.learning_rate, name=f"dlrm_{label}",
            tt_optimizer=training.tt_optimizer, tt_learning_rate=training.tt_learning_rate)
    print(reports.format_model_header(label, model, dlrm_model.dense_param_count(model)))
    cache_plan.seed_counters(model, model_config, cache_sample or {})
    run_dir = os.path.join(config.output.model_dir, label) if config.output.model_dir else ""
    checkpoints.check_run_config(run_dir if worker.is_chief else "", config, model_config)
    manager, start_step = checkpoints.restore(model, run_dir, worker.write_dir(run_dir))
    init = init_from.maybe_initialize(model, config, source, start_step)
    on_parameter_servers = parameter_server.is_parameter_server(strategy)
    if on_parameter_servers:
        shards = parameter_server.table_shards(model)
        print("  table shards over the parameter servers: " + ", ".join(
            f"{name} {n}" for name, n in shards.items() if n > 1))
        periodic = source.held_out(config.data.periodic_eval_examples)
        recorder = parameter_server.AsyncStepRecorder(
            config.data.batch_size, start_step, config.training.steps,
            lambda m: parameter_server.evaluate_on_chief(m, periodic, dlrm_model.make_task))
        callbacks = [recorder]
    else:
        recorder = dlrm_callbacks.StepRecorder(config.data.batch_size)
        callbacks = dlrm_callbacks.make_callbacks(recorder, config.training.steps,
                                                  worker.write_dir(run_dir), manager)
    train_seconds = fit(model, source, config, start_step, callbacks, strategy)
    if run_dir:
        worker.discard(run_dir)
    held_out = source.held_out()
    t0 = time.perf_counter()
    if on_parameter_servers:
        metrics = parameter_server.evaluate_on_chief(model, held_out, dlrm_model.make_task)
    else:
        metrics = model.evaluate(held_out if strategy is None
                                 else distribution.shard_by_data(held_out),
                                 return_dict=True, verbose=0)
    timing = {"examples_per_second": recorder.examples_per_second,
              "first_step_seconds": recorder.first_step_seconds,
              "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0}
    result = reports.model_result(label, model, metrics, recorder.curve(), timing,
                                  memory.result())
    if on_parameter_servers:
        result["table_shards"] = shards
    print(reports.format_result(result))
    if init:
        result["init_from"] = init
        print(reports.format_init_from(reports.init_from_rows(result), init["tables"]))
    if config.output.export_dir:
        result.update(export(model, label, config.output, worker))
    del model  # frees the tables before the next model's phase
    gc.collect()
    tf.keras.backend.clear_session()
    return result


def run_comparison(runs: Sequence[Tuple[str, DLRMConfig]], config: Config,
                   source, strategy=None) -> List[dict]:
    """Trains each (label, DLRMConfig) in turn on the same source (under `strategy`, None
    for none); results, dense first. A TT model's cache budget is split by the traffic of
    the source's first batches. The model_dir is locked for the whole run
    (checkpoints.lock_model_dir)."""
    results = []
    # The chief alone locks the model_dir: the other workers of a cluster write elsewhere.
    chief = distribution.worker_of(config.training.distribution).is_chief
    with checkpoints.lock_model_dir(config.output.model_dir if chief else ""):
        for label, model_config in runs:
            planned, sample = cache_plan.plan_cache_sizes(model_config, source)
            results.append(train_model(label, planned, config, source, sample, strategy))
    return sorted(results, key=lambda r: r["label"] != "dense")
