"""Write a Comparison of any task to a report folder: report.md, report.html, table.csv, JSON,
plots. One renderer: the task decides the columns, the per-class table and the tests shown."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.compare.analysis import TABLE_METRICS, THRESHOLDS, Comparison, Interval
from featurestore.compare.external_report import external_section
from featurestore.compare.labels import METRIC_TITLES
from featurestore.fileio import atomic_dir
from featurestore.plots import new_figure, save_figure

__all__ = ["TABLE_METRICS", "THRESHOLDS"]

THRESHOLD_TITLES = {
    "at_0.5": "threshold 0.5",
    "at_threshold": "validation-chosen threshold",
    "argmax": "most probable class (argmax)",
}
THRESHOLD_SHORT = {
    "at_0.5": "at 0.5",
    "at_threshold": "at the validation threshold",
    "argmax": "argmax",
}
COLUMN_NOTES = (
    "Columns: each metric is the estimate on the test set with its {level} percentile bootstrap "
    "interval (low-high); n/a: undefined on this test set (e.g. specificity without negative "
    "images); \u2020: unreliable interval (a class the metric needs has fewer than {min_units} "
    "{unit}, or over 1% of resamples were undefined)."
)


def write_report(
    cmp: Comparison,
    out_dir: Path,
    *,
    explain: int = 0,
    device: str = "auto",
    progress: Any = None,
) -> Path:
    """Write every report file into out_dir (via a temporary folder); returns report.md.

    `explain` > 0 adds "What the model looks at": Grad-CAM of that many test images per class
    and run (images in out_dir/explain/).
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, replace=True) as tmp:
        _write_report_files(cmp, tmp, explain=explain, device=device, progress=progress)
    return out_dir / "report.md"


def _write_report_files(
    cmp: Comparison, tmp: Path, *, explain: int, device: str, progress: Any
) -> None:
    extra: list[str] = []
    if explain > 0:
        from featurestore.use import report_section

        extra = report_section(
            cmp.records, tmp / "explain", n=explain, device=device, progress=progress
        )
    from featurestore.compare.curves import curve_section

    extra = [*curve_section(cmp, tmp), *extra]  # label-efficiency curve, when runs make one
    _write_table_csv(cmp, tmp / "table.csv")
    (tmp / "comparison.json").write_text(json.dumps(json_safe(cmp.as_dict()), indent=2))
    plots = {
        "roc.png": _plot_roc(cmp, tmp / "roc.png"),
        "metrics.png": _plot_intervals(cmp, tmp / "metrics.png"),
        "confusion.png": _plot_confusions(cmp, tmp / "confusion.png"),
    }
    markdown = render_markdown(cmp, [name for name, ok in plots.items() if ok], extra=extra)
    (tmp / "report.md").write_text(markdown)
    (tmp / "report.html").write_text(render_html(markdown, tmp))


def json_safe(value: Any) -> Any:
    """NaN -> None so the JSON is valid everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def fmt_interval(iv: Interval, *, undefined: str = "n/a") -> str:
    """`0.912 (0.887-0.934)`; `n/a` where undefined; a `\u2020` after an unreliable interval."""
    if not math.isfinite(iv.estimate):
        return undefined
    mark = "" if iv.reliable else " \u2020"
    return f"{iv.estimate:.3f} ({iv.lo:.3f}-{iv.hi:.3f}){mark}"


def fmt_p(p: float | None) -> str:
    """p-values: 3 decimals, `<0.001` below that, `n/a` when the test could not run."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_value(value: float | None, *, undefined: str = "n/a") -> str:
    """A plain metric value to 3 decimals; `n/a` where undefined (None or NaN)."""
    if value is None or not math.isfinite(value):
        return undefined
    return f"{value:.3f}"


def fmt_best(row: Any) -> str:
    """`3 / 6` (best epoch / epochs run), or `C=0.1 of 7 C values` for a swept C."""
    if row.swept == "C" and row.chosen is not None:
        return f"C={row.chosen:g} of {row.epochs_run} C values"
    return f"{row.best_epoch} / {row.epochs_run}"


