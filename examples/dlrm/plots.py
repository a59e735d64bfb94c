"""The training curves of a run's models as a PNG (matplotlib, no display needed)."""

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def plot_curves(results: Sequence[dict], path: str, window: int = 50) -> str:
    """Smoothed training loss (moving mean of `window` steps) and the periodic held-out AUC
    against the global step, one line per result (reports.model_result). Returns path."""
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
    for ax, ylabel in ((ax_loss, f"training log loss (mean of {window} steps)"),
                       (ax_auc, "held-out AUC (periodic)")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("DLRM: dense vs TT-compressed embeddings")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
