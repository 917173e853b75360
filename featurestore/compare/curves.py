"""Label-efficiency curves: the task's test ROC-AUC (macro for multi-class and multi-label) with
its bootstrap interval against training-set size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from featurestore.compare.analysis import Comparison, Interval


@dataclass(frozen=True)
class CurvePoint:
    """One run on a label-efficiency curve."""

    line: str
    """The configuration's label (`resnet50 frozen/linear`, `... lr=0.01`), and the subset kind
    when the configuration has both (`(fraction of patients)` / `(images per class)`)."""
    run: str
    """The run's label in the comparison."""
    train_images: int
    train_patients: int | None
    subset: str
    """`f0.1` (fraction of train patients), `k5` (images per class) or `all`."""
    seed: int
    auc: Interval
    """The task's primary test metric (ROC-AUC; macro ROC-AUC for multi-class and multi-label)
    and its bootstrap interval (the comparison's resampling)."""


SERIES = {"f": "fraction of patients", "k": "images per class"}
"""The two kinds of label-efficiency subset (`subset_tag` f0.1 / k5): a line holds one kind."""


def curve_points(cmp: Comparison) -> list[CurvePoint]:
    """The runs of lines that were trained at two or more training-set sizes, smallest first.

    A line is one configuration: runs whose settings (`labels.run_settings`: backbone, mode,
    head, lr, weights, image size, ...) are equal but for the subset and the seed, so runs
    trained otherwise are never pooled; it is labelled as `xray compare` labels configurations.
    It holds one kind of subset, fractions of the patients or images per class, with the runs
    on all of train: a configuration with both kinds gives two lines, each named by its kind.
    A run's size is config.json's `train_images` (every run records it), else, for runs
    written before, the sum of its recorded train class counts (single-label); lines with one
    size have no curve.
    """
    from featurestore.compare.labels import run_labels, run_settings

    metric = cmp.task.primary_metric
    entries = []  # (settings key, series kind or "", row, record)
    for row, record in zip(cmp.rows, cmp.records, strict=True):
        cfg = record.config
        settings = {k: v for k, v in run_settings(cfg).items() if k != "subset_tag"}
        tag = str(cfg.get("subset_tag") or "")
        entries.append((tuple(sorted(settings.items(), key=str)), tag[:1], row, record))
    keys = list(dict.fromkeys(e[0] for e in entries))
    first = {key: next(e[3] for e in entries if e[0] == key) for key in keys}
    configs = [{k: v for k, v in first[key].config.items() if k != "subset_tag"} for key in keys]
    _, names = run_labels(configs, [first[key].name for key in keys])
    lines: dict[tuple[Any, str], list[CurvePoint]] = {}
    for key, name in zip(keys, names, strict=True):
        mine = [e for e in entries if e[0] == key]
        kinds = sorted({e[1] for e in mine} - {""}) or [""]
        for kind in kinds:
            line = name if len(kinds) == 1 else f"{name} ({SERIES.get(kind, kind)})"
            members = [e for e in mine if e[1] in (kind, "")]
            points = [p for e in members if (p := _point(cmp, line, e[2], e[3], metric))]
            if len({p.train_images for p in points}) > 1:
                lines[(key, kind)] = points
    kept = [p for points in lines.values() for p in points]
    return sorted(kept, key=lambda p: (p.line, p.train_images, p.seed, p.subset))


def _point(cmp: Comparison, line: str, row: Any, record: Any, metric: str) -> CurvePoint | None:
    """One run's point, or None when its training-set size is not known."""
    cfg = record.config
    counts = (cfg.get("class_counts") or {}).get("train") or {}
    total = None if cmp.task.multilabel else sum(int(v) for v in counts.values()) or None
    size = cfg.get("train_images", total)
    if size is None:
        return None
    return CurvePoint(
        line=line,
        run=row.label,
        train_images=int(size),
        train_patients=cfg.get("train_patients"),
        subset=str(cfg.get("subset_tag") or "all"),
        seed=row.seed,
        auc=row.primary(metric),
    )


def plot_curves(points: Sequence[CurvePoint], path: Path, *, title: str = "ROC-AUC") -> bool:
    """label_efficiency.png: each run's AUC with its interval; a line through the seed means."""
    if not points:
        return False
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from featurestore.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(7, 4.5))
    lines = list(dict.fromkeys(p.line for p in points))
    for k, line in enumerate(lines):
        mine = [p for p in points if p.line == line]
        color = f"C{k % 10}"
        # Runs whose AUC is undefined (one-class test set) are left off, not drawn at 0.
        ok = [p for p in mine if math.isfinite(p.auc.estimate)]
        x = np.array([p.train_images for p in ok], dtype=float)
        y = np.array([p.auc.estimate for p in ok])
        err = np.array(
            [[p.auc.estimate - p.auc.lo for p in ok], [p.auc.hi - p.auc.estimate for p in ok]]
        )
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", color=color, alpha=0.6, capsize=3)
        sizes = sorted(set(x.tolist()))
        means = [float(y[x == s].mean()) for s in sizes]
        ax.plot(sizes, means, "-", color=color, label=line)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 10, 100, 1000 rather than 10^1 ...
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel(f"test {title}")
    ax.set_title(f"label efficiency: test {title} with bootstrap intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)
    return True


def curve_section(cmp: Comparison, folder: Path) -> list[str]:
    """The report's "Label efficiency" section (Markdown lines) and its plot; [] when no line
    of the comparison was trained at several training-set sizes."""
    from featurestore.compare.verdict import PRIMARY_TITLES

    points = curve_points(cmp)
    title = PRIMARY_TITLES[cmp.task.primary_metric]
    if not plot_curves(points, folder / "label_efficiency.png", title=title):
        return []
    level = f"{100 * (1 - cmp.config.alpha):.0f}%"
    out = [
        "## Label efficiency",
        "",
        f"Test {title} with its {level} bootstrap interval against the number of training "
        "images: subsets of train drawn by patient, "
        + ("finding-stratified" if cmp.task.multilabel else "class-stratified")
        + ", nested and seeded; validation and test untouched.",
        "",
        f"| line | train images | patients | subset | seed | test {title} |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        out.append(
            f"| {p.line} | {p.train_images} | {_or_dash(p.train_patients)} | {p.subset} | "
            f"{p.seed} | {_interval(p.auc)} |"
        )
    return [*out, "", "![label_efficiency.png](label_efficiency.png)", ""]


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _interval(iv: Interval) -> str:
    if not math.isfinite(iv.estimate):
        return "undefined"
    return f"{iv.estimate:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]"
