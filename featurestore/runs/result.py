"""What a training produced, below every layer that reads it: `FitResult` and the per-split
`SplitPredictions` (train makes them, runs writes them, plots draws their history)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor


@dataclass
class SplitPredictions:
    """Per-image outputs of one split, in `source.records(split)` order."""

    keys: list[str]
    groups: list[str]
    labels: np.ndarray
    """(N,) int64 class indices; (N, L) float64 1/0/NaN targets of a multi-label task."""
    probabilities: np.ndarray
    """(N,) float64 P(positive class) for a binary task; (N, C) class (or finding)
    probabilities otherwise."""
    predictions: np.ndarray
    """(N,) int64 class indices at the validation-chosen threshold (binary) or argmax; (N, L)
    0/1 findings at their own thresholds (multi-label)."""


@dataclass
class FitResult:
    """What a training produced: best weights, history, metrics, per-image predictions."""

    best_state: dict[str, Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds_per_epoch: float
    threshold: dict[str, Any]
    """{"policy": str, "value": float, "ran": bool, "note": str | None, "chosen_on": "val",
    "reached": {...}}, chosen on validation; `ran` is False when the policy could not run
    (one-class validation: 0.5 is used); `reached` is what the threshold gives on val."""
    val: dict[str, Any]
    test: dict[str, Any]
    predictions: dict[str, SplitPredictions] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    """{"requested": monitor asked for, "used": monitor that selected the best epoch,
    "note": why they differ or None}."""
    calibration: dict[str, Any] | None = None
    """Platt scaling fitted on val, with ECE/Brier before and after on val and test."""
    task: str = "binary"
    """`binary` or `multiclass`; metrics.json names it for anything but binary (whose
    metrics.json stays as it always was)."""

    def timing_json(self) -> dict[str, Any]:
        """timing.json: wall-clock figures, kept apart so metrics.json repeats exactly."""
        return {"seconds_per_epoch": self.seconds_per_epoch, "epochs_run": self.epochs_run}

    def metrics_json(self) -> dict[str, Any]:
        """The metrics.json document of the run-folder contract (no timings: repeatable)."""
        task = {} if self.task == "binary" else {"task": self.task}
        return {
            **task,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "monitor": self.selection,
            "threshold": self.threshold,
            "val": self.val,
            "test": self.test,
            **({"calibration": self.calibration} if self.calibration is not None else {}),
        }
