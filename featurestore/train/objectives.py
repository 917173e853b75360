"""What the trainer optimises and reports per task: softmax cross-entropy for binary and
multi-class, masked per-label sigmoid BCE with positive weights for multi-label."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.tasks import MAX_IMAGE_LOSS

if TYPE_CHECKING:
    from featurestore.train.sources import Source


def source_task(source: Source) -> str:
    """`multilabel` when the source says so, else `binary` (2 classes) or `multiclass`."""
    task = getattr(source, "task", None)
    if task:
        return str(task)
    return "binary" if len(source.class_names) == 2 else "multiclass"


class MaskedBCEWithLogits(nn.Module):
    """Per-label sigmoid binary cross-entropy, ignoring masked (NaN) targets.

    logits (B, L), targets (B, L) with 1, 0 or NaN. The loss is the mean over observed
    (image, label) entries of BCE with `pos_weight` (L,) scaling the positive term, as in
    `torch.nn.BCEWithLogitsLoss`; a batch with no observed entry gives 0 (and no gradient).
    Masking uncertain labels is CheXpert's U-Ignore (Irvin et al., AAAI 2019).
    """

    def __init__(self, pos_weight: Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        observed = ~torch.isnan(targets)  # (B, L)
        y = torch.where(observed, targets, torch.zeros_like(targets))
        weight = self.pos_weight if isinstance(self.pos_weight, Tensor) else None
        per_entry = F.binary_cross_entropy_with_logits(
            logits, y, pos_weight=weight, reduction="none"
        )  # (B, L)
        per_entry = per_entry * observed
        return per_entry.sum() / observed.sum().clamp(min=1)


def label_pos_weights(targets: np.ndarray, names: tuple[str, ...], policy: str) -> Tensor:
    """Positive weights (L,) n_negative / n_positive per label over observed train entries
    ("balanced", the usual BCE re-weighting for imbalanced findings), or ones ("none").

    A label without a positive or without a negative in train (a rare finding absent from a
    subset of NIH, say) gets weight 1: there is nothing to balance, the head learns it as
    absent, and its metrics are undefined wherever the test split lacks a class. Raises
    XrayError when no label has both.
    """
    y = np.asarray(targets, dtype=np.float64)  # (N, L)
    pos = np.sum(y == 1.0, axis=0)
    neg = np.sum(y == 0.0, axis=0)
    both = (pos > 0) & (neg > 0)
    if not both.any():
        raise XrayError(
            f"no finding of {', '.join(names)} has both positive and negative train images: "
            "nothing to learn; check the labels"
        )
    if policy == "none":
        return torch.ones(y.shape[1])
    ratio = np.divide(neg, pos, out=np.ones(len(pos)), where=both)
    return torch.tensor(ratio, dtype=torch.float32)


def summed_loss(logits: Tensor, y: Tensor, task: str) -> float:
    """The unweighted loss summed over the batch's images (history and evaluation), in nats:
    cross-entropy, or for multi-label each image's mean BCE over its observed labels (an image
    with none observed adds 0; divide by `scored_images`, not the batch size).

    logits (B, C) or (B, L); y (B,) class indices or (B, L) targets with NaN unobserved. Each
    image's cross-entropy (each finding's BCE) is capped at `tasks.MAX_IMAGE_LOSS`, the loss of
    a probability clipped at `tasks.LOG_LOSS_EPS`, so the figure is scikit-learn's `log_loss` of
    the saved probabilities even where a softmax saturates.
    """
    if task != "multilabel":
        per_image = F.cross_entropy(logits, y, reduction="none")  # (B,)
        # The sum less what the cap removes: exactly the plain sum when nothing saturates.
        excess = float((per_image - MAX_IMAGE_LOSS).clamp(min=0).sum())
        return float(F.cross_entropy(logits, y, reduction="sum")) - excess
    observed = ~torch.isnan(y)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, torch.where(observed, y, torch.zeros_like(y)), reduction="none"
    ).clamp(max=MAX_IMAGE_LOSS)
    per_image = (per_entry * observed).sum(1) / observed.sum(1).clamp(min=1)  # (B,)
    return float(per_image.sum())


def scored_images(y: np.ndarray | Tensor, task: str) -> int:
    """How many images a mean loss divides by: every image, or for multi-label (N, L) targets
    the images with at least one observed finding (at least 1, so an empty mean is 0)."""
    if task != "multilabel":
        return max(len(y), 1)
    t = torch.as_tensor(y)
    return max(int((~torch.isnan(t)).any(1).sum()), 1)


def to_probabilities(logits: Tensor, task: str) -> Tensor:
    """(B, C) softmax class probabilities, or (B, L) per-label sigmoid probabilities."""
    return logits.sigmoid() if task == "multilabel" else logits.softmax(1)


def multilabel_summary(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """History figures of a multi-label epoch at 0.5 over observed entries: accuracy, macro F1
    and macro AUC (mean over the labels where it is defined; NaN when none is)."""
    from sklearn.metrics import f1_score, roc_auc_score

    observed = ~np.isnan(targets)
    pred = probs >= 0.5
    acc = float(np.mean(pred[observed] == (targets[observed] == 1.0))) if observed.any() else 0.0
    f1s, aucs = [], []
    for k in range(targets.shape[1]):
        mask = observed[:, k]
        y = targets[mask, k] == 1.0
        f1s.append(f1_score(y, pred[mask, k], zero_division=0) if mask.any() else 0.0)
        if 0 < y.sum() < y.size:
            aucs.append(roc_auc_score(y, probs[mask, k]))
    return {
        "acc": acc,
        "f1": float(np.mean(f1s)),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
    }
