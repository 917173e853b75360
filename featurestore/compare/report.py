"""Write a Comparison to a report folder: report.md, report.html, table.csv, JSON, plots."""

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
from featurestore.fileio import atomic_dir
from featurestore.plots import new_figure, save_figure

METRIC_TITLES = {
    "loss": "loss",
    "accuracy": "accuracy",
    "f1_macro": "F1 (macro)",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "roc_auc": "ROC-AUC",
}
THRESHOLD_TITLES = {"at_0.5": "threshold 0.5", "at_threshold": "validation-chosen threshold"}
THRESHOLD_SHORT = {"at_0.5": "at 0.5", "at_threshold": "at the validation threshold"}
COLUMN_NOTES = (
    "Columns: each metric is the estimate on the test set with its 95% percentile bootstrap "
    "interval (low-high); n/a: undefined on this test set (e.g. specificity without negative "
    "images); †: unreliable interval (a class the metric needs has fewer than {min_units} "
    "patients, or over 1% of resamples were undefined). In the paired tests, 'A only right' "
    "and 'B only right' count the test images that one run classifies correctly and the other "
    "not (McNemar's discordant pairs); 'Holm p' is the p-value adjusted over all pairs."
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
    """`0.912 (0.887-0.934)`; `n/a` where undefined; a `†` after an unreliable interval."""
    if not math.isfinite(iv.estimate):
        return undefined
    mark = "" if iv.reliable else " †"
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


def undefined_notes(cmp: Comparison) -> list[str]:
    """One line per interval with undefined resamples or marked unreliable."""
    out = []
    for r in cmp.rows:
        for t in THRESHOLDS:
            for m in TABLE_METRICS:
                iv = r.metrics[t][m]
                if t == "at_0.5" and iv is r.metrics["at_threshold"][m]:
                    continue  # threshold-free: the same interval, listed once
                if iv.defined and (iv.n_undefined or not iv.reliable):
                    out.append(
                        f"{r.label}, {METRIC_TITLES[m]} ({THRESHOLD_SHORT[t]}): "
                        f"{iv.n_undefined} of {iv.n_boot} resamples undefined"
                        + ("" if iv.reliable else ", unreliable")
                    )
    return out


def _write_table_csv(cmp: Comparison, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        head = ["run", "label", "model", "mode", "head", "seed", "weights", "threshold_policy"]
        head += ["threshold", "trainable_params", "best_epoch", "epochs_run"]
        head += ["seconds_per_epoch", "extraction_seconds"]
        for m in TABLE_METRICS:
            head += [m, f"{m}_lo", f"{m}_hi", f"{m}_undefined_resamples", f"{m}_reliable"]
        writer.writerow(head)
        for row in cmp.rows:
            for t in THRESHOLDS:
                cells: list[Any] = [row.name, row.label, row.model, row.mode, row.head]
                cells += [row.seed, row.weights, t]
                cells += [row.threshold if t == "at_threshold" else 0.5, row.trainable_params]
                cells += [row.best_epoch, row.epochs_run, row.seconds_per_epoch]
                cells += [row.extraction_seconds]
                for m in TABLE_METRICS:
                    iv = row.metrics[t][m]  # undefined: empty cells, never "nan"
                    cells += json_safe([iv.estimate, iv.lo, iv.hi])
                    cells += [iv.n_undefined, iv.reliable] if iv.defined else [None, None]
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


def _plot_roc(cmp: Comparison, path: Path) -> bool:
    from sklearn.metrics import roc_curve

    from featurestore.compare.analysis import _test_arrays

    fig, ax = new_figure((5.5, 5))
    drawn = False
    for row, record in zip(cmp.rows, cmp.records, strict=True):
        y, p, _ = _test_arrays(record)
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, p)
        auc = row.metrics["at_threshold"]["roc_auc"].estimate
        ax.plot(fpr, tpr, label=f"{row.label} (AUC {fmt_value(auc)})")
        drawn = True
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC on the test set")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _stamp(fig, cmp)
    save_figure(fig, path, dpi=120, tight=False)
    return drawn


def _plot_intervals(cmp: Comparison, path: Path) -> bool:
    metrics = [m for m in TABLE_METRICS if m != "loss"]
    fig, axes = new_figure((3 * len(metrics), 0.5 * len(cmp.rows) + 2), 1, len(metrics))
    labels = [r.label for r in cmp.rows]
    for ax, m in zip(axes, metrics, strict=True):
        ivs = [r.metrics["at_threshold"][m] for r in cmp.rows]
        ivs = [iv if iv.defined else Interval(np.nan, np.nan, np.nan) for iv in ivs]
        est = np.array([iv.estimate for iv in ivs])  # NaN (undefined) draws nothing
        err = np.array([[iv.estimate - iv.lo for iv in ivs], [iv.hi - iv.estimate for iv in ivs]])
        ax.errorbar(est, np.arange(len(ivs)), xerr=err, fmt="o", capsize=3)
        if m in cmp.baseline and cmp.baseline[m] is not None:
            ax.axvline(cmp.baseline[m], color="grey", ls=":", label="majority class")
        ax.set_yticks(np.arange(len(ivs)), labels if ax is axes[0] else [""] * len(ivs))
        ax.set_title(METRIC_TITLES[m], fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.invert_yaxis()
    fig.suptitle("Test metrics at the validation threshold, 95% bootstrap intervals", fontsize=9)
    fig.tight_layout()
    _stamp(fig, cmp)
    save_figure(fig, path, dpi=120, tight=False)
    return True


def _plot_confusions(cmp: Comparison, path: Path) -> bool:
    from featurestore.compare.analysis import _test_arrays
    from featurestore.plots import text_color

    n = len(cmp.rows)
    fig, axes = new_figure((2.8 * n, 2.9), 1, n, squeeze=False)
    names = list(cmp.records[0].config["class_names"])
    pos = names.index(cmp.records[0].config["positive_class"])
    order = [1 - pos, pos]  # negative class first, as in the confusion-matrix convention
    for ax, row, record in zip(axes[0], cmp.rows, cmp.records, strict=True):
        y, p, _ = _test_arrays(record)
        pred = (p >= row.threshold).astype(int)
        cm = np.array([[np.sum((y == t) & (pred == q)) for q in (0, 1)] for t in (0, 1)])
        image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color=text_color(image, v))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ticks = [names[i] for i in order]
        ax.set_xticks([0, 1], ticks, fontsize=7)
        ax.set_yticks([0, 1], ticks, fontsize=7)
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
    return f"Dataset: **{d['name']}** (`{d['path']}`), fingerprint `{fp}`" + (
        f"; images {counts}." if counts else "."
    )


def render_markdown(cmp: Comparison, plots: list[str], *, extra: Sequence[str] = ()) -> str:
    """The report as GitHub-flavoured Markdown (`extra`: more lines before the run list).

    Order: title, warning banners, the verdict, the dataset, then the tables (validation
    threshold first, as in the terminal), the column legend, paired tests, seeds, plots.
    """
    ts = cmp.test_set
    unit = cmp.config.resample
    out = ["# xray comparison", ""]
    for line in banner_lines(cmp):
        out += [line, ""]
    if cmp.verdict is not None:
        out += ["## Verdict", ""]
        out += [f"- {line}" for line in cmp.verdict.lines]
        out += [""]
    out += [dataset_line(cmp), ""]
    out += [f"Note: {note}" for note in cmp.notes]
    out += [
        "",
        f"Test set: {ts['images']} images ({ts['positives']} positive) from {ts['patients']} "
        f"patients. Intervals: {100 * (1 - cmp.config.alpha):.0f}% percentile bootstrap, "
        f"{cmp.config.n_boot} resamples of {unit}, seed {cmp.config.seed}.",
        "",
    ]
    for t in THRESHOLDS:
        out += [f"## Test metrics at the {THRESHOLD_TITLES[t]}", ""]
        head = ["run", "weights", "threshold"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
        rows = [
            [r.label, r.weights, f"{0.5 if t == 'at_0.5' else r.threshold:.3f}"]
            + [fmt_interval(r.metrics[t][m]) for m in TABLE_METRICS]
            for r in cmp.rows
        ]
        b = cmp.baseline
        rows.append(
            [f"majority class ({b['majority_class']})", "-", "0.500"]
            + [fmt_value(b.get(m)) for m in TABLE_METRICS]
        )
        out += [*_markdown_table(head, rows), ""]
    out += [COLUMN_NOTES.format(min_units=cmp.config.min_units_per_class), ""]
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
        out += ["## Paired tests on the same test images", ""]
        clustered = unit == "patients"
        out += [
            "McNemar on correctness at each run's validation threshold"
            + (
                ", clustered by patient (Durkalski et al. 2003, Stat Med 22:2417; the exact "
                "binomial test when every patient has one image)"
                if clustered
                else " (exact binomial when fewer than 25 discordant pairs, else chi-square "
                "with continuity correction)"
            )
            + "; DeLong's test for the difference of ROC-AUCs"
            + (", clustered by patient (Obuchowski 1997, Biometrics 53:567)" if clustered else "")
            + f". Holm p: adjusted by Holm's method over the {len(cmp.pairs)} pairs (Holm "
            "1979), per test.",
            "",
        ]
        head = ["A", "B", "A only right", "B only right", "McNemar p", "Holm p", "AUC A - B"]
        head += ["DeLong p", "Holm p"]
        rows = [
            [
                p.a,
                p.b,
                str(p.mcnemar.b),
                str(p.mcnemar.c),
                fmt_p(p.mcnemar.p_value),
                fmt_p(p.mcnemar_p_holm),
                "n/a" if p.delong is None else f"{p.delong.diff:+.3f}",
                fmt_p(None if p.delong is None else p.delong.p_value),
                fmt_p(p.delong_p_holm),
            ]
            for p in cmp.pairs
        ]
        out += [*_markdown_table(head, rows), ""]
    if cmp.seed_groups:
        out += ["## Across seeds (validation threshold): mean ± sd", ""]
        out += [
            "Only runs whose settings are identical except the seed, with distinct seeds.",
            "",
        ]
        head = ["configuration", "seeds"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
        rows = [
            [g.label, ", ".join(map(str, g.seeds))]
            + [fmt_mean_sd(g.mean[m], g.std[m]) for m in TABLE_METRICS]
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


def fmt_mean_sd(mean: float, sd: float, *, undefined: str = "n/a") -> str:
    """`0.912 ± 0.004`; `n/a` where undefined."""
    if not math.isfinite(mean):
        return undefined
    return f"{mean:.3f} ± {sd:.3f}" if math.isfinite(sd) else f"{mean:.3f} ± n/a"


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
