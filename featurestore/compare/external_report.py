"""The report's external-validation section: evaluation folders of the compared runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECTION_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc")
"""Metrics of the report's external-validation table (each with its interval)."""


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
        except ValueError:
            continue  # unreadable: compare reports runs, not broken side files
        if evaluation.get("run_name") not in runs:
            continue
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
                "threshold": metrics["threshold"],
                "intervals": metrics["intervals"]["at_threshold"],
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


def external_section(evaluations: list[dict[str, Any]]) -> list[str]:
    """The report's "External validation" section (Markdown lines); [] without evaluations."""
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
    head = ["run", "dataset", "images / patients", "threshold", "accuracy", "sensitivity"]
    head += ["specificity", "ROC-AUC", "ECE", "Δ accuracy", "Δ ROC-AUC"]
    rows = []
    for e in evaluations:
        t = e["threshold"]
        where = f"{e['dataset']} ({e['split']})"
        if e.get("recalibrate"):
            where += f", recalibrated on {e['recalibrate']} local patients"
        rows.append(
            [e["label"], where, f"{e['images']} / {e['patients']}",
             f"{t['value']:.3f} ({t.get('policy', '?')}, on {t.get('chosen_on', 'val')})"]
            + [_fmt(e["intervals"][m]) for m in SECTION_METRICS]
            + ["-" if e["ece"] is None else f"{e['ece']:.3f}",
               _fmt(e["difference"]["accuracy"], signed=True),
               _fmt(e["difference"]["roc_auc"], signed=True)]
        )  # fmt: skip
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]
