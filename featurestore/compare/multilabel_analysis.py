"""`xray compare` for multi-label runs: per-label AUC intervals (patient bootstrap), DeLong per
label with Holm's correction, the prevalence baseline, and the report."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.compare.analysis import Interval, replicate_interval, units_per_class
from featurestore.compare.bootstrap import _unit_index, _weighted_auc
from featurestore.compare.labels import run_labels
from featurestore.compare.multiclass_report import _md_table
from featurestore.compare.multilabel import label_metrics
from featurestore.compare.report import fmt_interval, fmt_p, json_safe, render_html
from featurestore.compare.stats import DeLongResult, delong_roc_test, holm
from featurestore.config import CompareConfig
from featurestore.errors import XrayError
from featurestore.runs import RunRecord, load_run

_CHUNK_CELLS = 2_000_000


def label_auc_replicates(
    targets: np.ndarray,
    probs: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """(B, L) bootstrap replicates of each label's AUC over its observed entries, NaN where a
    resample leaves the label with one class. Units (patients when `groups` is given: the
    cluster bootstrap of Davison & Hinkley 1997, sec. 3.8) are drawn once per resample for all
    labels, so the macro AUC of a resample is the mean of its row."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    n, k = y.shape
    rng = np.random.default_rng(seed)
    unit, n_units = _unit_index(n, groups)
    observed = ~np.isnan(y)
    out = np.empty((n_boot, k))
    rows = max(1, _CHUNK_CELLS // max(n, n_units))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        offsets = (np.arange(b) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_units)
        w = counts.reshape(b, n_units)[:, unit].astype(np.float64)  # (b, N)
        for c in range(k):
            mask = observed[:, c]
            out[start : start + b, c] = _weighted_auc(y[mask, c], p[mask, c], w[:, mask])
    return out


@dataclass(frozen=True)
class MultilabelRow:
    """One multi-label run: identity and test AUCs (macro and per label) with intervals."""

    name: str
    label: str
    model: str
    mode: str
    head: str
    seed: int
    weights: str
    best_epoch: int
    epochs_run: int
    macro_auc: Interval
    """Mean of the per-label AUCs (labels defined on the full test set), with its interval."""
    per_label: dict[str, dict[str, Any]]
    """Finding -> {"auc": Interval, "sensitivity", "specificity", "threshold", "n_positive"}."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("macro_auc", "per_label")}
        out["macro_auc"] = self.macro_auc.as_dict()
        out["per_label"] = {
            f: {m: v.as_dict() if isinstance(v, Interval) else v for m, v in d.items()}
            for f, d in self.per_label.items()
        }
        return out


@dataclass(frozen=True)
class MultilabelPair:
    """DeLong's test per label for two runs, with Holm-adjusted p-values over the labels."""

    a: str
    b: str
    delong: dict[str, DeLongResult | None]
    """Finding -> DeLong result; None when the label has one class on test."""
    holm_p: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "delong": {f: None if d is None else d.as_dict() for f, d in self.delong.items()},
            "holm_p": self.holm_p,
        }


@dataclass
class MultilabelComparison:
    """Everything `xray compare` shows and writes for multi-label runs."""

    config: CompareConfig
    findings: tuple[str, ...]
    rows: list[MultilabelRow]
    baseline: dict[str, Any]
    pairs: list[MultilabelPair]
    test_set: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": "multilabel",
            "config": self.config.__dict__,
            "findings": list(self.findings),
            "test_set": self.test_set,
            "runs": [r.as_dict() for r in self.rows],
            "baseline": self.baseline,
            "pairs": [p.as_dict() for p in self.pairs],
            "notes": self.notes,
        }


