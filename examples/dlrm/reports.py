"""What the trainer reports, as data, and the formatters that turn it into text.

- `model_result`: the measurements of one trained model (a JSON-ready dict);
- `comparison_rows` / `format_comparison`: the table comparing the models of a run;
- `tt_table_rows` / `format_tt_tables`: each TT table of a model;
- `init_from_rows` / `format_init_from`: a TT model started from a dense checkpoint: the
  dense model, the TT model right after TT-SVD and after fine-tuning;
- `size_report` / `format_size_report`: sizes and compression ratios of DLRM on the full
  Kaggle and Terabyte tables, from unbuilt `tt_keras.TTEmbedding`s (no variables, no data).

Every byte count of a TT table is the layer's own (`TTEmbedding.embedding_bytes`: cores plus
any hot-row cache, `cache_bytes`); a dense table is 4 * rows * D bytes (float32).
"""

from typing import Dict, List, Optional, Sequence

import tt_keras

from examples.dlrm import data as dlrm_data

REPORT_TT_TABLES = (3, 5, 7)
REPORT_RANKS = (8, 16, 32, 64)
LARGEST_TABLE_RANK = 32
FLOAT_BYTES = 4


def format_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def _or_dash(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def format_tables(tables) -> str:
    """A line on the tables of a run (config.TablesConfig)."""
    sizes, dim = tables.table_sizes(), tables.dim()
    cap = f", cap {tables.max_table_size}" if tables.max_table_size else ""
    return (f"tables ({tables.synthetic_sizes} / {tables.table_scale:g}{cap}): "
            f"{sum(sizes):,} rows, D={dim}, dense embeddings "
            f"{format_bytes(FLOAT_BYTES * dim * sum(sizes))}")


# ---------------------------------------------------------------------------------------
# One trained model
# ---------------------------------------------------------------------------------------

def model_result(label: str, model, metrics: Dict[str, float], curve: Dict[str, list],
                 timing: Dict[str, Optional[float]], memory: Dict[str, Optional[float]]) -> dict:
    """The result dict of one model (examples.dlrm.model.DLRM) after training.

    Args:
      metrics: model.evaluate's dict on the held-out data.
      curve: callbacks.StepRecorder.curve().
      timing: examples_per_second, first_step_seconds, train_seconds, eval_seconds.
      memory: memory.MemoryPhase.result().
    """
    config, emb = model.config, model.embeddings
    tt = config.tt_tables > 0
    tt_bytes = sum(b for name, b in emb.table_bytes().items() if emb.is_tt(name))
    tt_dense_bytes = sum(FLOAT_BYTES * n * config.embedding_dim
                         for name, n in zip(dlrm_data.CAT_FEATURES, config.table_sizes)
                         if emb.is_tt(name))
    return {
        "label": label,
        "tt_tables": config.tt_tables,
        "tt_rank": config.tt_rank if tt else None,
        "cache_size": config.cache_size if tt else None,
        "cache_sizes": ({name: config.table_cache_size(name) for name in config.tt_features}
                        if tt else None),
        "tt_initializer": config.tt_initializer if tt else None,
        "steps": int(model.optimizer.iterations.numpy()),
        "trained_steps_this_run": len(curve["steps"]),
        **{key: float(metrics[key]) for key in ("auc", "logloss", "accuracy")},
        "eval_label_mean": float(metrics["label_mean"]),
        "eval_prediction_mean": float(metrics["prediction_mean"]),
        "embedding_bytes": int(emb.embedding_bytes),
        "cache_bytes": int(emb.cache_bytes),
        "uncompressed_embedding_bytes": int(emb.uncompressed_bytes),
        "compression_ratio": emb.uncompressed_bytes / emb.embedding_bytes,
        "tt_tables_ratio": (tt_dense_bytes / tt_bytes) if tt_bytes else None,
        "cache_hit_rate": emb.cache_hit_rates(),
        **timing,
        **memory,
        "curve": curve,
    }


def format_result(result: dict) -> str:
    lines = [f"  held-out: AUC {result['auc']:.4f}  log loss {result['logloss']:.4f}  "
             f"accuracy {result['accuracy']:.4f}  ({result['steps']} steps, "
             f"{result['examples_per_second']:.0f} examples/s)"]
    if result["cache_hit_rate"]:
        lines.append("  cache hit rate (last training batch): " + ", ".join(
            f"{n} {r:.1%}" for n, r in result["cache_hit_rate"].items()))
    return "\n".join(lines)


def tt_table_rows(model) -> List[dict]:
    """One row per TT table of a DLRM: shape, parameters, bytes (the layer's), ratio."""
    config, emb = model.config, model.embeddings
    rows = []
    for name, n in zip(dlrm_data.CAT_FEATURES, config.table_sizes):
        if emb.is_tt(name):
            layer = emb.tables[name]
            rows.append({"feature": name, "rows": n, "dim": config.embedding_dim,
                         "row_shape": layer.tt_shape.row_shape,
                         "col_shape": layer.tt_shape.col_shape, "rank": config.tt_rank,
                         "params": int(layer.num_params),
                         "cache_size": config.table_cache_size(name),
                         "bytes": int(layer.embedding_bytes),
                         "dense_bytes": FLOAT_BYTES * n * config.embedding_dim})
    return rows


def format_tt_tables(rows: Sequence[dict]) -> str:
    return "\n".join(
        f"  {r['feature']}: {r['rows']:>10,} x {r['dim']}  rows {r['row_shape']} cols "
        f"{r['col_shape']} rank {r['rank']}: {r['params']:,} params, {r['bytes']:,} B (cache "
        f"{r['cache_size']} rows) vs {r['dense_bytes']:,} B dense = "
        f"{r['dense_bytes'] / r['bytes']:.1f}x" for r in rows)


def format_model_header(label: str, model, mlp_params: int) -> str:
    """The banner of one model: its tables, then each TT table, then its sizes."""
    c, emb = model.config, model.embeddings
    if c.tt_tables:
        head = (f"\n=== {label}: {c.tt_tables} TT tables {list(c.tt_features)} rank "
                f"{c.tt_rank}, D={c.embedding_dim}, cache {c.cache_size}, init "
                f"{c.tt_initializer} ===\n" + format_tt_tables(tt_table_rows(model)))
    else:
        head = f"\n=== {label}: all {len(c.table_sizes)} tables dense, D={c.embedding_dim} ==="
    return (f"{head}\n  embeddings: {emb.embedding_bytes:,} B (dense would be "
            f"{emb.uncompressed_bytes:,} B); MLP parameters: {mlp_params:,}")


# ---------------------------------------------------------------------------------------
# A TT model started from a dense checkpoint (--init_from)
# ---------------------------------------------------------------------------------------

def init_from_rows(result: dict) -> List[dict]:
    """Held-out AUC and log loss of the dense model, of the TT model right after TT-SVD
    (before fine-tuning) and after fine-tuning, from the result of a run with --init_from
    (its "init_from": init_from.initialize's dict)."""
    init = result["init_from"]
    stages = (("dense (checkpoint)", init["dense_steps"], init["dense"]),
              ("TT after TT-SVD", 0, init["tt_svd"]),
              ("TT fine-tuned", result["steps"], result))
    return [{"model": model, "steps": steps,
             **{key: float(metrics[key]) for key in ("auc", "logloss", "accuracy")}}
            for model, steps, metrics in stages]


def format_init_from(rows: Sequence[dict], tables: Sequence[dict] = ()) -> str:
    """The init_from_rows table; with init_from's table rows, each TT table's relative
    error after TT-SVD."""
    head = f"  {'model':<20} {'steps':>8} {'AUC':>7} {'logloss':>8} {'acc':>7}"
    lines = ["  --init_from: held-out metrics (TT steps are fine-tuning steps)", head,
             "  " + "-" * (len(head) - 2)]
    for r in rows:
        lines.append(f"  {r['model']:<20} {_or_dash(r['steps']):>8} {r['auc']:>7.4f} "
                     f"{r['logloss']:>8.4f} {r['accuracy']:>7.4f}")
    if tables:
        lines.append("  TT-SVD relative error ||W - TT||_F / ||W||_F: " + ", ".join(
            f"{t['feature']} ({t['rows']:,} rows, ranks {t['ranks']}) {t['relative_error']:.3g}"
            for t in tables))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The models of a run
# ---------------------------------------------------------------------------------------

COMPARISON_NOTE = ("ratio: all embedding bytes dense / as stored; TT ratio: the TT tables only "
                   "(cache included); ex/s excludes the first (tracing) step; peak RSS: this "
                   "model's phase (VmHWM reset at its start, else the process maxrss).")


def comparison_rows(results: Sequence[dict]) -> List[dict]:
    """One row per result: the columns of the comparison table."""
    keys = ("label", "tt_tables", "tt_rank", "cache_size", "steps", "auc", "logloss",
            "accuracy", "embedding_bytes", "compression_ratio", "tt_tables_ratio",
            "examples_per_second")
    return [dict({k: r[k] for k in keys},
                 peak_rss_mb=r.get("phase_peak_rss_mb") or r.get("process_maxrss_mb"))
            for r in results]


def format_comparison(rows: Sequence[dict]) -> str:
    head = (f"{'model':<22} {'TT':>3} {'rank':>4} {'cache':>6} {'steps':>6} {'AUC':>7} "
            f"{'logloss':>8} {'acc':>7} {'emb bytes':>10} {'ratio':>8} {'TT ratio':>8} "
            f"{'ex/s':>8} {'peak RSS':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        tt_ratio = "-" if r["tt_tables_ratio"] is None else f"{r['tt_tables_ratio']:.1f}x"
        lines.append(
            f"{r['label']:<22} {r['tt_tables']:>3} {_or_dash(r['tt_rank']):>4} "
            f"{_or_dash(r['cache_size']):>6} {r['steps']:>6} {r['auc']:>7.4f} "
            f"{r['logloss']:>8.4f} {r['accuracy']:>7.4f} "
            f"{format_bytes(r['embedding_bytes']):>10} {r['compression_ratio']:>7.1f}x "
            f"{tt_ratio:>8} {r['examples_per_second']:>8.0f} "
            f"{_or_dash(r['peak_rss_mb'], '.0f'):>6} MB")
    return "\n".join(lines + [COMPARISON_NOTE])


# ---------------------------------------------------------------------------------------
# Sizes of the full Kaggle and Terabyte models
# ---------------------------------------------------------------------------------------

def tt_layer(rows: int, dim: int, rank: int, num_cores: int, cache_size: int = 0):
    """An unbuilt TTEmbedding: its shape and byte counts, without variables."""
    cache = {"cache_size": cache_size} if cache_size else {}
    return tt_keras.TTEmbedding(rows, dim, tt_rank=rank, num_cores=num_cores, **cache)


def _size_row(sizes: Sequence[int], order: Sequence[int], dim: int, tt_tables: int,
              rank: int, num_cores: int, cache_size: int) -> dict:
    layers = [tt_layer(sizes[i], dim, rank, num_cores, cache_size) for i in order[:tt_tables]]
    tt_rows = sum(sizes[i] for i in order[:tt_tables])
    tt_bytes = sum(layer.embedding_bytes for layer in layers)
    other = (sum(sizes) - tt_rows) * dim
    total = tt_bytes + FLOAT_BYTES * other
    return {"tt_tables": tt_tables, "rank": rank,
            "tt_params": sum(layer.num_params for layer in layers), "other_params": other,
            "tt_bytes": tt_bytes, "cache_bytes": sum(layer.cache_bytes for layer in layers),
            "total_bytes": total, "ratio_all": FLOAT_BYTES * sum(sizes) * dim / total,
            "ratio_tt": FLOAT_BYTES * tt_rows * dim / tt_bytes}


def size_report(tt_tables_options=REPORT_TT_TABLES, ranks=REPORT_RANKS, cache_size: int = 0,
                num_cores: int = 3) -> List[dict]:
    """Per dataset (kaggle, terabyte): the dense size, one row per (number of TT tables,
    rank) with the largest tables TT-compressed, and the largest table's TT shape at rank
    32. Ratios are of float32 embedding bytes, any hot-row cache's state included (without
    a cache: the ratio of embedding parameters)."""
    out = []
    for dataset, sizes in dlrm_data.TABLE_SIZES.items():
        dim = dlrm_data.DEFAULT_EMBEDDING_DIM[dataset]
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
        largest = tt_layer(sizes[order[0]], dim, LARGEST_TABLE_RANK, num_cores)
        out.append({
            "dataset": dataset, "num_tables": len(sizes), "rows": sum(sizes), "dim": dim,
            "dense_params": sum(sizes) * dim, "dense_bytes": FLOAT_BYTES * sum(sizes) * dim,
            "cache_size": cache_size, "num_cores": num_cores,
            "configs": [_size_row(sizes, order, dim, k, rank, num_cores, cache_size)
                        for k in tt_tables_options for rank in ranks],
            "largest": {"feature": dlrm_data.CAT_FEATURES[order[0]], "rows": sizes[order[0]],
                        "rank": LARGEST_TABLE_RANK, "row_shape": largest.tt_shape.row_shape,
                        "col_shape": largest.tt_shape.col_shape,
                        "params": largest.num_params, "ratio": largest.compression_ratio},
        })
    return out


def format_size_report(report: Sequence[dict]) -> str:
    out = []
    for d in report:
        cache = (f"; hot-row cache of {d['cache_size']} rows per TT table"
                 if d["cache_size"] else "")
        out.append(f"\n{d['dataset'].capitalize()}: {d['num_tables']} tables, {d['rows']:,} "
                   f"rows, D={d['dim']}: {d['dense_params']:,} embedding parameters = "
                   f"{format_bytes(d['dense_bytes'])} (fp32){cache}")
        out.append(f"  {'TT tables':>9} {'rank':>5} {'TT params':>12} {'other params':>13} "
                   f"{'total bytes':>12} {'ratio (all)':>12} {'ratio (TT tables)':>18}")
        for r in d["configs"]:
            out.append(f"  {r['tt_tables']:>9} {r['rank']:>5} {r['tt_params']:>12,} "
                       f"{r['other_params']:>13,} {format_bytes(r['total_bytes']):>12} "
                       f"{r['ratio_all']:>11.1f}x {r['ratio_tt']:>17.1f}x")
        t = d["largest"]
        out.append(f"  largest table {t['feature']} ({t['rows']:,} rows) at rank {t['rank']}: "
                   f"rows {t['row_shape']}, cols {t['col_shape']}, {t['params']:,} params "
                   f"({t['ratio']:.0f}x)")
    return "\n".join(out)
