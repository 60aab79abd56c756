"""Figures of a run: training curves (like the paper's Fig. 11) and a confusion matrix (Fig. 13).

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so nothing global such as the backend is
touched and plotting works without a display.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

CLASSES = ("background", "vertebra")


def plot_curves(rows: list[dict], path: str | os.PathLike) -> None:
    """Accuracy and loss per epoch, train and validation; ``rows`` are metrics.jsonl lines."""
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, title in zip(fig.subplots(1, 2), ("acc", "loss"), ("(a) accuracy", "(b) loss")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", ms=3, label="training")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "s-", ms=3, label="validation")
        if key == "loss":
            best = min(rows, key=lambda r: r["val_loss"])
            ax.plot([best["epoch"]], [best["val_loss"]], "k*", ms=10, label="best (kept)")
        ax.set(title=title, xlabel="epoch", ylabel=key)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, title: str = "validation") -> None:
    """(2, 2) counts, rows true class, columns predicted; each cell with its share of all patches."""
    cm = np.asarray(cm)
    total = max(int(cm.sum()), 1)
    fig = Figure(figsize=(4.6, 4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        color = "white" if v > cm.max() / 2 else "black"
        ax.text(j, i, f"{v:,}\n{100 * v / total:.1f}%", ha="center", va="center", color=color)
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix ({title})")
    fig.savefig(path, dpi=120)