def threshold_cell(cmp: Comparison, row: Any, decision: str) -> str:
    """What a table row decides at: `0.412`, `0.500`, `argmax` or `per finding`."""
    if cmp.task.multiclass:
        return "argmax"
    if cmp.task.multilabel:
        return "per finding"
    return f"{0.5 if decision == 'at_0.5' else row.threshold:.3f}"


def undefined_notes(cmp: Comparison) -> list[str]:
    """One line per interval with undefined resamples or marked unreliable."""
    out = []
    first = cmp.decisions[0].name if cmp.decisions else None
    for r in cmp.rows:
        for t, metrics in r.metrics.items():
            for m, iv in metrics.items():
                if t != first and first is not None and iv is r.metrics[first].get(m):
                    continue  # threshold-free: the same interval, listed once
                if iv.defined and (iv.n_undefined or not iv.reliable):
                    out.append(
                        f"{r.label}, {METRIC_TITLES.get(m, m)} ({THRESHOLD_SHORT.get(t, t)}): "
                        f"{iv.n_undefined} of {iv.n_boot} resamples undefined"
                        + ("" if iv.reliable else ", unreliable")
                    )
        for c, metrics in r.per_class.items():
            for m, iv in metrics.items():
                if iv.defined and (iv.n_undefined or not iv.reliable):
                    out.append(
                        f"{r.label}, {c} {METRIC_TITLES.get(m, m)}: {iv.n_undefined} of "
                        f"{iv.n_boot} resamples undefined" + ("" if iv.reliable else ", unreliable")
                    )
    return out


def _interval_cells(iv: Interval) -> list[Any]:
    cells = json_safe([iv.estimate, iv.lo, iv.hi])  # undefined: empty cells, never "nan"
    return [*cells, *([iv.n_undefined, iv.reliable] if iv.defined else [None, None])]


def _write_table_csv(cmp: Comparison, path: Path) -> None:
    """One row per run and decision rule: identity, cost, every headline metric with its
    interval, then (multi-class, multi-label) every per-class metric."""
    classes = [(c, m) for c in cmp.task.class_names for m in cmp.task.per_class_metrics]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        head = ["run", "label", "model", "mode", "head", "seed", "weights", "threshold_policy"]
        head += ["threshold", "trainable_params", "best_epoch", "epochs_run"]
        head += ["seconds_per_epoch", "extraction_seconds"]
        for m in [*cmp.metrics, *(f"{m}_{c}" for c, m in classes)]:
            head += [m, f"{m}_lo", f"{m}_hi", f"{m}_undefined_resamples", f"{m}_reliable"]
        writer.writerow(head)
        for row in cmp.rows:
            for t, metrics in row.metrics.items():
                cells: list[Any] = [row.name, row.label, row.model, row.mode, row.head]
                cells += [row.seed, row.weights, t]
                cells += [
                    (0.5 if t == "at_0.5" else row.threshold) if cmp.task.binary else None,
                    row.trainable_params,
                ]
                cells += [row.best_epoch, row.epochs_run, row.seconds_per_epoch]
                cells += [row.extraction_seconds]
                for m in cmp.metrics:
                    cells += _interval_cells(metrics[m])
                for c, m in classes:
                    cells += _interval_cells(row.per_class[c][m])
                writer.writerow(cells)


def _stamp(fig: Any, cmp: Comparison) -> None:
    """The comparison's warnings in the figure's corner, so a plot that leaves the report
    still says it shows random weights or synthetic data."""
    from featurestore.plots import stamp

    parts = []
    for w in cmp.warnings:  # "RANDOM WEIGHTS: All runs use ...", "SYNTHETIC DATA: all runs ..."
        head, text = w.split(":", 1)
        parts.append(f"{head} ({'all runs' if 'all runs' in text.lower() else 'some runs'})")
    stamp(fig, " / ".join(parts) or None)


def _roc_panels(cmp: Comparison) -> list[tuple[str, int | None]]:
    """(title, output column) of each ROC panel: one for a binary task (P(positive)), one per
    class (one-vs-rest) or per finding."""
    if cmp.task.binary:
        return [("ROC on the test set", None)]
    suffix = " vs rest" if cmp.task.multiclass else ""
    return [(f"{name}{suffix}", k) for k, name in enumerate(cmp.task.class_names)]


