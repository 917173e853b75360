"""Write a MulticlassComparison to a report folder: report.md/.html, table.csv, JSON, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.compare.analysis import Interval
from featurestore.compare.multiclass_analysis import (
    MULTICLASS_TABLE_METRICS,
    PER_CLASS_METRICS,
    MulticlassComparison,
)
from featurestore.compare.report import fmt_interval, fmt_p, json_safe, render_html
from featurestore.fileio import atomic_dir
from featurestore.plots import new_figure, save_figure

MULTICLASS_TITLES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "macro F1",
    "roc_auc_macro": "macro AUC (one-vs-rest)",
    "loss": "loss (cross-entropy)",
    "recall": "recall",
    "auc": "AUC (one-vs-rest)",
}


def write_multiclass_report(cmp: MulticlassComparison, out_dir: Path) -> Path:
    """Write every report file into out_dir (via a temporary folder); returns report.md.

    Files: report.md, report.html (self-contained), table.csv (one row per run, estimate and
    interval per headline and per-class metric), comparison.json, confusion.png (the runs' test
    confusion matrices side by side) and roc.png (one one-vs-rest ROC panel per class).
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, replace=True) as tmp:
        _write_table_csv(cmp, tmp / "table.csv")
        (tmp / "comparison.json").write_text(json.dumps(json_safe(cmp.as_dict()), indent=2))
        _plot_confusions(cmp, tmp / "confusion.png")
        _plot_roc_per_class(cmp, tmp / "roc.png")
        markdown = render_multiclass_markdown(cmp, ["confusion.png", "roc.png"])
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(render_html(markdown, tmp))
    return out_dir / "report.md"


def _table_columns(cmp: MulticlassComparison) -> list[tuple[str, str | None, str]]:
    """(metric, class or None, column title) of every interval in the table."""
    cols: list[tuple[str, str | None, str]] = [(m, None, m) for m in MULTICLASS_TABLE_METRICS]
    cols += [(m, c, f"{m}_{c}") for c in cmp.class_names for m in PER_CLASS_METRICS]
    return cols


def _pick(row: Any, metric: str, cls: str | None) -> Interval:
    return row.metrics[metric] if cls is None else row.per_class[cls][metric]


def _write_table_csv(cmp: MulticlassComparison, path: Path) -> None:
    cols = _table_columns(cmp)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        head = ["run", "label", "model", "mode", "head", "seed", "seconds_per_epoch"]
        writer.writerow(head + [f"{t}{s}" for _, _, t in cols for s in ("", "_lo", "_hi")])
        for r in cmp.rows:
            cells: list[Any] = [r.name, r.label, r.model, r.mode, r.head, r.seed]
            cells.append(r.seconds_per_epoch)
            for m, c, _ in cols:
                iv = _pick(r, m, c)
                cells += ["" if np.isnan(v) else repr(v) for v in (iv.estimate, iv.lo, iv.hi)]
            writer.writerow(cells)


def _plot_confusions(cmp: MulticlassComparison, path: Path) -> None:
    n = len(cmp.rows)
    k = len(cmp.class_names)
    fig, axes = new_figure(figsize=(1.2 * k * n + 1, 1.2 * k + 1), nrows=1, ncols=n, squeeze=False)
    for ax, row in zip(axes[0], cmp.rows, strict=True):
        cm = np.asarray(row.confusion_matrix)
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(k), cmp.class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), cmp.class_names)
        ax.set_title(row.label, fontsize=8)
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    axes[0][0].set_ylabel("true")
    save_figure(fig, path)