def _test_arrays(record: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, targets (N, L), probabilities (N, L), patients) of the test rows, sorted by key."""
    test = record.split_predictions("test")
    if "targets" not in test:
        raise XrayError(f"{record.name} is not a multi-label run (no y_<finding> columns)")
    order = np.argsort(test["key"], kind="stable")
    return (
        test["key"][order],
        test["targets"][order],
        test["probabilities"][order],
        test["patient"][order],
    )


def compare_multilabel_runs(
    paths: Sequence[Path], config: CompareConfig | None = None
) -> MultilabelComparison:
    """Load multi-label run folders (same findings, same test images and targets), then compute
    per-label and macro AUC intervals, DeLong per label for every pair (Holm-adjusted over the
    labels), and the prevalence baseline."""
    config = config or CompareConfig()
    if not paths:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    records = [load_run(Path(p)) for p in paths]
    findings = tuple(records[0].config["class_names"])
    ref_keys, ref_y, _, groups = _test_arrays(records[0])
    notes: list[str] = []
    same = True
    for r in records[1:]:
        if tuple(r.config["class_names"]) != findings:
            raise XrayError(f"{r.name} and {records[0].name} have different findings")
        keys, y, _, _ = _test_arrays(r)
        if not (np.array_equal(keys, ref_keys) and np.array_equal(y, ref_y, equal_nan=True)):
            msg = f"{r.name} and {records[0].name} were evaluated on different test sets"
            if not config.allow_different_test:
                raise XrayError(msg + "; pass --allow-different-test to compare them anyway")
            notes.append(msg + ": paired tests skipped")
            same = False
    labels, _ = run_labels([r.config for r in records], [r.name for r in records])
    unit = groups if config.resample == "patients" else None
    rows = [
        _row(r, findings, config, unit, label=label)
        for r, label in zip(records, labels, strict=True)
    ]
    pairs = []
    if same:
        for (ra, a), (rb, b) in itertools.combinations(zip(rows, records, strict=True), 2):
            pairs.append(_pair(ra, a, rb, b, findings))
    observed = ~np.isnan(ref_y)
    test_set = {
        "images": int(ref_y.shape[0]),
        "patients": len(set(groups.tolist())),
        "positives": {f: int(np.sum(ref_y[:, k] == 1)) for k, f in enumerate(findings)},
        "masked": {f: int(np.sum(~observed[:, k])) for k, f in enumerate(findings)},
    }
    baseline = prevalence_baseline(records[0], findings, ref_y)
    if any(r.weights == "none" for r in rows):
        notes.append(
            "Some runs use randomly initialised backbones (--weights none): "
            "a pipeline check, not a result about pretrained transfer."
        )
    return MultilabelComparison(config, findings, rows, baseline, pairs, test_set, notes, records)


def _row(
    record: RunRecord,
    findings: tuple[str, ...],
    config: CompareConfig,
    groups: np.ndarray | None,
    *,
    label: str,
) -> MultilabelRow:
    _, y, p, patients = _test_arrays(record)
    thresholds = record.metrics["threshold"].get("per_label", {})
    reps = label_auc_replicates(y, p, groups=groups, n_boot=config.n_boot, seed=config.seed)
    per_label: dict[str, dict[str, Any]] = {}
    defined = []
    units = patients if groups is not None else np.arange(y.shape[0]).astype(str)
    fewest: dict[int, int] = {}
    for k, f in enumerate(findings):
        mask = ~np.isnan(y[:, k])
        m = label_metrics(y[mask, k], p[mask, k], float(thresholds.get(f, 0.5)))
        if m["auc"] is not None:
            defined.append(k)
        # A label's AUC conditions on its positive and its negative units (observed entries).
        fewest[k] = min(units_per_class(y[mask, k].astype(np.int64), units[mask], 2))
        per_label[f] = {
            "auc": replicate_interval(
                m["auc"],
                reps[:, k],
                alpha=config.alpha,
                fewest_units=fewest[k],
                min_units=config.min_units_per_class,
            ),
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "threshold": m["threshold"],
            "n_positive": m["n_positive"],
        }
    aucs = [per_label[findings[k]]["auc"].estimate for k in defined]
    macro = float(np.mean(aucs)) if defined else None
    macro_reps = reps[:, defined].mean(1) if defined else np.full(config.n_boot, np.nan)
    cfg, met = record.config, record.metrics
    store = cfg.get("store") or {}
    return MultilabelRow(
        name=record.name,
        label=label,
        model=str(cfg["model"]),
        mode=str(cfg["mode"]),
        head=str(cfg.get("head", "")),
        seed=int(cfg.get("seed", 0)),
        weights=str(cfg.get("weights_id") or store.get("weights_id") or cfg.get("weights", "")),
        best_epoch=int(met["best_epoch"]),
        epochs_run=int(met["epochs_run"]),
        macro_auc=replicate_interval(
            macro,
            macro_reps,
            alpha=config.alpha,
            fewest_units=min((fewest[k] for k in defined), default=None),
            min_units=config.min_units_per_class,
        ),
        per_label=per_label,
    )


def _pair(
    ra: MultilabelRow, a: RunRecord, rb: MultilabelRow, b: RunRecord, findings: tuple[str, ...]
) -> MultilabelPair:
    _, y, pa, _ = _test_arrays(a)
    _, _, pb, _ = _test_arrays(b)
    tests: dict[str, DeLongResult | None] = {}
    for k, f in enumerate(findings):
        mask = ~np.isnan(y[:, k])
        yk = y[mask, k]
        both = 0 < yk.sum() < yk.size
        tests[f] = delong_roc_test(yk.astype(np.int64), pa[mask, k], pb[mask, k]) if both else None
    tested = [f for f in findings if tests[f] is not None]
    adjusted = holm([tests[f].p_value for f in tested]) if tested else []  # type: ignore[union-attr]
    return MultilabelPair(ra.label, rb.label, tests, dict(zip(tested, adjusted, strict=True)))


def prevalence_baseline(
    record: RunRecord, findings: tuple[str, ...], test_targets: np.ndarray
) -> dict[str, Any]:
    """Scoring every image with train's prevalence of each finding: a constant, so every AUC
    is 0.5 (None for a label with one class on test) and the average precision is the test
    prevalence. `train_positives` comes from config.json's class_counts (None when absent)."""
    train = record.config.get("class_counts", {}).get("train") or {}
    out: dict[str, Any] = {"macro_auc": 0.5, "labels": {}}
    for k, f in enumerate(findings):
        yk = test_targets[~np.isnan(test_targets[:, k]), k]
        both = 0 < yk.sum() < yk.size
        out["labels"][f] = {
            "auc": 0.5 if both else None,
            "average_precision": float(yk.mean()) if yk.size else None,
            "test_prevalence": float(yk.mean()) if yk.size else None,
            "train_positives": train.get(f),
        }
    return out