def _plot_roc(cmp: Comparison, path: Path) -> bool:
    """roc.png: every run's test ROC curve, one panel per class or finding beyond binary."""
    from sklearn.metrics import roc_curve

    panels = _roc_panels(cmp)
    cols = min(len(panels), 4)
    n_rows = -(-len(panels) // cols)
    size = (5.5, 5) if len(panels) == 1 else (3.4 * cols, 3.4 * n_rows)
    fig, axes = new_figure(size, n_rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    drawn = False
    for ax, (title, k) in zip(axes.flat, panels, strict=False):
        for i, row in enumerate(cmp.rows):
            a = cmp.arrays(i)
            if k is None:
                y, p, auc = a.labels, a.scores, row.primary("roc_auc").estimate
            else:
                y = a.labels[:, k] if cmp.task.multilabel else (a.labels == k).astype(float)
                p = a.scores[:, k]
                mask = ~np.isnan(y)
                y, p = y[mask], p[mask]
                auc = row.per_class[cmp.task.class_names[k]]["auc"].estimate
            if y.size == 0 or y.min() == y.max():
                continue  # one class on test: no curve
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{row.label} (AUC {fmt_value(auc)})")
            drawn = True
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
        ax.legend(fontsize=6 if k is not None else 7, loc="lower right")
    fig.tight_layout()
    _stamp(fig, cmp)
    save_figure(fig, path, dpi=120, tight=False)
    return drawn


def _plot_intervals(cmp: Comparison, path: Path) -> bool:
    metrics = [m for m in cmp.metrics if m != "loss"]
    labels = [r.label for r in cmp.rows]
    room = 0.3 + 0.08 * max(len(label) for label in labels)  # inches for the run labels
    fig, axes = new_figure(
        (3 * len(metrics) + room, 0.5 * len(cmp.rows) + 2), 1, len(metrics), squeeze=False
    )
    for ax, m in zip(axes[0], metrics, strict=True):
        ivs = [r.primary(m) for r in cmp.rows]
        ivs = [iv if iv.defined else Interval(np.nan, np.nan, np.nan) for iv in ivs]
        est = np.array([iv.estimate for iv in ivs])  # NaN (undefined) draws nothing
        err = np.array([[iv.estimate - iv.lo for iv in ivs], [iv.hi - iv.estimate for iv in ivs]])
        ax.errorbar(est, np.arange(len(ivs)), xerr=err, fmt="o", capsize=3)
        if cmp.baseline.get(m) is not None:
            ax.axvline(cmp.baseline[m], color="grey", ls=":", label="baseline")
        ax.set_yticks(np.arange(len(ivs)), labels if ax is axes[0][0] else [""] * len(ivs))
        ax.set_title(METRIC_TITLES[m], fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.invert_yaxis()
    rule = THRESHOLD_SHORT.get(cmp.decisions[0].name, "") if cmp.decisions else ""
    fig.suptitle(f"Test metrics ({rule}), 95% bootstrap intervals", fontsize=9)
    fig.tight_layout()
    _stamp(fig, cmp)
    save_figure(fig, path, dpi=120, tight=False)
    return True


def _plot_confusions(cmp: Comparison, path: Path) -> bool:
    """confusion.png (binary and multi-class); False for multi-label, whose per-finding
    decisions are its sensitivity and specificity in the per-finding table."""
    from featurestore.plots import text_color

    if cmp.task.multilabel:
        return False
    names = list(cmp.task.class_names)
    if cmp.task.binary:  # negative class first, as in the confusion-matrix convention
        names = [names[1 - cmp.task.positive_index], names[cmp.task.positive_index]]
    k, n = len(names), len(cmp.rows)
    fig, axes = new_figure((max(2.8, 1.1 * k) * n, max(2.9, 1.1 * k)), 1, n, squeeze=False)
    for ax, row in zip(axes[0], cmp.rows, strict=True):
        cm = np.asarray(row.confusion_matrix)
        image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color=text_color(image, v))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax.set_xticks(range(k), names, fontsize=7, rotation=45 if k > 2 else 0)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_title(row.label, fontsize=8)
    axes[0][0].set_ylabel("true", fontsize=8)
    fig.tight_layout()
    _stamp(fig, cmp)
    save_figure(fig, path, dpi=120, tight=False)
    return True


def _markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def banner_lines(cmp: Comparison) -> list[str]:
    """The warnings as banners: a bold paragraph opening with \u26a0 (report.html shows it as
    a red box)."""
    return [f"**\u26a0 {w}**" for w in cmp.warnings]


def dataset_line(cmp: Comparison) -> str:
    """`Dataset: synthetic (data/synthetic), fingerprint 1a2b3c4d5e6f; train 240 (...)`."""
    from featurestore.compare.verdict import counts_line

    d = cmp.dataset
    if not d.get("path"):
        return "Dataset: not recorded by these runs."
    fp = str(d.get("fingerprint") or "not recorded")[:16]
    counts = counts_line(d)
    trained = f"; the runs trained on `{d['trained_on']}`" if d.get("trained_on") else ""
    return f"Dataset: **{d['name']}** (`{d['path']}`), fingerprint `{fp}`{trained}" + (
        f"; images {counts}." if counts else "."
    )


def test_set_line(cmp: Comparison) -> str:
    """`Test set: 74 images (40 positive) from 38 patients.` in the task's words."""
    ts = cmp.test_set
    if cmp.task.binary:
        inner = f" ({ts['positives']} positive)"
    elif cmp.task.multiclass:
        inner = " (" + ", ".join(f"{c} {n}" for c, n in ts["per_class"].items()) + ")"
    else:
        inner = " (positives: " + ", ".join(f"{c} {n}" for c, n in ts["positives"].items()) + ")"
    return f"Test set: {ts['images']} images{inner} from {ts['patients']} patients."


def pair_rows(cmp: Comparison, *, undefined: str = "n/a") -> tuple[list[str], list[list[str]]]:
    """The paired-tests table (head, rows) of the task's tests: per test its p and Holm p, the
    difference where the test has one, McNemar's discordant counts."""
    names = [n for n in ("mcnemar", "delong", "auc_difference") if n in _tests_of(cmp)]
    head = ["A", "B"]
    for n in names:
        if n == "mcnemar":
            head += ["A only right", "B only right", "McNemar p", "Holm p"]
        elif n == "delong":
            head += ["AUC A - B", "DeLong p", "Holm p"]
        else:
            head += ["macro AUC A - B (95% CI)", "bootstrap p", "Holm p"]
    rows = []
    for p in cmp.pairs:
        cells = [p.a, p.b]
        for n in names:
            t = p.test(n)
            if n == "mcnemar":
                r = None if t is None else t.result
                cells += [
                    undefined if r is None else str(r.b),
                    undefined if r is None else str(r.c),
                ]
            elif n == "delong":
                d = None if t is None else t.difference
                cells += [undefined if d is None else f"{d:+.3f}"]
            else:
                d = None if t is None else t.difference
                cells += [
                    undefined if d is None else f"{d:+.3f} ({t.lo:+.3f} to {t.hi:+.3f})"  # type: ignore[union-attr]
                ]
            cells += [
                fmt_p(None if t is None else t.p_value),
                fmt_p(None if t is None else t.p_holm),
            ]
        rows.append(cells)
    return head, rows


def _tests_of(cmp: Comparison) -> set[str]:
    return {n for p in cmp.pairs for n in p.tests}


def _pairs_text(cmp: Comparison) -> str:
    clustered = cmp.config.resample == "patients"
    parts = []
    tests = _tests_of(cmp)
    if "mcnemar" in tests:
        parts.append(
            "McNemar on correctness of each run's decisions"
            + (
                ", clustered by patient (Durkalski et al. 2003, Stat Med 22:2417; the exact "
                "binomial test when every patient has one image)"
                if clustered
                else " (exact binomial when fewer than 25 discordant pairs, else chi-square "
                "with continuity correction)"
            )
            + "; 'A only right' and 'B only right' count the test images one run classifies "
            "correctly and the other not"
        )
    if "delong" in tests:
        parts.append(
            "DeLong's test for the difference of ROC-AUCs"
            + (", clustered by patient (Obuchowski 1997, Biometrics 53:567)" if clustered else "")
        )
    if "auc_difference" in tests:
        parts.append(
            "the macro ROC-AUC difference with its paired bootstrap interval (both runs on the "
            f"same resamples of {cmp.config.resample}) and two-sided p-value (Davison & Hinkley "
            "1997, eq. 4.11)"
        )
    return (
        "; ".join(parts)[0].upper()
        + "; ".join(parts)[1:]
        + f". Holm p: adjusted by Holm's method over the {len(cmp.pairs)} pairs (Holm 1979), "
        "per test."
    )


def render_markdown(cmp: Comparison, plots: list[str], *, extra: Sequence[str] = ()) -> str:
    """The report as GitHub-flavoured Markdown (`extra`: more lines before the run list).

    Order: title, warning banners, the verdict, the dataset, then the tables (the
    validation-chosen decision first, as in the terminal), the per-class or per-finding table,
    the column legend, paired tests, seeds, plots.
    """
    unit = cmp.config.resample
    level = f"{100 * (1 - cmp.config.alpha):.0f}%"
    out = ["# xray comparison", ""]
    for line in banner_lines(cmp):
        out += [line, ""]
    if cmp.verdict is not None:
        out += ["## Verdict", ""]
        out += [f"- {line}" for line in cmp.verdict.lines]
        out += [""]
    out += [dataset_line(cmp), ""]
    out += [f"Task: {cmp.task.kind}; decisions: {cmp.task.decision_rule}.", ""]
    out += [f"Note: {note}" for note in cmp.notes]
    out += [
        "",
        f"{test_set_line(cmp)} Intervals: {level} percentile bootstrap, "
        f"{cmp.config.n_boot} resamples of {unit}, seed {cmp.config.seed}.",
        "",
    ]
    b = cmp.baseline
    base_name = (
        f"majority class ({b['majority_class']})" if b.get("majority_class") else "prevalence rule"
    )
    for d in cmp.decisions:
        out += [f"## Test metrics at the {THRESHOLD_TITLES.get(d.name, d.title)}", ""]
        head = ["run", "weights", "threshold"] + [METRIC_TITLES[m] for m in cmp.metrics]
        rows = [
            [r.label, r.weights, threshold_cell(cmp, r, d.name)]
            + [fmt_interval(r.metrics[d.name][m]) for m in cmp.metrics]
            for r in cmp.rows
        ]
        rows.append(
            [base_name, "-", "0.500" if cmp.task.binary else "-"]
            + [fmt_value(b.get(m)) for m in cmp.metrics]
        )
        out += [*_markdown_table(head, rows), ""]
    if cmp.task.per_class_metrics:
        noun = cmp.task.unit_noun
        out += [f"## Per {noun} (test)", ""]
        head = ["run", noun] + [METRIC_TITLES[m] for m in cmp.task.per_class_metrics]
        if cmp.task.multilabel:
            head.append("threshold")
        rows = []
        for r in cmp.rows:
            for c in cmp.task.class_names:
                cells = [r.label, c] + [
                    fmt_interval(r.per_class[c][m]) for m in cmp.task.per_class_metrics
                ]
                if cmp.task.multilabel:
                    cells.append(f"{r.thresholds.get(c, 0.5):.3f}")
                rows.append(cells)
        out += [*_markdown_table(head, rows), ""]
    out += [
        COLUMN_NOTES.format(level=level, min_units=cmp.config.min_units_per_class, unit=unit),
        "",
    ]
    undefined = undefined_notes(cmp)
    if undefined:
        out += ["Undefined resamples (left out of the interval):", ""]
        out += [f"- {line}" for line in undefined]
        out += [""]
    out += ["## Training and compute", ""]
    head = ["run", "trainable params", "best / run", "early stop", "s/epoch", "extraction s"]
    rows = [
        [
            r.label,
            f"{r.trainable_params:,}",
            fmt_best(r),
            "yes" if r.stopped_early else "no",
            f"{r.seconds_per_epoch:.2f}" + (" (per C)" if r.swept == "C" else ""),
            "-" if r.extraction_seconds is None else f"{r.extraction_seconds:.1f} (once)",
        ]
        for r in cmp.rows
    ]
    out += [*_markdown_table(head, rows), ""]
    if any(r.swept == "C" for r in cmp.rows):
        out += [
            "The logreg head sweeps the inverse regularisation strength C of scikit-learn's "
            "LogisticRegression (one history row per C, not epochs) and keeps the C with "
            "the best validation AUC.",
            "",
        ]
    if cmp.pairs:
        out += ["## Paired tests on the same test images", "", _pairs_text(cmp), ""]
        out += [*_markdown_table(*pair_rows(cmp)), ""]
        if cmp.task.multilabel:
            out += _per_finding_tests(cmp)
    if cmp.seed_groups:
        rule = THRESHOLD_SHORT.get(cmp.decisions[0].name, "") if cmp.decisions else ""
        out += [f"## Across seeds ({rule}): mean \u00b1 sd", ""]
        out += [
            "Only runs whose settings are identical except the seed, with distinct seeds.",
            "",
        ]
        head = ["configuration", "seeds"] + [METRIC_TITLES[m] for m in cmp.metrics]
        rows = [
            [g.label, ", ".join(map(str, g.seeds))]
            + [fmt_mean_sd(g.mean[m], g.std[m]) for m in cmp.metrics]
            for g in cmp.seed_groups
        ]
        out += [*_markdown_table(head, rows), ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{name}]({name})" for name in plots]
        out += [""]
    out += external_section(cmp.external)
    out += list(extra)
    out += ["Run folders: " + ", ".join(f"`{r.label}`: `{r.name}`" for r in cmp.rows), ""]
    return "\n".join(out)


def _per_finding_tests(cmp: Comparison) -> list[str]:
    """DeLong's test per finding for every pair, Holm-adjusted over the findings."""
    clustered = cmp.config.resample == "patients"
    out = [
        "### DeLong's test per finding",
        "",
        "Per pair, the ROC-AUC difference of each finding over its observed entries"
        + (", clustered by patient (Obuchowski 1997)" if clustered else "")
        + "; Holm p adjusted over the pair's findings.",
        "",
    ]
    head = ["A", "B", "finding", "AUC A - B", "DeLong p", "Holm p"]
    rows = []
    for p in cmp.pairs:
        for f, t in p.per_finding.items():
            if t is None:
                rows.append([p.a, p.b, f, "n/a (one class on test)", "n/a", "n/a"])
            else:
                d = "n/a" if t.difference is None else f"{t.difference:+.3f}"
                rows.append([p.a, p.b, f, d, fmt_p(t.p_value), fmt_p(t.p_holm)])
    return [*out, *_markdown_table(head, rows), ""]


def fmt_mean_sd(mean: float, sd: float, *, undefined: str = "n/a") -> str:
    """`0.912 \u00b1 0.004`; `n/a` where undefined."""
    if not math.isfinite(mean):
        return undefined
    return f"{mean:.3f} \u00b1 {sd:.3f}" if math.isfinite(sd) else f"{mean:.3f} \u00b1 n/a"


def render_html(markdown: str, folder: Path) -> str:
    """report.md as a self-contained HTML page: rendered by markdown-it-py (CommonMark with
    tables), plots inlined as data URIs so the one file can be mailed or archived."""
    from markdown_it import MarkdownIt
    from markdown_it.renderer import RendererHTML

    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def inline_image(self: RendererHTML, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        local = folder / src
        if src and "/" not in src and local.is_file():
            data = base64.b64encode(local.read_bytes()).decode()
            token.attrSet("src", f"data:image/png;base64,{data}")
        return RendererHTML.image(self, tokens, idx, options, env)

    md.add_render_rule("image", inline_image)
    # Banners: report.md writes each warning as a bold paragraph opening with the sign; the
    # page shows it as a red box, not as a quoted line.
    body = re.sub(
        r"<p><strong>\u26a0 (.*?)</strong></p>",
        '<div class="banner"><strong>\u26a0 \\1</strong></div>',
        md.render(markdown),
    )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.85em;display:block;overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
        "blockquote{border-left:4px solid #c60;margin:1em 0;padding:0.2em 1em;background:#fff4e5}"
        ".banner{background:#b00020;color:#fff;padding:0.6em 1em;margin:0.5em 0;"
        "border-radius:4px;font-size:1.05em}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>xray comparison</title>"
        f"<style>{style}</style></head><body>{body}</body></html>"
    )
