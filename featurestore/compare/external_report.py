"""The report's external-validation section: evaluation folders of the compared runs, for
every task (binary at its threshold, multi-class by argmax, multi-label per finding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECTION_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc")
"""Metrics of the report's external-validation table (each with its interval)."""
MULTICLASS_SECTION_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc_macro",
)
"""Metrics of a multi-class evaluation's row (each with its interval)."""


def find_evaluations(folder: Path, runs: dict[str, str]) -> list[dict[str, Any]]:
    """Summaries of the evaluation folders under `folder` made from the runs named in `runs`
    (run folder name -> display label), oldest first; [] when there are none."""
    from featurestore.runs import EVALUATION_FILE, is_evaluation
    from featurestore.tasks import Task

    if not Path(folder).is_dir():
        return []
    out = []
    for path in sorted(Path(folder).iterdir()):
        if not is_evaluation(path):
            continue
        try:
            evaluation = json.loads((path / EVALUATION_FILE).read_text())
            metrics = json.loads((path / "metrics.json").read_text())
            task = Task.from_record(json.loads((path / "config.json").read_text())).kind
        except ValueError:
            continue  # unreadable: compare reports runs, not broken side files
        if evaluation.get("run_name") not in runs:
            continue
        # One decision rule per task: at_threshold, argmax or at_label_thresholds.
        (intervals,) = metrics["intervals"].values()
        out.append(
            {
                "path": str(path),
                "run": evaluation["run_name"],
                "label": runs[evaluation["run_name"]],
                "dataset": evaluation.get("dataset"),
                "split": evaluation.get("split"),
                "images": evaluation.get("images"),
                "patients": evaluation.get("patients"),
                "recalibrate": evaluation.get("recalibrate", 0),
                "task": task,
                "findings": evaluation.get("findings"),
                "threshold": metrics["threshold"],
                "intervals": intervals,
                "ece": metrics["calibration"].get("ece"),
                "difference": metrics["internal_difference"],
            }
        )
    return out


def _fmt(iv: dict[str, Any], *, signed: bool = False) -> str:
    """`0.91 [0.88, 0.93]`; `-` where undefined."""
    value = iv.get("estimate", iv.get("difference"))
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if iv.get("lo") is None:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{iv['lo']:{sign}.3f}, {iv['hi']:{sign}.3f}]"


def _where(e: dict[str, Any]) -> str:
    where = f"{e['dataset']} ({e['split']})"
    if e.get("recalibrate"):
        where += f", recalibrated on {e['recalibrate']} local patients"
    return where


def _ece(e: dict[str, Any]) -> str:
    return "-" if e["ece"] is None else f"{e['ece']:.3f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return [*out, *("| " + " | ".join(r) + " |" for r in rows), ""]


def _binary_table(evaluations: list[dict[str, Any]]) -> list[str]:
    head = ["run", "dataset", "images / patients", "threshold", "accuracy", "sensitivity"]
    head += ["specificity", "ROC-AUC", "ECE", "Δ accuracy", "Δ ROC-AUC"]
    rows = []
    for e in evaluations:
        t = e["threshold"]
        rows.append(
            [e["label"], _where(e), f"{e['images']} / {e['patients']}",
             f"{t['value']:.3f} ({t.get('policy', '?')}, on {t.get('chosen_on', 'val')})"]
            + [_fmt(e["intervals"][m]) for m in SECTION_METRICS]
            + [_ece(e), _fmt(e["difference"]["accuracy"], signed=True),
               _fmt(e["difference"]["roc_auc"], signed=True)]
        )  # fmt: skip
    return _table(head, rows)


def _multiclass_table(evaluations: list[dict[str, Any]]) -> list[str]:
    head = ["run", "dataset", "images / patients", "accuracy", "balanced accuracy"]
    head += ["F1 (macro)", "ROC-AUC (macro)", "ECE (top label)", "Δ accuracy", "Δ ROC-AUC (macro)"]
    rows = []
    for e in evaluations:
        rows.append(
            [e["label"], _where(e), f"{e['images']} / {e['patients']}"]
            + [_fmt(e["intervals"][m]) for m in MULTICLASS_SECTION_METRICS]
            + [_ece(e), _fmt(e["difference"]["accuracy"], signed=True),
               _fmt(e["difference"]["roc_auc_macro"], signed=True)]
        )  # fmt: skip
    return _table(head, rows)


def _multilabel_table(evaluations: list[dict[str, Any]]) -> list[str]:
    head = ["run", "dataset", "images / patients", "thresholds", "macro AUC", "AUC per finding"]
    head += ["ECE (mean per finding)", "Δ macro AUC"]
    rows = []
    for e in evaluations:
        t = e["threshold"]
        findings = e.get("findings") or [
            m.removeprefix("auc_") for m in e["intervals"] if m.startswith("auc_")
        ]
        per = "; ".join(f"{f} {_fmt(e['intervals'][f'auc_{f}'])}" for f in findings)
        rows.append(
            [e["label"], _where(e), f"{e['images']} / {e['patients']}",
             f"per finding ({t.get('policy', '?')}, on {t.get('chosen_on', 'val')})",
             _fmt(e["intervals"]["macro_auc"]), per, _ece(e),
             _fmt(e["difference"]["macro_auc"], signed=True)]
        )  # fmt: skip
    return _table(head, rows)


def external_section(evaluations: list[dict[str, Any]]) -> list[str]:
    """The report's "External validation" section (Markdown lines); [] without evaluations.

    One table per task among the evaluations: binary at the threshold shown, multi-class by
    argmax (MULTICLASS_RULE), multi-label with each finding at its own threshold.
    """
    if not evaluations:
        return []
    out = [
        "## External validation",
        "",
        "Each run scored on another labelled dataset by `xray evaluate`, at the threshold "
        "shown (the run's own, chosen on its validation set, unless stated). Intervals: 95% "
        "percentile bootstrap over patients; Δ = external - internal test, with a two-sample "
        "patient bootstrap interval. With local recalibration, N patients of the external "
        "split were used to refit and are not counted.",
        "",
    ]
    tables = {"binary": _binary_table, "multiclass": _multiclass_table,
              "multilabel": _multilabel_table}  # fmt: skip
    for task, table in tables.items():
        members = [e for e in evaluations if e.get("task", "binary") == task]
        if members:
            if len(tables) > 1 and any(e.get("task", "binary") != task for e in evaluations):
                out += [f"{task}:", ""]
            out += table(members)
    return out
