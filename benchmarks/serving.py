"""Serving latency and size of the DLRM exports, served by C++ (serving/saved_model_runner),
the SavedModel loader TF Serving is built on.

    python -m benchmarks.serving                         # Kaggle sizes, 7 TT tables, rank 32
    python -m benchmarks.serving --table_scale=100 --rounds=1 --repeats=50   # a quick look

Three SavedModels of the same DLRM (examples/dlrm, TFRS; raw-feature signature of
examples/dlrm/export.py):
  portable  TT tables (the --tt_tables largest, rank --tt_rank) as standard TF ops
            (gathers + batched matmuls): what stock TF Serving runs
  native    the same TT model keeping tt_keras's fused op (a TF Serving built with the op;
            here: the runner loads tt_keras/ops/_tt_ops.so first)
  dense     every table uncompressed (2.16 GB of tables at the Kaggle sizes)

For each, the runner loads the export in a fresh process and runs `serving_default` on
requests of --batches rows (random Criteo-like raw rows: counts and hex ids, some missing)
--warmup untimed and --repeats timed times each. The three exports are served in turns,
--rounds times, and the latencies of all rounds pooled: p50 and p99 per batch size, from
Session::Run's wall time (what the server adds around it -- HTTP, JSON -- is not counted).
Also: size on disk, load time, and the serving process's peak RSS.

The models are not trained: serving cost does not depend on the weights' values. Runs under
legacy Keras (TFRS needs it; set as the module starts when run as a script).
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", ["portable", "native", "dense"], "Exports to compare.")
flags.DEFINE_list("batches", ["1", "64", "1024"], "Request batch sizes.")
flags.DEFINE_integer("tt_tables", 7, "TT-compress this many of the largest tables.")
flags.DEFINE_integer("tt_rank", 32, "TT rank.")
flags.DEFINE_float("table_scale", 1.0, "Divide the Kaggle table sizes by this.")
flags.DEFINE_integer("rounds", 3, "Rounds of serving every export in turn.")
flags.DEFINE_integer("warmup", 10, "Untimed runs of each request per round.")
flags.DEFINE_integer("repeats", 100, "Timed runs of each request per round.")
flags.DEFINE_string("work_dir", "", "Where the exports go (default: a temporary directory, "
                    "removed at the end; the dense export needs 2.2 GB).")
flags.DEFINE_string("out", "", "Also write the results as JSON here.")
flags.DEFINE_integer("seed", 0, "Seed of the requests.")


def dir_bytes(path):
    """Bytes of all files under path."""
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def export(kind, config, path):
    """Builds the DLRM for `kind`, exports it to `path`; returns the error text or None."""
    from examples.dlrm import export as dlrm_export  # pylint: disable=g-import-not-at-top
    from examples.dlrm import model as dlrm_model  # pylint: disable=g-import-not-at-top

    cfg = config.replace(tt_tables=0) if kind == "dense" else config
    try:
        model = dlrm_model.build_model(cfg)
        dlrm_export.export_dlrm(model, path, portable=kind != "native")
    except (MemoryError, OSError, ValueError) as e:  # report what does not fit, go on
        return f"{type(e).__name__}: {e}"
    finally:
        model = None
        gc.collect()
    return None


def percentiles(latencies):
    seconds = np.concatenate(latencies)
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3),
            "p99_ms": float(np.percentile(seconds, 99) * 1e3), "runs": int(seconds.size)}


def serve_in_turns(dirs, requests, binary, library):
    """{kind: {"latencies": [per round: [per batch: seconds]], "load_s": [per round],
    "peak_rss_bytes": [per round], "error": why it could not be served, or None}}."""
    from serving import runner  # pylint: disable=g-import-not-at-top

    runs = {kind: {"latencies": [], "load_s": [], "peak_rss_bytes": [], "error": None}
            for kind in dirs}
    for _ in range(FLAGS.rounds):
        for kind, path in dirs.items():
            if runs[kind]["error"]:
                continue
            try:
                result = runner.run_saved_model(
                    path, requests, binary=binary, warmup=FLAGS.warmup, repeats=FLAGS.repeats,
                    op_libraries=[library] if kind == "native" else [])
            except RuntimeError as e:
                runs[kind]["error"] = str(e)[-500:]
                continue
            runs[kind]["latencies"].append(result.latencies)
            runs[kind]["load_s"].append(result.load_seconds)
            runs[kind]["peak_rss_bytes"].append(result.peak_rss_bytes)
    return runs


def summarize(sizes, runs, batches, errors):
    rows = []
    for kind in FLAGS.kinds:
        row = {"kind": kind, "bytes_on_disk": sizes.get(kind),
               "error": errors.get(kind) or runs.get(kind, {}).get("error")}
        run = runs.get(kind)
        if run and run["latencies"]:
            row["load_s"] = float(np.median(run["load_s"]))
            row["peak_rss_bytes"] = int(max(run["peak_rss_bytes"]))
            for i, batch in enumerate(batches):
                row[f"batch_{batch}"] = percentiles([lat[i] for lat in run["latencies"]])
        rows.append(row)
    return rows


def format_table(rows, batches):
    head = ["export", "on disk"] + [f"b={b} p50 / p99 ms" for b in batches] + [
        "load s", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        size = row["bytes_on_disk"]
        cells = [row["kind"], f"{size / 2**20:,.1f} MiB" if size else "-"]
        if "load_s" in row:
            cells += [f"{row[f'batch_{b}']['p50_ms']:.2f} / {row[f'batch_{b}']['p99_ms']:.2f}"
                      for b in batches]
            cells += [f"{row['load_s']:.1f}", f"{row['peak_rss_bytes'] / 2**30:.2f} GiB"]
        else:
            cells += [f"not served: {row['error']}"] + [""] * (len(batches) + 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    from tt_keras.ops import tt_ops_library  # pylint: disable=g-import-not-at-top

    from examples.dlrm import data as dlrm_data  # pylint: disable=g-import-not-at-top
    from examples.dlrm.config import DLRMConfig  # pylint: disable=g-import-not-at-top
    from serving import criteo_requests, runner  # pylint: disable=g-import-not-at-top

    batches = [int(b) for b in FLAGS.batches]
    sizes = dlrm_data.scale_table_sizes(dlrm_data.KAGGLE_TABLE_SIZES, FLAGS.table_scale)
    config = DLRMConfig(table_sizes=sizes, tt_tables=FLAGS.tt_tables, tt_rank=FLAGS.tt_rank)
    binary = runner.build()
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="serving_bench_")
    dirs, bytes_on_disk, errors = {}, {}, {}
    try:
        for kind in FLAGS.kinds:
            path = os.path.join(work, kind)
            errors[kind] = export(kind, config, path)
            if errors[kind] is None:
                dirs[kind] = path
                bytes_on_disk[kind] = dir_bytes(path)
        requests = [criteo_requests.random_rows(b, seed=FLAGS.seed + b) for b in batches]
        runs = serve_in_turns(dirs, requests, binary, tt_ops_library.path)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarize(bytes_on_disk, runs, batches, errors)
    print(f"DLRM, table sizes Kaggle / {FLAGS.table_scale:g}, TT on the {FLAGS.tt_tables} "
          f"largest tables at rank {FLAGS.tt_rank}; {FLAGS.rounds} rounds x {FLAGS.repeats} "
          f"timed runs per batch size, exports served in turns by serving/saved_model_runner")
    print(format_table(rows, batches))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"flags": {k: FLAGS[k].value for k in (
                "kinds", "batches", "tt_tables", "tt_rank", "table_scale", "rounds", "warmup",
                "repeats", "seed")}, "results": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