def write_multilabel_report(cmp: MultilabelComparison, out_dir: Path) -> Path:
    """report.md, report.html, table.csv, comparison.json and roc.png (one ROC panel per
    finding, every run) into out_dir, via a temporary folder; returns report.md."""

    from featurestore.fileio import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, replace=True) as tmp:
        _write_report_files(cmp, tmp)
    return out_dir / "report.md"


def _write_report_files(cmp: MultilabelComparison, tmp: Path) -> None:
    import csv

    with (tmp / "table.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        cols = ["macro_auc", *(f"auc_{f}" for f in cmp.findings)]
        writer.writerow(["run", "label"] + [f"{c}{s}" for c in cols for s in ("", "_lo", "_hi")])
        for r in cmp.rows:
            ivs = [r.macro_auc, *(r.per_label[f]["auc"] for f in cmp.findings)]
            cells = [v for iv in ivs for v in (iv.estimate, iv.lo, iv.hi)]
            writer.writerow([r.name, r.label, *("" if np.isnan(v) else repr(v) for v in cells)])
    (tmp / "comparison.json").write_text(json.dumps(json_safe(cmp.as_dict()), indent=2))
    _plot_roc_per_label(cmp, tmp / "roc.png")
    markdown = render_multilabel_markdown(cmp, ["roc.png"])
    (tmp / "report.md").write_text(markdown)
    (tmp / "report.html").write_text(render_html(markdown, tmp))


def _plot_roc_per_label(cmp: MultilabelComparison, path: Path) -> None:
    from sklearn.metrics import roc_curve

    from featurestore.plots import new_figure, save_figure

    k = len(cmp.findings)
    cols = min(k, 4)
    n_rows = -(-k // cols)
    fig, axes = new_figure(
        figsize=(3.4 * cols, 3.4 * n_rows), nrows=n_rows, ncols=cols, squeeze=False
    )
    for ax in axes.flat[k:]:
        ax.axis("off")
    for c, (ax, f) in enumerate(zip(axes.flat, cmp.findings, strict=False)):
        for row, record in zip(cmp.rows, cmp.records, strict=True):
            _, y, p, _ = _test_arrays(record)
            mask = ~np.isnan(y[:, c])
            yk = y[mask, c]
            if 0 < yk.sum() < yk.size:
                fpr, tpr, _ = roc_curve(yk, p[mask, c])
                auc = row.per_label[f]["auc"].estimate
                ax.plot(fpr, tpr, label=f"{row.label} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set_title(f, fontsize=9)
        if ax.get_legend_handles_labels()[0]:  # a finding with one class on test has no curve
            ax.legend(loc="lower right", fontsize=6)
    save_figure(fig, path)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_multilabel_markdown(cmp: MultilabelComparison, plots: list[str]) -> str:
    """report.md: macro and per-label AUC with intervals, sensitivity/specificity at each
    label's validation threshold, the baseline, DeLong per label with Holm, plots, notes."""
    unit = "patients" if cmp.config.resample == "patients" else "images"
    ts = cmp.test_set
    out = [
        "# xray comparison (multi-label)",
        "",
        f"Test set: {ts['images']} images of {ts['patients']} patients. Each finding is scored "
        "over its observed labels (masked uncertain labels count nowhere) and decided at its own "
        f"threshold chosen on validation. AUC intervals: {round(100 * (1 - cmp.config.alpha))}% "
        f"percentile bootstrap resampling {unit} ({cmp.config.n_boot} resamples, seed "
        f"{cmp.config.seed}); the macro AUC averages the findings with both classes on test. "
        "`-` is undefined.",
        "",
        "## AUC per finding",
        "",
    ]
    head = ["run", "macro AUC", *cmp.findings]
    rows = [
        [r.label, fmt_interval(r.macro_auc)]
        + [fmt_interval(r.per_label[f]["auc"]) for f in cmp.findings]
        for r in cmp.rows
    ]
    rows.append(
        ["prevalence baseline", "0.500"]
        + [_fmt(cmp.baseline["labels"][f]["auc"]) for f in cmp.findings]
    )
    out += _md_table(head, rows)
    out += ["## Sensitivity / specificity at each finding's validation threshold", ""]
    rows = [
        [r.label]
        + [
            f"{_fmt(r.per_label[f]['sensitivity'])} / {_fmt(r.per_label[f]['specificity'])}"
            for f in cmp.findings
        ]
        for r in cmp.rows
    ]
    out += _md_table(["run", *cmp.findings], rows)
    positives = ", ".join(f"{f} {n}" for f, n in ts["positives"].items())
    masked = ", ".join(f"{f} {n}" for f, n in ts["masked"].items() if n)
    out += [f"Positives on test: {positives}." + (f" Masked: {masked}." if masked else ""), ""]
    if cmp.pairs:
        out += [
            "## DeLong tests per finding",
            "",
            "Two-sided DeLong test of equal AUC for each finding (DeLong et al. 1988), "
            "p-values adjusted with Holm's step-down method over the findings of each pair "
            "(family-wise error rate 5% per pair). With several pairs, also compare the "
            "adjusted p-values with 0.05 / (number of pairs).",
            "",
        ]
        head = ["a", "b", *cmp.findings]
        rows = []
        for p in cmp.pairs:
            cells = []
            for f in cmp.findings:
                d = p.delong[f]
                cells.append("-" if d is None else f"{d.diff:+.3f} p={fmt_p(p.holm_p[f])}")
            rows.append([p.a, p.b, *cells])
        out += _md_table(head, rows)
    out += [f"![{p}]({p})" for p in plots] + ([""] if plots else [])
    out += [f"> **Note:** {n}" for n in cmp.notes] + ([""] if cmp.notes else [])
    out += ["Run folders: " + ", ".join(f"`{r.name}`" for r in cmp.rows), ""]
    return "\n".join(out)
