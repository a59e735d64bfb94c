"""Training one DLRM, and the models of a run one after the other (Model Garden's "task").

`train_model` builds a compiled DLRM, checks that a resume keeps the recorded options and
restores its newest readable checkpoint (examples/dlrm/checkpoints.py; a resumed run
continues the global step up to --steps), trains it with Keras fit (periodic held-out
evaluation at each epoch end, checkpoints, TensorBoard), evaluates it on the held-out data,
optionally exports it, and returns reports.model_result. Needs legacy Keras (TFRS):
TF_USE_LEGACY_KERAS=1.
"""

import gc
import math
import os
import time
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from examples.dlrm import cache_plan, checkpoints, init_from, reports
from examples.dlrm import callbacks as dlrm_callbacks
from examples.dlrm import export as dlrm_export
from examples.dlrm import model as dlrm_model
from examples.dlrm.config import Config, DLRMConfig, OutputConfig
from examples.dlrm.memory import MemoryPhase


def fit(model, source, config: Config, start_step: int, callbacks: list) -> float:
    """Trains from start_step to config.training.steps; returns the seconds it took."""
    total, spe = config.training.steps, config.training.steps_per_epoch
    if start_step >= total:
        print(f"  already trained to step {start_step} >= --steps={total}; evaluating only")
        return 0.0
    spe = min(spe, total)
    t0 = time.perf_counter()
    model.fit(source.train(start_step), epochs=math.ceil(total / spe), steps_per_epoch=spe,
              initial_epoch=start_step // spe,
              validation_data=source.held_out(config.data.periodic_eval_examples),
              callbacks=callbacks, verbose=config.training.verbose)
    return time.perf_counter() - t0


def export(model, label: str, output: OutputConfig) -> dict:
    """A SavedModel in TF Serving's layout, <export_dir>/<label>/<global step>/."""
    path = os.path.join(output.export_dir, label, str(dlrm_callbacks.global_step(model)))
    ops = dlrm_export.export_dlrm(model, path, output.export_format,
                                  portable=output.export_portable,
                                  max_batch_size=output.export_max_batch_size)
    custom = [op for op in ops if op.startswith("TTKeras>")]
    print(f"  exported SavedModel to {path} ({len(ops)} op types; "
          f"{'custom ops: ' + ', '.join(custom) if custom else 'portable: no TTKeras> ops'})")
    return {"export_path": path, "export_custom_ops": custom}


def train_model(label: str, model_config: DLRMConfig, config: Config, source,
                cache_sample: Optional[dict] = None) -> dict:
    """Builds, trains (resuming from <model_dir>/<label>), evaluates and optionally exports
    one DLRM on `source` (sources.make_source). Returns reports.model_result.

    cache_sample: the cache plan's {feature: (ids, counts)}, which seed the caches'
    counters when model_config.cache_prefill is set."""
    memory = MemoryPhase()
    tf.keras.utils.set_random_seed(config.training.seed)
    training = config.training
    model = dlrm_model.build_model(model_config, training.optimizer, training.learning_rate,
                                   name=f"dlrm_{label}", tt_optimizer=training.tt_optimizer,
                                   tt_learning_rate=training.tt_learning_rate)
    print(reports.format_model_header(label, model, dlrm_model.dense_param_count(model)))
    cache_plan.seed_counters(model, model_config, cache_sample or {})
    run_dir = os.path.join(config.output.model_dir, label) if config.output.model_dir else ""
    checkpoints.check_run_config(run_dir, config, model_config)
    manager, start_step = checkpoints.restore(model, run_dir)
    init = init_from.maybe_initialize(model, config, source, start_step)
    recorder = dlrm_callbacks.StepRecorder(config.data.batch_size)
    train_seconds = fit(model, source, config, start_step, dlrm_callbacks.make_callbacks(
        recorder, config.training.steps, run_dir, manager))
    t0 = time.perf_counter()
    metrics = model.evaluate(source.held_out(), return_dict=True, verbose=0)
    timing = {"examples_per_second": recorder.examples_per_second,
              "first_step_seconds": recorder.first_step_seconds,
              "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0}
    result = reports.model_result(label, model, metrics, recorder.curve(), timing,
                                  memory.result())
    print(reports.format_result(result))
    if init:
        result["init_from"] = init
        print(reports.format_init_from(reports.init_from_rows(result), init["tables"]))
    if config.output.export_dir:
        result.update(export(model, label, config.output))
    del model  # frees the tables before the next model's phase
    gc.collect()
    tf.keras.backend.clear_session()
    return result


def run_comparison(runs: Sequence[Tuple[str, DLRMConfig]], config: Config,
                   source) -> List[dict]:
    """Trains each (label, DLRMConfig) in turn on the same source; results, dense first.
    A TT model's cache budget is split by the traffic of the source's first batches. The
    model_dir is locked for the whole run (checkpoints.lock_model_dir)."""
    results = []
    with checkpoints.lock_model_dir(config.output.model_dir):
        for label, model_config in runs:
            planned, sample = cache_plan.plan_cache_sizes(model_config, source)
            results.append(train_model(label, planned, config, source, sample))
    return sorted(results, key=lambda r: r["label"] != "dense")
