"""Scoring a trained model: per-split predictions, the threshold chosen on val, test once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from featurestore import devices, distributed
from featurestore.errors import XrayError
from featurestore.runs.result import FitResult, SplitPredictions
from featurestore.tasks import MULTICLASS_RULE, Task

if TYPE_CHECKING:
    from featurestore.data import Split
    from featurestore.train.loop import TrainConfig
    from featurestore.train.sources import Source

# MULTICLASS_RULE, FitResult and SplitPredictions live below train; re-exported for its modules.
__all__ = [
    "MULTICLASS_RULE",
    "FitResult",
    "SplitPredictions",
    "conclude",
    "evaluate",
    "predict",
    "source_task_of",
]


@torch.inference_mode()
def predict(
    model: nn.Module, source: Source, split: Split, *, amp_dtype: torch.dtype | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities (N, C), labels (N,) and the mean unweighted loss, in nats.

    The loss is scikit-learn's `log_loss` of the probabilities returned (clipped at
    `tasks.LOG_LOSS_EPS`; for multi-label the mean over images with an observed finding of each
    image's mean BCE, `compare.log_loss_per_image`), so it is what sklearn recomputes from
    predictions.csv. Binary runs keep the cross-entropy of the logits (capped per image at
    `tasks.MAX_IMAGE_LOSS`), which their metrics.json has always recorded: it differs from the
    csv's only where P(negative) falls below float32's resolution near 1 (6e-8).

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
    if task == "binary":
        return p, y_all, loss_sum / len(y_all)
    from featurestore.compare import log_loss_per_image

    per_image = log_loss_per_image(task, y_all, p)  # (N,), NaN: no observed finding
    scored = ~np.isnan(per_image)
    return p, y_all, float(per_image[scored].mean()) if scored.any() else 0.0


def evaluate(
    model: nn.Module, source: Source, split: Split, *, amp_dtype: torch.dtype | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """P(positive) (N,), labels (N,) and mean cross-entropy of one split, in records() order."""
    p, y, loss = predict(model, source, split, amp_dtype=amp_dtype)
    return p[:, source.positive_index], y, loss


def source_task_of(source: Source) -> Task:
    """The source's Task: its class names (findings for multi-label) and positive class."""
    from featurestore.train.objectives import source_task

    multilabel = source_task(source) == "multilabel"
    return Task.from_classes(
        source.class_names, multilabel=multilabel, positive_index=source.positive_index
    )


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
    """Score the restored best model, any task: the operating point chosen on val, then val and
    test metrics once (`compare.choose_operating_point`, `compare.split_metrics`).

    `amp_dtype` is the autocast the run trained and validated in (None: float32), so the
    restored model is scored in the precision the run recorded. `selection` records which
    monitor picked the best epoch (see `loop.selection_monitor`). A validation split of one
    class cannot run a threshold policy: 0.5 is used and metrics.json says so (`threshold.ran`
    False, with a note; per finding for multi-label), never a silent 0.5. Decisions follow the
    task's rule (`Task.decide`): binary at the threshold, multi-class argmax, multi-label per
    finding. A recalibration fitted on val (`compare.run_calibration`) is reported beside the raw
    outputs.
    """
    from featurestore.compare import choose_operating_point, run_calibration, split_metrics

    selection = selection or {"requested": config.monitor, "used": config.monitor, "note": None}
    task = source_task_of(source)
    scored = {
        s: predict(model, source, cast("Split", s), amp_dtype=amp_dtype) for s in ("val", "test")
    }  # split -> (probabilities (N, C), labels (N,) or targets (N, L), mean loss)
    p_val, y_val, _ = scored["val"]
    # The thresholds see validation only; test is scored after they are fixed, exactly once.
    threshold, cut = choose_operating_point(task, y_val, p_val, policy=config.threshold_policy)
    splits: dict[str, dict[str, Any]] = {}
    predictions: dict[str, SplitPredictions] = {}
    for split, (p, y, loss) in scored.items():
        splits[split] = split_metrics(task, y, p, thresholds=cut, loss=loss)
        keys, groups, labels = source.records(cast("Split", split))
        if not np.array_equal(labels, y, equal_nan=task.multilabel):
            raise RuntimeError(f"{split}: records() order differs from batches(shuffle=False)")
        kept = task.scores(p)  # binary: P(positive) (N,), as predictions.csv has it
        decided = task.decide(p, cut)  # type: ignore[arg-type]
        predictions[split] = SplitPredictions(keys, groups, labels, kept, decided)
    # Recalibration is fitted on val and stored beside the raw outputs (every task: Platt,
    # temperature, Platt per finding); predictions.csv and the metrics stay the model's own.
    calibration = run_calibration(task, {s: (y, p) for s, (p, y, _) in scored.items()})
    return FitResult(
        best_state=best_state,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        seconds_per_epoch=seconds_per_epoch,
        threshold=threshold,
        val=splits["val"],
        test=splits["test"],
        predictions=predictions,
        selection=selection,
        calibration=calibration,
        task=task.kind,
    )