def _plot_roc_per_class(cmp: MulticlassComparison, path: Path) -> None:
    """One panel per class: each run's one-vs-rest ROC curve on test."""
    from sklearn.metrics import roc_curve

    from featurestore.compare.multiclass_analysis import _test_arrays

    k = len(cmp.class_names)
    fig, axes = new_figure(figsize=(3.6 * k, 3.8), nrows=1, ncols=k, squeeze=False)
    for c, (ax, name) in enumerate(zip(axes[0], cmp.class_names, strict=True)):
        for row, record in zip(cmp.rows, cmp.records, strict=True):
            y, p, _ = _test_arrays(record)
            y_c = y == c
            if 0 < y_c.sum() < y_c.size:
                fpr, tpr, _ = roc_curve(y_c, p[:, c])
                auc = row.per_class[name]["auc"].estimate
                ax.plot(fpr, tpr, label=f"{row.label} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set_title(f"{name} vs rest")
        ax.set_xlabel("false positive rate")
        if ax.get_legend_handles_labels()[0]:  # a finding with one class on test has no curve
            ax.legend(loc="lower right", fontsize=6)
    axes[0][0].set_ylabel("true positive rate")
    save_figure(fig, path)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_multiclass_markdown(cmp: MulticlassComparison, plots: list[str]) -> str:
    """report.md: headline table, per-class table, baseline, paired tests, plots, notes."""
    unit = "patients" if cmp.config.resample == "patients" else "images"
    level = round(100 * (1 - cmp.config.alpha))
    ts = cmp.test_set
    per_class = ", ".join(f"{c} {n}" for c, n in ts["per_class"].items())
    out = [
        "# xray comparison (multi-class)",
        "",
        f"Test set: {ts['images']} images of {ts['patients']} patients ({per_class}). "
        f"Decisions are the most probable class (argmax); nothing is tuned on test. "
        f"Intervals: {level}% percentile bootstrap resampling {unit} "
        f"({cmp.config.n_boot} resamples, seed {cmp.config.seed}); `-` is undefined.",
        "",
        "## Headline metrics",
        "",
    ]
    head = ["run"] + [MULTICLASS_TITLES[m] for m in MULTICLASS_TABLE_METRICS]
    head += ["s/epoch", "best/run"]
    rows = [
        [r.label]
        + [fmt_interval(r.metrics[m]) for m in MULTICLASS_TABLE_METRICS]
        + [f"{r.seconds_per_epoch:.2f}", f"{r.best_epoch}/{r.epochs_run}"]
        for r in cmp.rows
    ]
    b = cmp.baseline
    rows.append(
        [f"majority class ({b['majority_class']})"]
        + [_fmt(b.get(m)) for m in MULTICLASS_TABLE_METRICS]
        + ["-", "-"]
    )
    out += _md_table(head, rows)
    out += ["## Per class (one-vs-rest)", ""]
    head = ["run"]
    head += [f"{MULTICLASS_TITLES[m]} {c}" for c in cmp.class_names for m in PER_CLASS_METRICS]
    rows = [
        [r.label]
        + [fmt_interval(r.per_class[c][m]) for c in cmp.class_names for m in PER_CLASS_METRICS]
        for r in cmp.rows
    ]
    out += _md_table(head, rows)
    if cmp.pairs:
        out += [
            "## Paired tests",
            "",
            "McNemar's test (exact binomial when discordant pairs < 25, else chi-square with "
            "continuity correction) on correctness of the argmax decisions; macro AUC "
            "difference with a paired bootstrap interval and p-value (same resamples for both "
            "runs). No correction for multiple comparisons is applied: with m pairs, compare "
            "p-values with 0.05 / m (Bonferroni) for a family-wise 5% level.",
            "",
        ]
        head = ["a", "b", "McNemar p", "a only right", "b only right", "macro AUC a - b", "p"]
        rows = [
            [
                p.a,
                p.b,
                fmt_p(p.mcnemar.p_value),
                str(p.mcnemar.b),
                str(p.mcnemar.c),
                fmt_interval(p.macro_auc_diff),
                "-" if np.isnan(p.macro_auc_p) else fmt_p(p.macro_auc_p),
            ]
            for p in cmp.pairs
        ]
        out += _md_table(head, rows)
    out += ["## Confusion matrices (test, rows true, columns predicted)", ""]
    for r in cmp.rows:
        out += [f"{r.label}:", ""]
        out += _md_table(
            ["true \\ predicted", *cmp.class_names],
            [[c, *map(str, cm)] for c, cm in zip(cmp.class_names, r.confusion_matrix, strict=True)],
        )
    out += [f"![{p}]({p})" for p in plots] + ([""] if plots else [])
    out += [f"> **Note:** {n}" for n in cmp.notes] + ([""] if cmp.notes else [])
    out += ["Run folders: " + ", ".join(f"`{r.name}`" for r in cmp.rows), ""]
    return "\n".join(out)
