"""The quality study's analysis: paired gaps against the dense model, and the Pareto plot.

A run is one trained model: a dict with its configuration name, optimizer and replicate,
and the trainer's result (examples/dlrm/reports.model_result: held-out AUC and log loss,
embedding bytes as the layers count them, examples/s). A replicate is a seed of the
synthetic stream, or a fold of a cross-validation on files. The dense model of the same
optimizer and replicate saw the same training batches and the same held-out set (and the
same teacher), so the gap of a configuration is the mean over replicates of its paired
differences, with a Student-t interval. (Over folds the interval is optimistic: the folds'
training sets overlap, so their gaps are not independent.)
"""

import math
from typing import Dict, List, Sequence, Tuple

# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (beyond: the normal's).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
         2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

DENSE = "dense"
# What "no measurable loss" means on Criteo: 0.001 of AUC or of log loss.
AUC_TARGET = -0.001
LOGLOSS_TARGET = 0.001
COMPRESSION_TARGET = 100.0


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` degrees of freedom (dof >= 1)."""
    return _T975[dof - 1] if dof <= len(_T975) else 1.960


def mean_interval(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, half-width of its 95% interval); the half-width is nan for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * sd / math.sqrt(n)


def _mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarize(runs: Sequence[dict]) -> List[dict]:
    """One row per (configuration, optimizer): paired gaps to dense, compression, speed.

    A replicate (seed or fold) counts for a configuration only where the dense run of that
    optimizer and replicate exists. Gaps are TT minus dense: a negative AUC gap and a
    positive log-loss gap are losses.
    """
    by_key: Dict[Tuple[str, str, int], dict] = {
        (r["config"], r["optimizer"], r["replicate"]): r["result"] for r in runs}
    rows = []
    for config, optimizer in sorted({(c, o) for c, o, _ in by_key}):
        replicates = sorted(k for c, o, k in by_key if (c, o) == (config, optimizer)
                            and (DENSE, o, k) in by_key)
        if not replicates:
            continue
        mine = [by_key[(config, optimizer, k)] for k in replicates]
        dense = [by_key[(DENSE, optimizer, k)] for k in replicates]
        auc_gaps = [a["auc"] - d["auc"] for a, d in zip(mine, dense)]
        auc_gap = mean_interval(auc_gaps)
        logloss_gap = mean_interval([a["logloss"] - d["logloss"] for a, d in zip(mine, dense)])
        rows.append({
            "config": config,
            "optimizer": optimizer,
            "replicates": replicates,
            "replicate_auc": [r["auc"] for r in mine],
            "replicate_auc_gap": auc_gaps,
            "auc": _mean([r["auc"] for r in mine]),
            "logloss": _mean([r["logloss"] for r in mine]),
            "auc_gap": auc_gap[0],
            "auc_gap_ci": auc_gap[1],
            "logloss_gap": logloss_gap[0],
            "logloss_gap_ci": logloss_gap[1],
            "embedding_bytes": mine[0]["embedding_bytes"],
            "cache_bytes": mine[0].get("cache_bytes", 0),
            "compression": mine[0]["compression_ratio"],
            "examples_per_second": _mean([r["examples_per_second"] for r in mine]),
            "speed_vs_dense": _mean([a["examples_per_second"] / d["examples_per_second"]
                                     for a, d in zip(mine, dense)]),
            "meets_target": (config != DENSE and mine[0]["compression_ratio"]
                             >= COMPRESSION_TARGET and auc_gap[0] >= AUC_TARGET
                             and logloss_gap[0] <= LOGLOSS_TARGET),
        })
    return rows


def pareto_front(rows: Sequence[dict]) -> List[dict]:
    """The rows no other row of the same optimizer beats on both compression and AUC gap."""
    front = []
    for r in rows:
        if r["config"] == DENSE:
            continue
        beaten = any(o is not r and o["config"] != DENSE and o["optimizer"] == r["optimizer"]
                     and o["compression"] >= r["compression"] and o["auc_gap"] >= r["auc_gap"]
                     and (o["compression"] > r["compression"] or o["auc_gap"] > r["auc_gap"])
                     for o in rows)
        if not beaten:
            front.append(r)
    return front


def format_summary(rows: Sequence[dict]) -> str:
    """The summary as a text table (gaps as mean +- 95% half-width over the replicates)."""
    head = (f"{'configuration':<28} {'opt':<8} {'n':>2} {'AUC':>7} {'AUC gap':>17} "
            f"{'logloss gap':>17} {'compression':>11} {'ex/s':>7} {'vs dense':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def gap(key, r=r):
            ci = r[key + "_ci"]
            return f"{r[key]:+.4f}" + (f" +-{ci:.4f}" if not math.isnan(ci) else " (one)")

        lines.append(
            f"{r['config']:<28} {r['optimizer']:<8} {len(r['replicates']):>2} {r['auc']:>7.4f} "
            f"{gap('auc_gap'):>17} {gap('logloss_gap'):>17} {r['compression']:>10.1f}x "
            f"{r['examples_per_second']:>7.0f} {r['speed_vs_dense']:>7.2f}x"
            + ("  <- meets target" if r["meets_target"] else ""))
    return "\n".join(lines)


def format_replicates(rows: Sequence[dict], kind: str = "seed") -> str:
    """Each row's held-out AUC per replicate (kind: "seed" or "fold"), then the gap to
    dense per replicate under each TT configuration."""
    replicates = sorted({k for r in rows for k in r["replicates"]})
    head = f"{'configuration':<28} {'opt':<8} " + " ".join(
        f"{f'{kind} {k}':>8}" for k in replicates) + f" {'mean':>8}"
    lines = [head, "-" * len(head)]
    for what, key, fmt in (("", "replicate_auc", "8.4f"), (" gap", "replicate_auc_gap", "+8.4f")):
        for r in rows:
            if what and r["config"] == DENSE:
                continue
            values = dict(zip(r["replicates"], r[key]))
            mean = r["auc" + ("_gap" if what else "")]
            lines.append(f"{r['config'] + what:<28} {r['optimizer']:<8} " + " ".join(
                format(values[k], fmt) if k in values else f"{'-':>8}" for k in replicates)
                + f" {mean:{fmt}}")
    return "\n".join(lines)


def plot_pareto(rows: Sequence[dict], path: str, title: str, paired_over: str = "seed") -> str:
    """AUC gap (mean, 95% interval) against compression, per optimizer; the front joined."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, ax = plt.subplots(figsize=(9, 5.5))
    front = pareto_front(rows)
    for k, optimizer in enumerate(sorted({r["optimizer"] for r in rows})):
        mine = [r for r in rows if r["optimizer"] == optimizer and r["config"] != DENSE]
        color = f"C{k}"
        ax.errorbar([r["compression"] for r in mine], [r["auc_gap"] for r in mine],
                    yerr=[0 if math.isnan(r["auc_gap_ci"]) else r["auc_gap_ci"] for r in mine],
                    fmt="o", color=color, capsize=3, label=optimizer)
        for r in mine:
            ax.annotate(r["config"], (r["compression"], r["auc_gap"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        line = sorted((r for r in front if r["optimizer"] == optimizer),
                      key=lambda r: r["compression"])
        ax.plot([r["compression"] for r in line], [r["auc_gap"] for r in line], "-",
                color=color, alpha=0.5)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(AUC_TARGET, color="red", ls="--", lw=0.8, label="-0.001 AUC")
    ax.axvline(COMPRESSION_TARGET, color="gray", ls=":", lw=0.8, label="100x")
    compressions = {r["compression"] for r in rows if r["config"] != DENSE}
    if len(compressions) == 1:  # one point: a log axis needs a range around it
        c = compressions.pop()
        ax.set_xlim(c / 3, c * 3)
    ax.set_xscale("log")
    ax.set_xlabel("compression of all embedding memory (dense bytes / bytes as stored)")
    ax.set_ylabel(f"held-out AUC, TT minus dense (paired by {paired_over})")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
