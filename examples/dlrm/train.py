r"""Train DLRM with dense vs TT-compressed embedding tables (TT-Rec) on Criteo data.

Needs legacy Keras for TFRS (the module sets TF_USE_LEGACY_KERAS=1 itself when run as a
script, before TensorFlow is imported):

  # the main comparison: synthetic data on DLRM's full Kaggle table sizes, dense vs TT
  python -m examples.dlrm.train --data=synthetic --model=both --steps=10000 \
      --steps_per_epoch=1000

  # the real Criteo sample (hashed into the Kaggle table sizes)
  python -m examples.dlrm.train --data=../shared/data/criteo_kaggle_sample.tsv \
      --model=both --steps=400 --steps_per_epoch=80

  # model sizes and compression ratios for the full Kaggle and Terabyte tables (no training)
  python -m examples.dlrm.train --report_only

  # initializer ablation: sampled Gaussian vs FBTT's naive initializers
  python -m examples.dlrm.train --data=synthetic --init_ablation --tt_tables=7 \
      --table_scale=10 --steps=2000

After training: held-out AUC, log loss and accuracy (Keras metrics over the held-out
split/stream), embedding bytes (float32, TT cache included) and compression ratios,
throughput (examples/s over all steps but the first, which traces), peak memory, a PNG of the
training curves, and a comparison table. With --model_dir: checkpoints (resume continues
the step count: --steps is the total) and TensorBoard logs, one subdirectory per model.
With --export_dir: a portable SavedModel per model, in TF Serving's layout
<export_dir>/<dense|tt>/<step>/ (see examples/dlrm/export.py).

Optimizer: plain SGD with learning rate 0.1, as DLRM's reference Kaggle run (batch 128);
--optimizer=adagrad is available (then a smaller --learning_rate such as 0.01-0.05 is usual).
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

from absl import app, flags, logging  # noqa: E402

import tensorflow as tf  # noqa: E402

from tt_keras import tt_math  # noqa: E402

from examples.dlrm import data as dlrm_data  # noqa: E402

MODEL_KINDS = ("dense", "tt")
INIT_ABLATION = ("sampled_gaussian", "tt_uniform", "tt_naive_uniform", "tt_approx_normal")
REPORT_TT_TABLES = (3, 5, 7)
REPORT_RANKS = (8, 16, 32, 64)

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "synthetic",
                    "'synthetic', or Criteo train.txt-format file(s), comma-separated.")
flags.DEFINE_enum("model", "both", ["dense", "tt", "both"], "Which DLRM(s) to train.")
flags.DEFINE_enum("synthetic_sizes", "kaggle", ["kaggle", "terabyte"],
                  "Table sizes: DLRM's Kaggle or Terabyte ones (for the synthetic source, and "
                  "the hashing moduli of a file's categorical features).")
flags.DEFINE_float("table_scale", 1.0, "Divide every table size by this (rounded up).")
flags.DEFINE_integer("max_table_size", 0, "Cap every table at this many rows (0: no cap).")
flags.DEFINE_integer("embedding_dim", 0, "D; 0: 16 for kaggle sizes, 64 for terabyte.")
flags.DEFINE_integer("tt_tables", 3, "TT-compress this many of the largest tables.")
flags.DEFINE_integer("tt_rank", 16, "TT rank of the TT tables.")
flags.DEFINE_integer("tt_cores", 3, "Number of TT cores (2..4).")
flags.DEFINE_integer("cache_size", 0, "Hot-row cache rows per TT table (0: no cache).")
flags.DEFINE_integer("cache_warmup_steps", 100,
                     "Training steps that only count id frequencies before the cache fills.")
flags.DEFINE_integer("cache_refresh_steps", 0,
                     "Refill the cache with the current hot ids every this many steps "
                     "(0: never).")
flags.DEFINE_string("tt_initializer", "sampled_gaussian", "TTEmbedding initializer.")
flags.DEFINE_enum("lookup_backend", "auto", ["auto", "op", "reference"],
                  "TTEmbedding lookup backend for training.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("steps", 1000, "Total training steps (a resumed run continues to it).")
flags.DEFINE_float("learning_rate", 0.1, "Learning rate.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adagrad", "adam"], "Optimizer.")
flags.DEFINE_integer("steps_per_epoch", 200,
                     "Keras 'epoch' length: periodic held-out evaluation and checkpoint.")
flags.DEFINE_integer("eval_examples", 50000,
                     "Held-out examples for the final evaluation (synthetic stream; a file's "
                     "held-out split is used whole).")
flags.DEFINE_integer("periodic_eval_examples", 8192,
                     "Held-out examples for the evaluation at the end of each epoch.")
flags.DEFINE_integer("eval_batch_size", 1024, "Evaluation batch size.")
flags.DEFINE_integer("eval_every", 10, "Files: every eval_every-th line is held out.")
flags.DEFINE_integer("shuffle_buffer", 0, "Files: shuffle lines with this buffer (0: off).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic data, the shuffling and the models.")
flags.DEFINE_float("zipf_a", 1.05, "Synthetic ids: power-law exponent.")
flags.DEFINE_string("model_dir", "", "Checkpoints + TensorBoard (one subdir per model).")
flags.DEFINE_string("export_dir", "", "Export a SavedModel per model here (subdir per model).")
flags.DEFINE_enum("export_format", "raw", ["raw", "ids"], "Serving signature inputs.")
flags.DEFINE_bool("export_portable", True,
                  "Portable export (standard TF ops only); false keeps the custom ops.")
flags.DEFINE_string("out_dir", "runs/dlrm", "Where the curves PNG and results JSON go.")
flags.DEFINE_bool("report_only", False,
                  "Print model sizes and compression ratios for the full Kaggle and Terabyte "
                  "tables (3/5/7 TT tables x ranks 8/16/32/64) and exit.")
flags.DEFINE_bool("init_ablation", False,
                  "Train the TT model with each of: " + ", ".join(INIT_ABLATION) + ".")
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bars, 2: one line/epoch).")


# ---------------------------------------------------------------------------------------
# Settings (plain objects so that tests can drive training without absl flags)
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSettings:
    data: str = "synthetic"
    batch_size: int = 128
    steps: int = 1000
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    steps_per_epoch: int = 200
    eval_examples: int = 50000
    periodic_eval_examples: int = 8192
    eval_batch_size: int = 1024
    eval_every: int = 10
    shuffle_buffer: int = 0
    seed: int = 0
    zipf_a: float = 1.05
    model_dir: str = ""
    export_dir: str = ""
    export_format: str = "raw"
    export_portable: bool = True
    verbose: int = 1


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

class DataSource:
    """Train / held-out datasets of one source, the same for every model of a run."""

    def __init__(self, settings: TrainSettings, table_sizes: Sequence[int]):
        self.settings = settings
        self.table_sizes = tuple(table_sizes)
        self.synthetic = settings.data == "synthetic"
        if self.synthetic:
            self.source = dlrm_data.SyntheticCriteo(self.table_sizes, seed=settings.seed,
                                                    zipf_a=settings.zipf_a)
            self.paths = None
        else:
            self.paths = [p for p in settings.data.split(",") if p]
            for p in self.paths:
                if not tf.io.gfile.exists(p):
                    raise FileNotFoundError(f"--data file not found: {p}")

    def describe(self) -> str:
        if self.synthetic:
            return (f"synthetic Criteo-like stream (seed {self.settings.seed}, "
                    f"zipf a={self.settings.zipf_a})")
        return (f"{', '.join(self.paths)} (held out: every {self.settings.eval_every}-th line)")

    def train(self, start_step: int = 0) -> tf.data.Dataset:
        """The endless training stream, from batch `start_step` on."""
        s = self.settings
        if self.synthetic:
            return self.source.dataset(s.batch_size, "train", start_batch=start_step)
        return dlrm_data.criteo_tsv_dataset(
            self.paths, self.table_sizes, s.batch_size, split="train", eval_every=s.eval_every,
            repeat=True, skip_batches=start_step, shuffle_buffer=s.shuffle_buffer, seed=s.seed,
            drop_remainder=True)

    def held_out(self, examples: Optional[int] = None) -> tf.data.Dataset:
        """The first `examples` held-out examples (synthetic) or the held-out split (files;
        limited to `examples` if given)."""
        s = self.settings
        b = s.eval_batch_size
        if self.synthetic:
            n = examples or s.eval_examples
            return self.source.dataset(b, "eval", num_batches=max(1, math.ceil(n / b)))
        ds = dlrm_data.criteo_tsv_dataset(self.paths, self.table_sizes, b, split="eval",
                                          eval_every=s.eval_every)
        if examples:
            ds = ds.take(max(1, math.ceil(examples / b)))
        return ds


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryPhase:
    """Peak resident memory of a phase: resets the kernel's high-water mark (VmHWM) where
    Linux allows (/proc/self/clear_refs), and reads getrusage's ru_maxrss (process peak)."""

    def __init__(self):
        self.reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            pass
        self.start_rss_kb = _read_status_kb("VmRSS")

    def result(self) -> Dict[str, Optional[float]]:
        maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = _read_status_kb("VmHWM") if self.reset_ok else None
        return {
            "process_maxrss_mb": maxrss_kb / 1024.0,
            "phase_peak_rss_mb": None if hwm is None else hwm / 1024.0,
            "phase_start_rss_mb": None if self.start_rss_kb is None else self.start_rss_kb / 1024.0,
        }


