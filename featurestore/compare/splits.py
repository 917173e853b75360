"""The trainer's side of the engine: the operating point chosen on validation and the split
metrics metrics.json records, for any task (`featurestore.tasks.Task`).

Binary: one threshold by the run's policy (`compare.operating_point`) and the binary metrics at
0.5 and at it. Multi-class: the argmax (no threshold) and the multi-class metrics. Multi-label:
one threshold per finding by the same policy over its observed entries, and the per-finding
metrics at them. The three metric sets are computed with scikit-learn on the split's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featurestore.config import parse_threshold_policy
from featurestore.tasks import MULTICLASS_RULE, Task

_SPLIT_WORDS = {"val": "validation", "calibration": "local calibration"}
Thresholds = float | np.ndarray | None
"""What `Task.decide` takes: one float (binary), one per finding (L,), or None (argmax)."""


def choose_operating_point(
    task: Task, y_val: np.ndarray, p_val: np.ndarray, *, policy: str, split: str = "val"
) -> tuple[dict[str, Any], Thresholds]:
    """The decision thresholds chosen on `split` (validation, or an external evaluation's local
    calibration patients) and metrics.json's `threshold` record.

    y_val: (N,) class indices, or (N, L) 1/0/NaN targets; p_val: (N, C) probabilities (binary:
    (N,) P(positive) is taken as well).
    A policy that cannot run (validation of one class) falls back to 0.5, said in the record
    (`ran` False and a note; per finding for multi-label), never silently.
    """
    from featurestore.compare.metrics import operating_point
    from featurestore.compare.multilabel import choose_label_thresholds, label_threshold_fallbacks

    names = task.class_names
    if task.multiclass:
        return {"policy": "argmax", "value": None, "note": MULTICLASS_RULE}, None
    if task.multilabel:
        per = choose_label_thresholds(y_val, p_val, names, policy=policy)
        fallback = label_threshold_fallbacks(y_val, names, policy=policy)
        record: dict[str, Any] = {
            "policy": policy,
            "value": None,
            "per_label": per,
            "ran": {n: n not in fallback for n in names},
            "notes": list(fallback.values()),
            "chosen_on": split,
        }
        return record, np.array([per[n] for n in names])
    pos = task.positive_index
    scores = task.scores(p_val)
    point = operating_point(y_val, scores, policy=policy, positive_index=pos, split=split)
    n_pos = int((y_val == pos).sum())
    ran = parse_threshold_policy(policy)[0] == "fixed" or 0 < n_pos < len(y_val)
    note = None
    if not ran:
        only = names[int(y_val[0])]
        note = (
            f"the {_SPLIT_WORDS.get(split, split)} split holds {only} images only: the {policy} "
            "threshold policy could not run, so 0.5 is used"
        )
    record = {  # the same keys, in the same order, as every binary metrics.json before
        "policy": point["policy"],
        "value": float(point["value"]),
        "ran": ran,
        "note": note,
        "chosen_on": point["chosen_on"],
        "reached": point["reached"],
    }
    return record, float(point["value"])


def split_metrics(
    task: Task, y: np.ndarray, probs: np.ndarray, *, thresholds: Thresholds, loss: float | None
) -> dict[str, dict[str, Any]]:
    """One split's metrics in the metrics.json layout of the task: binary `{"at_0.5",
    "at_threshold"}`, multi-class `{"argmax"}`, multi-label `{"at_label_thresholds"}`.

    y: (N,) class indices or (N, L) targets; probs: (N, C) probabilities; `thresholds` as
    `choose_operating_point` returns them.
    """
    from featurestore.compare.metrics import evaluate_split
    from featurestore.compare.multiclass import evaluate_multiclass_split
    from featurestore.compare.multilabel import evaluate_multilabel_split

    names = task.class_names
    if task.multiclass:
        return evaluate_multiclass_split(y, probs, class_names=names, loss=loss)
    if task.multilabel:
        per = dict(zip(names, np.asarray(thresholds, dtype=np.float64).tolist(), strict=True))
        return evaluate_multilabel_split(y, probs, names=names, thresholds=per, loss=loss)
    return evaluate_split(
        y,
        task.scores(probs),
        threshold=float(thresholds),  # type: ignore[arg-type]
        class_names=names,
        positive_index=task.positive_index,
        loss=loss,
    )


def run_calibration(task: Task, scored: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """metrics.json's `calibration`: a recalibration fitted on val (`fit_recalibration`: Platt,
    temperature, or Platt per finding), reported beside the raw outputs (predictions.csv and the
    metrics stay the model's own) with its effect on each split (`recalibration_report`).

    `scored`: split -> (labels (N,) or targets (N, L), probabilities (N, C)). A fit that would
    invert a ranking or cannot be made keeps the identity and says why.
    """
    from featurestore.compare.calibration import fit_recalibration, recalibration_report

    pairs = {s: (y, task.scores(p)) for s, (y, p) in scored.items()}
    fitted = fit_recalibration(task, *pairs["val"], split="val")
    return recalibration_report(task, fitted, pairs)
