r"""Train DLRM with dense vs TT-compressed embedding tables (TT-Rec) on Criteo data.

Needs legacy Keras for TFRS (the module sets TF_USE_LEGACY_KERAS=1 itself when run as a
script, before TensorFlow is imported):

  # the main comparison: synthetic data on DLRM's full Kaggle table sizes, dense vs TT
  python -m examples.dlrm.train --data=synthetic --model=both --steps=10000 \
      --steps_per_epoch=1000

  # the real Criteo sample (hashed into the Kaggle table sizes; see examples/dlrm/sample.py)
  python -m examples.dlrm.train --data=criteo_sample --model=both --steps=400 \
      --steps_per_epoch=80

  # model sizes and compression ratios for the full Kaggle and Terabyte tables (no training)
  python -m examples.dlrm.train --report_only

  # initializer ablation: sampled Gaussian vs FBTT's naive initializers
  python -m examples.dlrm.train --data=synthetic --init_ablation --tt_tables=7 \
      --table_scale=10 --steps=2000

The flags are the options of examples/dlrm/config.py. After training: held-out AUC, log loss
and accuracy (Keras metrics over the held-out split/stream), embedding bytes (float32, TT
cache included) and compression ratios, throughput (examples/s over all steps but the first,
which traces), peak memory, a PNG of the training curves and results.json in --out_dir, and
a comparison table. With --model_dir: checkpoints (resume continues the step count: --steps
is the total) and TensorBoard logs, one subdirectory per model. With --export_dir: a
portable SavedModel per model, in TF Serving's layout <export_dir>/<dense|tt>/<step>/ (see
examples/dlrm/export.py).

Optimizer: plain SGD with learning rate 0.1, as DLRM's reference Kaggle run (batch 128);
--optimizer=adagrad is available (then a smaller --learning_rate such as 0.01-0.05 is usual).
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
from typing import List, Tuple  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from examples.dlrm import config as dlrm_config  # noqa: E402
from examples.dlrm import distribution, plots, reports, sources  # noqa: E402
from examples.dlrm.config import Config, DLRMConfig  # noqa: E402

# The run directory and label of a TT model started from a dense checkpoint: not "tt", so
# that a --model_dir that already holds a TT model trained from scratch is not resumed
# instead.
INIT_FROM_LABEL = "tt_from_dense"


def write_json(obj, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def write_outputs(results: List[dict], out_dir: str) -> None:
    """The training curves PNG and results.json in out_dir."""
    png = plots.plot_curves(results, os.path.join(out_dir, "training_curves.png"))
    print(f"curves: {png}\nresults: {write_json(results, out_dir, 'results.json')}")


def report_only(config: Config) -> List[dict]:
    """Prints and writes (<out_dir>/size_report.json) reports.size_report."""
    report = reports.size_report(cache_size=config.model.cache_size,
                                 num_cores=config.model.tt_cores)
    print(reports.format_size_report(report))
    if config.output.out_dir:
        print(f"\nsize report: {write_json(report, config.output.out_dir, 'size_report.json')}")
    return report


def check_parameter_server(config: Config) -> None:
    """Raises app.UsageError for what --distribution=parameter_server does not support:
    the TT models (TT tables are small enough to replicate: train them with mirrored or
    multi_worker), checkpoints and exports (not built or tried under PSS: refused rather
    than half supported), and --skip_bad_lines (its counter variable cannot be served by the
    tf.data service that feeds the workers)."""
    if config.training.distribution != "parameter_server":
        return
    run, output = config.run, config.output
    if run.model != "dense" or run.init_ablation or run.init_from:
        given = f"--model={run.model}" + (" --init_ablation" if run.init_ablation else "") + (
            " --init_from" if run.init_from else "")
        raise app.UsageError(
            f"--distribution=parameter_server trains the dense DLRM only (the sharded "
            f"baseline): give --model=dense, got {given}. TT tables are small enough to "
            f"replicate: train them with --distribution=multi_worker or mirrored")
    for flag, value in (("model_dir", output.model_dir), ("export_dir", output.export_dir)):
        if value:
            raise app.UsageError(f"--{flag}={value}: checkpoints and exports are not "
                                 "supported under --distribution=parameter_server")
    if config.data.skip_bad_lines:
        raise app.UsageError("--skip_bad_lines is not supported under "
                             "--distribution=parameter_server")


def planned_runs(config: Config) -> Tuple[str, List[Tuple[str, DLRMConfig]]]:
    """(results subdirectory, [(label, DLRMConfig)]): the TT model started from --init_from,
    the initializer ablation, or TT then dense (TT first: its memory peak is then not
    inflated by what the large dense model leaves)."""
    check_parameter_server(config)
    model, run = config.dlrm_config(), config.run
    if (run.init_ablation or run.model != "dense") and not model.tt_tables:
        raise app.UsageError("--init_ablation and --model=tt|both need --tt_tables > 0")
    if run.init_from:
        if run.init_ablation or run.model != "tt":
            raise app.UsageError(f"--init_from fine-tunes the TT model alone: give --model=tt "
                                 f"without --init_ablation (got --model={run.model}"
                                 f"{' --init_ablation' if run.init_ablation else ''})")
        return "", [(INIT_FROM_LABEL, model)]
    if run.init_ablation:
        return "init_ablation", [(init, model.replace(tt_initializer=init))
                                 for init in dlrm_config.INIT_ABLATION]
    kinds = ("tt", "dense") if run.model == "both" else (run.model,)
    return "", [(kind, model if kind == "tt" else model.replace(tt_tables=0))
                for kind in kinds]


def train(config: Config) -> List[dict]:
    """Trains and compares the planned models; writes the curves PNG and results.json."""
    subdir, runs = planned_runs(config)
    # First: MultiWorkerMirroredStrategy must exist before any op runs (the synthetic
    # source runs some when it is made).
    name = config.training.distribution
    strategy = distribution.make_strategy(name)
    worker = distribution.worker_of(name)
    try:
        source = sources.make_source(config.data, config.tables.table_sizes(),
                                     config.training.seed)
    except (ValueError, FileNotFoundError) as e:  # --data names no usable data
        raise app.UsageError(str(e)) from e
    try:
        from examples.dlrm import training  # pylint: disable=g-import-not-at-top
    except ImportError as e:  # TFRS under Keras 3
        raise app.UsageError(
            f"TFRS needs legacy Keras: run with TF_USE_LEGACY_KERAS=1 ({e})") from e
    print(reports.format_tables(config.tables))
    results = training.run_comparison(runs, config, source, strategy)
    title = "Initializer ablation" if config.run.init_ablation else "Dense vs TT"
    print(f"\n{title} ({source.describe()}, batch {config.data.batch_size}, "
          f"{config.training.optimizer} lr {config.training.learning_rate}):")
    print(reports.format_comparison(reports.comparison_rows(results)))
    bad_lines = getattr(source, "bad_lines", None)
    if bad_lines is not None:
        print(f"--skip_bad_lines: skipped {bad_lines.count} malformed line(s) of "
              f"{', '.join(source.paths)} (counted on every pass over the files)")
    if config.output.out_dir and worker.is_chief:
        write_outputs(results, os.path.join(config.output.out_dir, subdir))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = dlrm_config.config_from_flags(flags.FLAGS)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if config.run.report_only:
        report_only(config)
        return
    logging.set_verbosity(logging.WARNING)
    if config.training.distribution == "parameter_server":
        from examples.dlrm import parameter_server  # pylint: disable=g-import-not-at-top
        if parameter_server.is_server_task():  # a worker or ps task: serve until killed
            parameter_server.serve()
            return
    train(config)


if __name__ == "__main__":
    dlrm_config.define_flags(flags.FLAGS)
    flags.adopt_module_key_flags(dlrm_config)
    app.run(main)
