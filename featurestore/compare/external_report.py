"""The report's external-validation section: evaluation folders of the compared runs, for
every task (binary at its threshold, multi-class by argmax, multi-label per finding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featurestore.compare.labels import METRIC_TITLES
from featurestore.config import CompareConfig
from featurestore.tasks import TASK_KINDS, Task

MIN_UNITS = CompareConfig().min_units_per_class
"""Patients of a class below which `xray evaluate` marks an interval unreliable."""


def find_evaluations(folder: Path, runs: dict[str, str]) -> list[dict[str, Any]]:
    """Summaries of the evaluation folders under `folder` made from the runs named in `runs`
    (run folder name -> display label), oldest first; [] when there are none."""
    from featurestore.runs import EVALUATION_FILE, is_evaluation

    if not Path(folder).is_dir():
        return []
    out = []
    for path in sorted(Path(folder).iterdir()):
        if not is_evaluation(path):
            continue
        try:
            evaluation = json.loads((path / EVALUATION_FILE).read_text())
            metrics = json.loads((path / "metrics.json").read_text())
            task = Task.from_record(json.loads((path / "config.json").read_text()))
        except ValueError:
            continue  # unreadable: compare reports runs, not broken side files
        if evaluation.get("run_name") not in runs:
            continue
        # One decision rule per task: at_threshold, argmax or at_label_thresholds.
        (intervals,) = metrics["intervals"].values()
        difference = metrics["internal_difference"]
        for old in (intervals, difference):  # multi-label folders written before the rename
            if "macro_auc" in old and "roc_auc_macro" not in old:
                old["roc_auc_macro"] = old.pop("macro_auc")
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
                **task.as_record(),
                "findings": evaluation.get("findings"),
                "threshold": metrics["threshold"],
                "intervals": intervals,
                "ece": metrics["calibration"].get("ece"),
                "difference": difference,
            }
        )
    return out


def _fmt(iv: dict[str, Any], *, signed: bool = False) -> str:
    """`0.91 [0.88, 0.93]`; `-` where undefined; a `\u2020` after an interval `xray evaluate`
    marked unreliable (`reliable` False: too few patients of a class, or undefined resamples)."""
    value = iv.get("estimate", iv.get("difference"))
    if value is None:
        return "-"
    sign = "+" if signed else ""
    mark = " \u2020" if iv.get("reliable") is False else ""
    if iv.get("lo") is None:
        return f"{value:{sign}.3f}{mark}"
    return f"{value:{sign}.3f} [{iv['lo']:{sign}.3f}, {iv['hi']:{sign}.3f}]{mark}"


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


def _decision(e: dict[str, Any]) -> str:
    """The decision rule of an evaluation, as its table cell."""
    t = e["threshold"]
    if e["task"] == "multiclass":
        return "argmax"
    at = "per finding" if e["task"] == "multilabel" else f"{t['value']:.3f}"
    return f"{at} ({t.get('policy', '?')}, on {t.get('chosen_on', 'val')})"


def _task_table(task: Task, evaluations: list[dict[str, Any]]) -> list[str]:
    """One task's table: the decision, the task's table metrics (`Task.table_metrics`, the
    loss left out) and for multi-label each finding's ROC-AUC, each with its interval; the ECE
    of the reported probabilities; external - internal of accuracy (where the task has one)
    and of the primary metric."""
    shown = [m for m in task.table_metrics if m != "loss"]
    deltas = [m for m in ("accuracy", task.primary_metric) if m in shown]
    head = ["run", "dataset", "images / patients", "decision"]
    head += [METRIC_TITLES.get(m, m) for m in shown]
    head += ["ROC-AUC per finding"] if task.multilabel else []
    head += ["ECE", *(f"Δ {METRIC_TITLES.get(m, m)}" for m in deltas)]
    rows = []
    for e in evaluations:
        row = [e["label"], _where(e), f"{e['images']} / {e['patients']}", _decision(e)]
        row += [_fmt(e["intervals"][m]) for m in shown]
        if task.multilabel:
            findings = e.get("findings") or task.class_names
            row.append("; ".join(f"{f} {_fmt(e['intervals'][f'auc_{f}'])}" for f in findings))
        row += [_ece(e), *(_fmt(e["difference"][m], signed=True) for m in deltas)]
        rows.append(row)
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
        "split were used to refit and are not counted. \u2020: unreliable interval (a class "
        f"the metric needs has fewer than {MIN_UNITS} patients in the evaluated split, or over "
        "1% of resamples were undefined); a \u0394 inherits its external side's mark.",
        "",
    ]
    kinds = [k for k in TASK_KINDS if any(e["task"] == k for e in evaluations)]
    for kind in kinds:
        members = [e for e in evaluations if e["task"] == kind]
        if len(kinds) > 1:
            out += [f"{kind}:", ""]
        out += _task_table(Task.from_record(members[0]), members)
    return out