def _callbacks_module():
    from tt_keras._keras import keras  # pylint: disable=g-import-not-at-top

    return keras.callbacks


def make_callbacks(model, settings: TrainSettings, start_step: int, total_steps: int,
                   manager=None, tensorboard_dir: str = ""):
    """Timing/curve recorder, stop-at-step, checkpointing and TensorBoard callbacks."""
    callbacks = _callbacks_module()

    class Recorder(callbacks.Callback):
        """Per-step loss and the periodic held-out metrics, against the global step; the time
        of every step but the first of this fit (the first traces the train function)."""

        def __init__(self):
            super().__init__()
            self.steps: List[int] = []
            self.losses: List[float] = []
            self.eval_steps: List[int] = []
            self.eval_auc: List[float] = []
            self.eval_logloss: List[float] = []
            self.timed_steps = 0
            self.timed_seconds = 0.0
            self.first_step_seconds = None
            self._step = start_step
            self._t0 = None

        def on_train_batch_begin(self, batch, logs=None):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", float("nan")))  # syncs with the step
            dt = time.perf_counter() - self._t0
            self._step += 1
            if self.first_step_seconds is None:
                self.first_step_seconds = dt
            else:
                self.timed_steps += 1
                self.timed_seconds += dt
            self.steps.append(self._step)
            self.losses.append(loss)
            if self._step >= total_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if "val_auc" in logs:
                self.eval_steps.append(self._step)
                self.eval_auc.append(float(logs["val_auc"]))
                self.eval_logloss.append(float(logs.get("val_logloss", float("nan"))))

        @property
        def examples_per_second(self) -> float:
            if not self.timed_steps:
                return float("nan")
            return self.timed_steps * settings.batch_size / self.timed_seconds

    class Checkpointer(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.last_saved = None

        def save(self):
            step = int(self.model.optimizer.iterations.numpy())
            if step != self.last_saved:
                manager.save(checkpoint_number=step)
                self.last_saved = step

        def on_epoch_end(self, epoch, logs=None):
            self.save()

        def on_train_end(self, logs=None):
            self.save()

    recorder = Recorder()
    cbs = [recorder]
    if manager is not None:
        cbs.append(Checkpointer())
    if tensorboard_dir:
        cbs.append(tensorboard_callback(tensorboard_dir))
    return recorder, cbs


def tensorboard_callback(log_dir: str):
    """keras.callbacks.TensorBoard (epoch summaries) when the tensorboard package is
    installed; else a stand-in writing the same epoch scalars ("epoch_<metric>" under
    log_dir/train and log_dir/validation, step = epoch, which continues on resume) with
    tf.summary.write, which needs only TensorFlow."""
    callbacks = _callbacks_module()
    try:
        import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

        return callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch", write_graph=False,
                                     profile_batch=0)
    except ImportError:
        pass
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    class EpochScalars(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._writers = {}

        def _writer(self, name):
            if name not in self._writers:
                self._writers[name] = tf.summary.create_file_writer(os.path.join(log_dir, name))
            return self._writers[name]

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                with self._writer(split).as_default():
                    tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32),
                                     step=epoch, metadata=metadata)

        def on_train_end(self, logs=None):
            for w in self._writers.values():
                w.flush()

    logging.info("tensorboard is not installed: writing epoch scalars with tf.summary.write")
    return EpochScalars()


