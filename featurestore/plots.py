"""Run plots as PNG: training curves, test confusion matrix, ROC curves (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class FitResult(Protocol):
    """What `write_plots` reads of a `featurestore.runs.FitResult` (plots sit below runs)."""

    @property
    def history(self) -> list[dict[str, float]]: ...

    @property
    def test(self) -> dict[str, Any]: ...

    @property
    def threshold(self) -> dict[str, Any]: ...

    @property
    def predictions(self) -> dict[str, Any]: ...


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


def plot_curves(history: list[dict[str, float]], path: Path, *, note: str | None = None) -> None:
    """Loss, accuracy, F1 (train vs val) and val AUC per epoch, 2x2 panels."""
    swept_c = bool(history) and "C" in history[0]  # logreg: one row per C, not per epoch
    epochs = [r["C"] if swept_c else int(r["epoch"]) for r in history]
    xlabel = "C (inverse regularisation, log scale)" if swept_c else "epoch"
    fig, axes = new_figure(nrows=2, ncols=2, figsize=(9, 6.5))
    for ax, metric in zip(axes.flat, ("loss", "acc", "f1"), strict=False):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", label="val")
        ax.set_title(metric)
        ax.set_xlabel(xlabel)
        ax.set_xscale("log" if swept_c else "linear")
        ax.legend()
    ax = axes.flat[3]
    ax.plot(epochs, [r["val_auc"] for r in history], "o-", color="tab:orange", label="val")
    ax.set_title("auc")
    ax.set_xlabel(xlabel)
    ax.set_xscale("log" if swept_c else "linear")
    ax.legend()
    _save(fig, path, note)


def plot_confusion(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: Path,
    *,
    title: str,
    note: str | None = None,
) -> None:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    cm = np.asarray(matrix)
    fig, ax = new_figure(figsize=(4.5, 4))
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = text_color(image, cm[i, j])
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    _save(fig, path, note)


def text_color(image: Any, value: float) -> str:
    """Black or white, whichever contrasts more with the cell's colour at `value` in the
    image's colormap (WCAG 2 relative luminance: the two contrasts are equal at L ~ 0.179)."""
    r, g, b, _ = image.cmap(image.norm(value))
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "black" if luminance > 0.179 else "white"


def stamp(fig: Figure, note: str | None) -> None:
    """A warning (random weights, synthetic data) in the figure's bottom-left corner, so the
    plot says it when it travels without its report."""
    if note:
        fig.text(0.005, 0.005, f"\u26a0 {note}", fontsize=7, color="#b00020", va="bottom")


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, note: str | None = None
) -> None:
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
    _save(fig, path, note)


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, n_bins: int = 10
) -> None:
    """Reliability diagram per curve from (y_positive, p_positive): observed frequency of the
    positive class against the mean predicted probability in 10 equal-width bins (the bins of
    the ECE), with the diagonal of perfect calibration."""
    from sklearn.calibration import calibration_curve

    fig, ax = new_figure(figsize=(4.5, 4.5))
    for label, (y, p) in curves.items():
        observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        ax.plot(predicted, observed, "o-", label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency of the positive class")
    ax.set_title("reliability")
    ax.legend(loc="upper left")
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
    folder: Path,
    result: FitResult,
    *,
    class_names: Sequence[str],
    positive_index: int,
    note: str | None = None,
) -> None:
    """curves.png, confusion.png (test, at the validation threshold) and roc.png (val, test);
    `note` (e.g. "random weights") is written in each figure's corner."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_curves(result.history, folder / "curves.png", note=note)
    if "at_label_thresholds" in result.test:  # multi-label: per-label confusion and ROC
        sp = result.predictions["test"]
        observed = ~np.isnan(sp.labels)  # (N, L)
        plot_label_confusions(sp.labels, sp.predictions, class_names, folder / "confusion.png")
        per_label = {
            name: (sp.labels[observed[:, k], k].astype(int), sp.probabilities[observed[:, k], k])
            for k, name in enumerate(class_names)
        }
        plot_roc(per_label, folder / "roc.png", note=note)
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
        plot_roc(per_class, folder / "roc.png", note=note)
        return
    plot_confusion(
        result.test["at_threshold"]["confusion_matrix"],
        class_names,
        folder / "confusion.png",
        title=f"test @ threshold {result.threshold['value']:.3f}",
        note=note,
    )
    curves = {}
    for split in ("val", "test"):
        sp = result.predictions[split]
        curves[split] = ((sp.labels == positive_index).astype(int), sp.probabilities)
    plot_roc(curves, folder / "roc.png", note=note)


def _save(fig: Figure, path: Path, note: str | None = None) -> None:
    """Lay out, stamp the note (after layout, so it stays in the corner), save."""
    fig.tight_layout()
    stamp(fig, note)
    save_figure(fig, path, tight=False)


def plot_sweep(rows: Sequence[dict[str, Any]], monitor: str, path: Path) -> None:
    """A sweep's grid: the validation monitor at each member's best epoch, lr x weight decay,
    one heat map per head kind; the chosen member is ringed."""
    kinds = list(dict.fromkeys(str(r["head"]) for r in rows))
    fig, axes = new_figure(figsize=(5.2 * len(kinds), 4.0), ncols=len(kinds), squeeze=False)
    fig.set_layout_engine("constrained")  # room for the shared colour bar
    values = [float(r["score"]) for r in rows if np.isfinite(float(r["score"]))]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    image = None
    for k, (ax, kind) in enumerate(zip(axes[0], kinds, strict=True)):
        mine = [r for r in rows if r["head"] == kind]
        lrs = sorted({float(r["lr"]) for r in mine})
        wds = sorted({float(r["weight_decay"]) for r in mine})
        grid = np.full((len(wds), len(lrs)), np.nan)
        for r in mine:
            i, j = wds.index(float(r["weight_decay"])), lrs.index(float(r["lr"]))
            grid[i, j] = float(r["score"])
            if r["chosen"]:
                ax.scatter([j], [i], s=300, facecolors="none", edgecolors="red", linewidths=2)
        image = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, origin="lower", aspect="auto")
        for i in range(len(wds)):
            for j in range(len(lrs)):
                if np.isfinite(grid[i, j]):
                    box = {"facecolor": "black", "alpha": 0.3, "lw": 0}
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="w", bbox=box)  # fmt: skip
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(wds)), [f"{v:g}" for v in wds])
        ax.set_xlabel("learning rate")
        if k == 0:
            ax.set_ylabel("weight decay")
        ax.set_title(f"{kind} heads")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=f"best {monitor}")
    fig.suptitle(f"sweep: {monitor} at each member's best epoch (chosen ringed)")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110, tight=False)
