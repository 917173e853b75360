"""Scoring a trained model: per-split predictions, the threshold chosen on val, test once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from featurestore import devices, distributed
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from featurestore.data import Split
    from featurestore.train.loop import TrainConfig
    from featurestore.train.sources import Source


MULTICLASS_RULE = (
    "multi-class decisions are the most probable class (argmax); a threshold policy chooses "
    "one cut-off for a two-class or a per-label decision and has no meaning here"
)
"""metrics.json's note on a multi-class run's decision rule, and the refusal of a policy."""


@dataclass
class SplitPredictions:
    """Per-image outputs of one split, in `source.records(split)` order."""

    keys: list[str]
    groups: list[str]
    labels: np.ndarray
    """(N,) int64 class indices."""
    probabilities: np.ndarray
    """(N,) float64 P(positive class) for a binary task; (N, C) class probabilities for a
    multi-class one."""
    predictions: np.ndarray
    """(N,) int64 class indices at the validation-chosen threshold (binary) or argmax."""


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


@torch.inference_mode()
def predict(
    model: nn.Module, source: Source, split: Split, *, amp_dtype: torch.dtype | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities (N, C), labels (N,) and the mean unweighted cross-entropy.

    Under torchrun a source with `eval_positions` scores one shard per rank; the shards are
    gathered by position, so every rank gets the whole split in records() order, each image once.
    """
    from featurestore.train.objectives import source_task, summed_loss, to_probabilities

    model.eval()
    device = next(model.parameters()).device
    task = source_task(source)
    probs: list[Tensor] = []
    labels: list[Tensor] = []
    loss_sum = 0.0
    for x, y in source.batches(split, shuffle=False):
        x, y = devices.to_device(x, y, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            logits = model(x).float()  # (B, C)
        loss_sum += summed_loss(logits, y, task)
        probs.append(to_probabilities(logits, task).cpu())
        labels.append(y.cpu())
    # A rank's shard may be empty (fewer images than ranks): (0, C) and (0,) then.
    p = torch.cat(probs).double().numpy() if probs else np.zeros((0, len(source.class_names)))
    y_all = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
    idx = source.eval_positions(split)
    if idx is not None and distributed.active():
        n = len(source.records(split)[2])
        p = distributed.gather_by_index(p, idx, n)  # (N, C)
        y_all = distributed.gather_by_index(y_all, idx, n)  # (N,)
        loss_sum = distributed.all_reduce_sum([loss_sum])[0]
    if not len(y_all):
        raise XrayError(f"the {split} split is empty: nothing to evaluate")
    return p, y_all, loss_sum / len(y_all)


def evaluate(
    model: nn.Module, source: Source, split: Split, *, amp_dtype: torch.dtype | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """P(positive) (N,), labels (N,) and mean cross-entropy of one split, in records() order."""
    p, y, loss = predict(model, source, split, amp_dtype=amp_dtype)
    return p[:, source.positive_index], y, loss


def conclude(
    model: nn.Module,
    source: Source,
    config: TrainConfig,
    *,
    best_state: dict[str, Tensor],
    history: list[dict[str, float]],
    best_epoch: int,
    stopped_early: bool,
    seconds_per_epoch: float,
    selection: dict[str, Any] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> FitResult:
    """Score the restored best model: threshold chosen on val, then val and test metrics once.

    `amp_dtype` is the autocast the run trained and validated in (None: float32), so the
    restored model is scored in the precision the run recorded.
    `selection` records which monitor picked the best epoch (see `loop.selection_monitor`).
    A validation split of one class cannot run a threshold policy: 0.5 is used and
    metrics.json says so (`threshold.ran` False, with a note), never a silent 0.5.
    """
    from featurestore.compare import (
        calibration_report,
        evaluate_split,
        fit_calibration,
        operating_point,
        parse_threshold_policy,
    )
    from featurestore.train.objectives import source_task

    selection = selection or {"requested": config.monitor, "used": config.monitor, "note": None}
    if source_task(source) == "multilabel":
        return conclude_multilabel(
            model, source, config, best_state=best_state, history=history,
            best_epoch=best_epoch, stopped_early=stopped_early,
            seconds_per_epoch=seconds_per_epoch, selection=selection, amp_dtype=amp_dtype,
        )  # fmt: skip
    if len(source.class_names) > 2:
        return conclude_multiclass(
            model, source, best_state=best_state, history=history, best_epoch=best_epoch,
            stopped_early=stopped_early, seconds_per_epoch=seconds_per_epoch,
            selection=selection, amp_dtype=amp_dtype,
        )  # fmt: skip
    pos = source.positive_index
    common = {"class_names": source.class_names, "positive_index": pos}
    p_val, y_val, loss_val = evaluate(model, source, "val", amp_dtype=amp_dtype)
    # The threshold sees validation only; test is evaluated after it is fixed, exactly once.
    point = operating_point(y_val, p_val, policy=config.threshold_policy, positive_index=pos)
    threshold = point["value"]
    n_pos = int((y_val == pos).sum())
    ran = parse_threshold_policy(config.threshold_policy)[0] == "fixed" or 0 < n_pos < len(y_val)
    note = None
    if not ran:
        only = source.class_names[int(y_val[0])]
        note = (
            f"the validation split holds {only} images only: the {config.threshold_policy} "
            "threshold policy could not run, so 0.5 is used"
        )
    val = evaluate_split(y_val, p_val, threshold=threshold, loss=loss_val, **common)  # type: ignore[arg-type]
    p_test, y_test, loss_test = evaluate(model, source, "test", amp_dtype=amp_dtype)
    test = evaluate_split(y_test, p_test, threshold=threshold, loss=loss_test, **common)  # type: ignore[arg-type]
    predictions = {}
    for split, p, y in (("val", p_val, y_val), ("test", p_test, y_test)):
        keys, groups, labels = source.records(split)  # type: ignore[arg-type]
        if not np.array_equal(labels, y):
            raise RuntimeError(f"{split}: records() order differs from batches(shuffle=False)")
        pred = np.where(p >= threshold, pos, 1 - pos).astype(np.int64)
        predictions[split] = SplitPredictions(keys, groups, labels, p, pred)
    # Recalibration is fitted on val and stored beside the raw outputs; predictions.csv and the
    # metrics above stay those of the model itself.
    calibration = fit_calibration(y_val, p_val, positive_index=pos, split="val")
    calibrated = calibration_report(
        calibration, {"val": (y_val, p_val), "test": (y_test, p_test)}, positive_index=pos
    )
    return FitResult(
        best_state=best_state,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        seconds_per_epoch=seconds_per_epoch,
        threshold={
            "policy": point["policy"],
            "value": float(threshold),
            "ran": ran,
            "note": note,
            "chosen_on": point["chosen_on"],
            "reached": point["reached"],
        },
        val=val,
        test=test,
        predictions=predictions,
        selection=selection or {"requested": config.monitor, "used": config.monitor, "note": None},
        calibration=calibrated,
    )


def conclude_multiclass(
    model: nn.Module,
    source: Source,
    *,
    best_state: dict[str, Tensor],
    history: list[dict[str, float]],
    best_epoch: int,
    stopped_early: bool,
    seconds_per_epoch: float,
    selection: dict[str, Any] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> FitResult:
    """`conclude` for a multi-class task: argmax decisions (nothing is tuned on val), val and
    test scored once with `compare.multiclass_metrics`; predictions keep every class's probability.
    """
    from featurestore.compare import evaluate_multiclass_split

    splits: dict[str, dict[str, Any]] = {}
    predictions: dict[str, SplitPredictions] = {}
    for split in ("val", "test"):
        split = cast("Split", split)
        p, y, loss = predict(model, source, split, amp_dtype=amp_dtype)  # (N, C), (N,)
        splits[split] = evaluate_multiclass_split(y, p, class_names=source.class_names, loss=loss)
        keys, groups, labels = source.records(split)
        if not np.array_equal(labels, y):
            raise RuntimeError(f"{split}: records() order differs from batches(shuffle=False)")
        predictions[split] = SplitPredictions(keys, groups, labels, p, p.argmax(1).astype(np.int64))
    return FitResult(
        best_state=best_state,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        seconds_per_epoch=seconds_per_epoch,
        threshold={
            "policy": "argmax",
            "value": None,
            "note": MULTICLASS_RULE,
        },
        val=splits["val"],
        test=splits["test"],
        predictions=predictions,
        task="multiclass",
        selection=selection or {},
    )


def conclude_multilabel(
    model: nn.Module,
    source: Source,
    config: TrainConfig,
    *,
    best_state: dict[str, Tensor],
    history: list[dict[str, float]],
    best_epoch: int,
    stopped_early: bool,
    seconds_per_epoch: float,
    selection: dict[str, Any] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> FitResult:
    """`conclude` for a multi-label task: one threshold per label chosen on val (over its
    observed entries, `config.threshold_policy`), then val and test scored once at them."""
    from featurestore.compare import (
        choose_label_thresholds,
        evaluate_multilabel_split,
        label_threshold_fallbacks,
    )

    names = source.class_names
    scored = {
        s: predict(model, source, cast("Split", s), amp_dtype=amp_dtype) for s in ("val", "test")
    }
    p_val, y_val, _ = scored["val"]  # (N, L) each
    thresholds = choose_label_thresholds(y_val, p_val, names, policy=config.threshold_policy)
    # 0.5 where a label's validation entries hold one class: said per label (issue #28.4).
    fallback = label_threshold_fallbacks(y_val, names, policy=config.threshold_policy)
    t = np.array([thresholds[n] for n in names])  # (L,)
    splits: dict[str, dict[str, Any]] = {}
    predictions: dict[str, SplitPredictions] = {}
    for split, (p, y, loss) in scored.items():
        splits[split] = evaluate_multilabel_split(
            y, p, names=names, thresholds=thresholds, loss=loss
        )
        keys, groups, labels = source.records(cast("Split", split))
        if not np.array_equal(labels, y, equal_nan=True):
            raise RuntimeError(f"{split}: records() order differs from batches(shuffle=False)")
        predictions[split] = SplitPredictions(keys, groups, labels, p, (p >= t).astype(np.int64))
    return FitResult(
        best_state=best_state,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        seconds_per_epoch=seconds_per_epoch,
        threshold={
            "policy": config.threshold_policy,
            "value": None,
            "per_label": thresholds,
            "ran": {n: n not in fallback for n in names},
            "notes": list(fallback.values()),
        },
        val=splits["val"],
        test=splits["test"],
        predictions=predictions,
        task="multilabel",
        selection=selection or {},
    )