# ---------------------------------------------------------------------------------------
# Training one model
# ---------------------------------------------------------------------------------------

def table_report(model) -> List[str]:
    """One line per TT table: shape, parameters, bytes, ratio."""
    from examples.dlrm.model import CAT_FEATURES  # pylint: disable=g-import-not-at-top

    emb = model.embeddings
    lines = []
    for name, n in zip(CAT_FEATURES, model.config.table_sizes):
        if not emb.is_tt(name):
            continue
        layer = emb.tables[name]
        cfg = model.config
        shape = tt_math.TTShape.create(n, cfg.embedding_dim, cfg.tt_rank,
                                       num_cores=cfg.tt_num_cores)
        dense_bytes = 4 * n * cfg.embedding_dim
        lines.append(
            f"  {name}: {n:>10,} x {cfg.embedding_dim}  rows {shape.row_shape} cols "
            f"{shape.col_shape} rank {cfg.tt_rank}: {int(layer.num_params):,} params, "
            f"{int(layer.embedding_bytes):,} B (cache {cfg.cache_size} rows) vs "
            f"{dense_bytes:,} B dense = {dense_bytes / int(layer.embedding_bytes):.1f}x")
    return lines


def train_model(label: str, config, settings: TrainSettings, data: DataSource) -> dict:
    """Builds, trains (resuming from settings.model_dir/label), evaluates and optionally
    exports one DLRM. Returns the measurements."""
    from examples.dlrm import model as dlrm_model  # pylint: disable=g-import-not-at-top

    from tt_keras._keras import keras  # pylint: disable=g-import-not-at-top

    mem = MemoryPhase()
    keras.utils.set_random_seed(settings.seed)
    model = dlrm_model.build_model(config, settings.optimizer, settings.learning_rate,
                                   name=f"dlrm_{label}")
    emb = model.embeddings
    print(f"\n=== {label}: {config.tt_tables} TT tables "
          f"{list(config.tt_features)} rank {config.tt_rank}, D={config.embedding_dim}, "
          f"cache {config.cache_size}, init {config.tt_initializer} ===" if config.tt_tables
          else f"\n=== {label}: all {len(config.table_sizes)} tables dense, "
               f"D={config.embedding_dim} ===")
    for line in table_report(model):
        print(line)
    print(f"  embeddings: {emb.embedding_bytes:,} B (dense would be "
          f"{emb.uncompressed_bytes:,} B); MLP parameters: "
          f"{dlrm_model.dense_param_count(model):,}")

    manager, tb_dir, start_step = None, "", 0
    if settings.model_dir:
        run_dir = os.path.join(settings.model_dir, label)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"),
                                             max_to_keep=3)
        if manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            start_step = int(model.optimizer.iterations.numpy())
            print(f"  restored {manager.latest_checkpoint} (step {start_step})")
        tb_dir = os.path.join(run_dir, "tensorboard")

    total = settings.steps
    recorder, cbs = make_callbacks(model, settings, start_step, total, manager, tb_dir)
    train_seconds = 0.0
    if start_step < total:
        spe = max(1, min(settings.steps_per_epoch, total))
        epochs = math.ceil(total / spe)
        periodic = data.held_out(settings.periodic_eval_examples)
        t0 = time.perf_counter()
        model.fit(data.train(start_step), epochs=epochs, steps_per_epoch=spe,
                  initial_epoch=start_step // spe, validation_data=periodic,
                  callbacks=cbs, verbose=settings.verbose)
        train_seconds = time.perf_counter() - t0
    else:
        print(f"  already trained to step {start_step} >= --steps={total}; evaluating only")
    step = int(model.optimizer.iterations.numpy())

    t0 = time.perf_counter()
    metrics = model.evaluate(data.held_out(), return_dict=True, verbose=0)
    eval_seconds = time.perf_counter() - t0
    memory = mem.result()

    tt_bytes = sum(b for n, b in emb.table_bytes().items() if emb.is_tt(n))
    tt_dense_bytes = sum(4 * size * config.embedding_dim
                         for n, size in zip(dlrm_model.CAT_FEATURES, config.table_sizes)
                         if emb.is_tt(n))
    result = {
        "label": label,
        "tt_tables": config.tt_tables,
        "tt_rank": config.tt_rank if config.tt_tables else None,
        "cache_size": config.cache_size if config.tt_tables else None,
        "tt_initializer": config.tt_initializer if config.tt_tables else None,
        "steps": step,
        "trained_steps_this_run": len(recorder.steps),
        "auc": float(metrics["auc"]),
        "logloss": float(metrics["logloss"]),
        "accuracy": float(metrics["accuracy"]),
        "eval_label_mean": float(metrics["label_mean"]),
        "eval_prediction_mean": float(metrics["prediction_mean"]),
        "embedding_bytes": int(emb.embedding_bytes),
        "uncompressed_embedding_bytes": int(emb.uncompressed_bytes),
        "compression_ratio": emb.uncompressed_bytes / emb.embedding_bytes,
        "tt_tables_ratio": (tt_dense_bytes / tt_bytes) if tt_bytes else None,
        "cache_hit_rate": emb.cache_hit_rates(),
        "examples_per_second": recorder.examples_per_second,
        "first_step_seconds": recorder.first_step_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        **memory,
        "curve": {"steps": recorder.steps, "loss": recorder.losses,
                  "eval_steps": recorder.eval_steps, "eval_auc": recorder.eval_auc,
                  "eval_logloss": recorder.eval_logloss},
    }
    print(f"  held-out: AUC {result['auc']:.4f}  log loss {result['logloss']:.4f}  "
          f"accuracy {result['accuracy']:.4f}  ({step} steps, "
          f"{result['examples_per_second']:.0f} examples/s)")
    if result["cache_hit_rate"]:
        print("  cache hit rate (last training batch): " + ", ".join(
            f"{n} {r:.1%}" for n, r in result["cache_hit_rate"].items()))

    if settings.export_dir:
        from examples.dlrm import export as dlrm_export  # pylint: disable=g-import-not-at-top

        # TF Serving layout: <model_base_path>/<version>/saved_model.pb; version = step.
        path = os.path.join(settings.export_dir, label, str(step))
        ops = dlrm_export.export_dlrm(model, path, settings.export_format,
                                      portable=settings.export_portable)
        custom = [op for op in ops if op.startswith("TTKeras>")]
        print(f"  exported SavedModel to {path} ({len(ops)} op types; "
              f"{'portable: no TTKeras> ops' if not custom else 'custom ops: ' + ', '.join(custom)})")
        result["export_path"] = path
        result["export_custom_ops"] = custom
    del model
    gc.collect()
    keras.backend.clear_session()
    return result


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------

