"""Run plots as PNG: training curves, test confusion matrix, ROC curves (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from featurestore.train import FitResult


def new_figure(
    figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots: Any
) -> tuple[Figure, Any]:
    """A matplotlib Figure and its axes, made without pyplot.

    The one plotting style of the project: no global figure state (nothing to close, safe in
    threads and servers) and no GUI backend (runs are written on headless machines).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Figure, path: Path, *, dpi: int = 100, tight: bool = True) -> None:
    """Write a figure as PNG atomically (a reader never sees half a plot)."""
    from featurestore.fileio import atomic_path

    if tight:
        fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss, accuracy, F1 (train vs val) and val AUC per epoch, 2x2 panels."""
    epochs = [int(r["epoch"]) for r in history]
    fig, axes = new_figure(nrows=2, ncols=2, figsize=(9, 6.5))
    for ax, metric in zip(axes.flat, ("loss", "acc", "f1"), strict=False):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", label="val")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
    ax = axes.flat[3]
    ax.plot(epochs, [r["val_auc"] for r in history], "o-", color="tab:orange", label="val")
    ax.set_title("auc")
    ax.set_xlabel("epoch")
    ax.legend()
    save_figure(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, *, title: str
) -> None:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    cm = np.asarray(matrix)
    fig, ax = new_figure(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    save_figure(fig, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """One ROC curve per entry (a split, or a class one-vs-rest) from (y_positive, p_positive);
    entries with one class only are skipped."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = new_figure(figsize=(4.5, 4.5))
    for split, (y, p) in curves.items():
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{split} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_label_confusions(
    targets: np.ndarray, predictions: np.ndarray, names: Sequence[str], path: Path
) -> None:
    """One 2 x 2 confusion matrix per label (observed entries, at the label's threshold)."""
    fig, axes = new_figure(
        figsize=(2.4 * len(names) + 0.5, 2.8), nrows=1, ncols=len(names), squeeze=False
    )
    for k, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        mask = ~np.isnan(targets[:, k])
        y, d = targets[mask, k].astype(int), predictions[mask, k].astype(int)
        cm = np.array([[np.sum((y == i) & (d == j)) for j in (0, 1)] for i in (0, 1)])
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks([0, 1], ["-", "+"])
        ax.set_yticks([0, 1], ["-", "+"])
        ax.set_title(name, fontsize=8)
        for i in (0, 1):
            for j in (0, 1):
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    save_figure(fig, path)


def write_plots(
    folder: Path, result: FitResult, *, class_names: Sequence[str], positive_index: int
) -> None:
    """curves.png, confusion.png (test, at the validation threshold) and roc.png (val, test)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_curves(result.history, folder / "curves.png")
    if "at_label_thresholds" in result.test:  # multi-label: per-label confusion and ROC
        sp = result.predictions["test"]
        observed = ~np.isnan(sp.labels)  # (N, L)
        plot_label_confusions(sp.labels, sp.predictions, class_names, folder / "confusion.png")
        per_label = {
            name: (sp.labels[observed[:, k], k].astype(int), sp.probabilities[observed[:, k], k])
            for k, name in enumerate(class_names)
        }
        plot_roc(per_label, folder / "roc.png")
        return
    if "argmax" in result.test:  # multi-class: N x N confusion, one-vs-rest ROC per class
        plot_confusion(
            result.test["argmax"]["confusion_matrix"],
            class_names,
            folder / "confusion.png",
            title="test (argmax)",
        )
        sp = result.predictions["test"]
        per_class = {
            name: ((sp.labels == k).astype(int), sp.probabilities[:, k])
            for k, name in enumerate(class_names)
        }
        plot_roc(per_class, folder / "roc.png")
        return
    plot_confusion(
        result.test["at_threshold"]["confusion_matrix"],
        class_names,
        folder / "confusion.png",
        title=f"test @ threshold {result.threshold['value']:.3f}",
    )
    curves = {}
    for split in ("val", "test"):
        sp = result.predictions[split]
        curves[split] = ((sp.labels == positive_index).astype(int), sp.probabilities)
    plot_roc(curves, folder / "roc.png")