def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def comparison_table(results: Sequence[dict]) -> str:
    head = (f"{'model':<22} {'TT':>3} {'rank':>4} {'cache':>6} {'steps':>6} {'AUC':>7} "
            f"{'logloss':>8} {'acc':>7} {'emb bytes':>10} {'ratio':>8} {'TT ratio':>8} "
            f"{'ex/s':>8} {'peak RSS':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        peak = r.get("phase_peak_rss_mb") or r.get("process_maxrss_mb")
        lines.append(
            f"{r['label']:<22} {r['tt_tables']:>3} {r['tt_rank'] or '-':>4} "
            f"{r['cache_size'] if r['cache_size'] is not None else '-':>6} {r['steps']:>6} "
            f"{r['auc']:>7.4f} {r['logloss']:>8.4f} {r['accuracy']:>7.4f} "
            f"{_fmt_bytes(r['embedding_bytes']):>10} {r['compression_ratio']:>7.1f}x "
            f"{(format(r['tt_tables_ratio'], '.1f') + 'x') if r['tt_tables_ratio'] else '-':>8} "
            f"{r['examples_per_second']:>8.0f} {peak:>6.0f} MB")
    return "\n".join(lines)


def plot_curves(results: Sequence[dict], path: str, window: int = 50) -> str:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        c = r["curve"]
        if c["steps"]:
            loss = np.asarray(c["loss"], np.float64)
            w = max(1, min(window, len(loss)))
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax_loss.plot(c["steps"][w - 1:], smooth, label=r["label"])
        if c["eval_steps"]:
            ax_auc.plot(c["eval_steps"], c["eval_auc"], marker="o", label=r["label"])
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"training log loss (mean of {window} steps)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_auc.set_xlabel("step")
    ax_auc.set_ylabel("held-out AUC (periodic)")
    ax_auc.grid(alpha=0.3)
    ax_auc.legend()
    fig.suptitle("DLRM: dense vs TT-compressed embeddings")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cache_state_bytes(num_rows: int, dim: int, cache_size: int) -> int:
    """Bytes of a TTEmbedding hot-row cache's state (rows, ids, counter, stats), as the layer
    counts them in embedding_bytes, without building a layer."""
    if not cache_size:
        return 0
    from tt_keras import cache as tt_cache  # pylint: disable=g-import-not-at-top

    total = 0
    for _, shape, dtype, _, _ in tt_cache.HotRowCache(
            num_rows, min(cache_size, num_rows)).variable_specs(dim, "float32"):
        total += math.prod(shape) * tf.as_dtype(dtype).size
    return total


def size_report(tt_tables_options=REPORT_TT_TABLES, ranks=REPORT_RANKS, cache_size=0,
                num_cores=3) -> str:
    """Model sizes for DLRM's full Kaggle (D=16) and Terabyte (D=64) tables, from tt_math
    only (no data, no model): embedding parameters / bytes with the largest 3, 5, 7 tables
    TT-compressed at ranks 8..64, and the compression ratios (float32 bytes of the
    embeddings, any hot-row cache's state included; without a cache that is the ratio of
    embedding parameters)."""
    out = []
    for dataset in ("kaggle", "terabyte"):
        sizes = dlrm_data.TABLE_SIZES[dataset]
        dim = dlrm_data.DEFAULT_EMBEDDING_DIM[dataset]
        dense = sum(sizes) * dim
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
        out.append(f"\n{dataset.capitalize()}: {len(sizes)} tables, {sum(sizes):,} rows, D={dim}:"
                   f" {dense:,} embedding parameters = {_fmt_bytes(4 * dense)} (fp32)"
                   + (f"; hot-row cache of {cache_size} rows per TT table" if cache_size else ""))
        head = (f"  {'TT tables':>9} {'rank':>5} {'TT params':>12} {'other params':>13} "
                f"{'total bytes':>12} {'ratio (all)':>12} {'ratio (TT tables)':>18}")
        out.append(head)
        for k in tt_tables_options:
            tt_idx = set(order[:k])
            for rank in ranks:
                tt_params, tt_bytes = 0, 0
                for i in tt_idx:
                    shape = tt_math.TTShape.create(sizes[i], dim, rank, num_cores=num_cores)
                    tt_params += shape.num_params
                    tt_bytes += 4 * shape.num_params + cache_state_bytes(sizes[i], dim,
                                                                         cache_size)
                other = sum(sizes[i] for i in range(len(sizes)) if i not in tt_idx) * dim
                tt_dense = sum(sizes[i] for i in tt_idx) * dim
                total_bytes = tt_bytes + 4 * other
                out.append(f"  {k:>9} {rank:>5} {tt_params:>12,} {other:>13,} "
                           f"{_fmt_bytes(total_bytes):>12} {4 * dense / total_bytes:>11.1f}x "
                           f"{4 * tt_dense / tt_bytes:>17.1f}x")
        largest = order[0]
        s = tt_math.TTShape.create(sizes[largest], dim, 32, num_cores=num_cores)
        out.append(f"  largest table C{largest + 1} ({sizes[largest]:,} rows) at rank 32: rows "
                   f"{s.row_shape}, cols {s.col_shape}, {s.num_params:,} params "
                   f"({s.compression_ratio(sizes[largest]):.0f}x)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

def settings_from_flags() -> TrainSettings:
    return TrainSettings(**{f.name: getattr(FLAGS, f.name)
                            for f in dataclasses.fields(TrainSettings)})


def model_config_from_flags(table_sizes, dim):
    from examples.dlrm import model as dlrm_model  # pylint: disable=g-import-not-at-top

    return dlrm_model.DLRMConfig(
        table_sizes=table_sizes, embedding_dim=dim, tt_tables=FLAGS.tt_tables,
        tt_rank=FLAGS.tt_rank, tt_num_cores=FLAGS.tt_cores, cache_size=FLAGS.cache_size,
        cache_warmup_steps=FLAGS.cache_warmup_steps,
        cache_refresh_steps=FLAGS.cache_refresh_steps,
        tt_initializer=FLAGS.tt_initializer, lookup_backend=FLAGS.lookup_backend)


def run_comparison(runs, settings: TrainSettings, data: DataSource, out_dir: str = "",
                   title: str = "") -> List[dict]:
    """Trains each (label, DLRMConfig) one after the other on the same data; prints the
    comparison table, writes the curves PNG and results JSON to out_dir."""
    results = [train_model(label, cfg, settings, data) for label, cfg in runs]
    results.sort(key=lambda r: r["label"] != "dense")  # dense first in the table
    print(f"\n{title or 'Comparison'} ({data.describe()}, batch {settings.batch_size}, "
          f"{settings.optimizer} lr {settings.learning_rate}):")
    print(comparison_table(results))
    print("ratio: all embedding bytes dense / as stored; TT ratio: the TT tables only "
          "(cache included); ex/s excludes the first (tracing) step; peak RSS: this model's "
          "phase (VmHWM reset at its start, else the process maxrss).")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        png = plot_curves(results, os.path.join(out_dir, "training_curves.png"))
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print(f"curves: {png}\nresults: {os.path.join(out_dir, 'results.json')}")
    return results


def main(argv):
    del argv
    if FLAGS.report_only:
        print(size_report(cache_size=FLAGS.cache_size, num_cores=FLAGS.tt_cores))
        return
    from tt_keras._keras import IS_KERAS_3  # pylint: disable=g-import-not-at-top

    if IS_KERAS_3:
        raise app.UsageError("TFRS needs legacy Keras: run with TF_USE_LEGACY_KERAS=1")
    logging.set_verbosity(logging.WARNING)
    settings = settings_from_flags()
    dim = FLAGS.embedding_dim or dlrm_data.DEFAULT_EMBEDDING_DIM[FLAGS.synthetic_sizes]
    sizes = dlrm_data.scale_table_sizes(dlrm_data.TABLE_SIZES[FLAGS.synthetic_sizes],
                                        FLAGS.table_scale, FLAGS.max_table_size)
    data = DataSource(settings, sizes)
    print(f"tables ({FLAGS.synthetic_sizes} / {FLAGS.table_scale:g}"
          f"{', cap ' + str(FLAGS.max_table_size) if FLAGS.max_table_size else ''}): "
          f"{sum(sizes):,} rows, D={dim}, dense embeddings {_fmt_bytes(4 * dim * sum(sizes))}")
    tt_cfg = model_config_from_flags(sizes, dim)
    if FLAGS.init_ablation:
        if not FLAGS.tt_tables:
            raise app.UsageError("--init_ablation needs --tt_tables > 0")
        runs = [(init, tt_cfg.replace(tt_initializer=init)) for init in INIT_ABLATION]
        run_comparison(runs, settings, data, os.path.join(FLAGS.out_dir, "init_ablation"),
                       "Initializer ablation")
        return
    # TT first: its memory peak is then not inflated by what the large dense model leaves.
    runs = []
    if FLAGS.model in ("tt", "both"):
        if not FLAGS.tt_tables:
            raise app.UsageError("--model=tt needs --tt_tables > 0")
        runs.append(("tt", tt_cfg))
    if FLAGS.model in ("dense", "both"):
        runs.append(("dense", tt_cfg.replace(tt_tables=0)))
    run_comparison(runs, settings, data, FLAGS.out_dir, "Dense vs TT")


if __name__ == "__main__":
    app.run(main)
