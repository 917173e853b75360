"""Binary classification metrics at a threshold, and the policies that choose the threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from featurestore.config import parse_threshold_policy
from featurestore.errors import XrayError
from featurestore.tasks import LOG_LOSS_EPS

CHOOSING_SPLITS: tuple[str, ...] = ("val", "calibration")
"""Where an operating point or a recalibration may be chosen: validation, or a local
calibration subset taken out of an external dataset by patient. Never the split reported."""

PROB_EPS = 1e-7
"""Probabilities are clipped to [eps, 1 - eps] before a logit (Platt scaling), so a saturated
output maps to a finite logit (about +-16)."""


def log_loss_per_image(kind: str, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) negative log-likelihood of each image under its saved probabilities, in nats.

    binary: y (N,) 0/1 (1 = positive), probs (N,) P(positive); multiclass: y (N,) class
    indices, probs (N, C); multilabel: targets (N, L) 0/1 with NaN unobserved, probs (N, L),
    each image's mean binary cross-entropy over its observed findings (NaN when none is).
    Probabilities are clipped to [`LOG_LOSS_EPS`, 1 - `LOG_LOSS_EPS`] and not renormalised:
    the mean over images of a binary or multi-class task is sklearn's `log_loss(y, probs)`.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    if kind == "multiclass":
        idx = np.asarray(y, dtype=np.int64)
        return np.asarray(-np.log(p[np.arange(idx.size), idx]))
    t = np.asarray(y, dtype=np.float64)
    bce = -(t * np.log(p) + (1.0 - t) * np.log(1.0 - p))  # NaN where t is NaN
    if kind != "multilabel":
        return np.asarray(bce)
    observed = ~np.isnan(t)
    n_obs = observed.sum(1)
    total = np.where(observed, bce, 0.0).sum(1)
    return np.divide(total, n_obs, out=np.full(total.shape, np.nan), where=n_obs > 0)


def _check_inputs(
    y_true: np.ndarray, p_pos: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and ranges; return (labels as int64 (N,), probabilities as float64 (N,))."""
    y = np.asarray(y_true)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y_true and p_pos must be 1-D of equal length, got {y.shape}, {p.shape}")
    if y.size == 0:
        raise XrayError("no samples to evaluate: the split is empty; check the dataset's splits")
    if not np.all(np.isfinite(p)):
        bad = int(np.sum(~np.isfinite(p)))
        raise XrayError(
            f"{bad} predicted probabilities are NaN/inf: training diverged; "
            "lower the learning rate (--lr) and retrain"
        )
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"p_pos must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true must hold class indices in 0..{n_classes - 1}")
    return y.astype(np.int64), p


def expected_calibration_error(y_pos: np.ndarray, p_pos: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of P(positive): sum_b (n_b / N) * |mean(y_b) - mean(p_b)|.

    Bins are `n_bins` equal-width intervals [k/n_bins, (k+1)/n_bins) of p_pos (the last one
    closed at 1.0); empty bins contribute nothing. This is the reliability-diagram form on the
    positive-class probability (as in sklearn.calibration.calibration_curve, strategy="uniform"),
    weighted by bin size as in Naeini et al. (2015), "Obtaining well calibrated probabilities
    using Bayesian binning", AAAI; not the top-label confidence form of Guo et al. (2017).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(y_pos, dtype=np.float64)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_pos and p_pos must be non-empty 1-D of equal length: {y.shape}")
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="right": a probability on an edge (0.3) opens the upper bin; 1.0 lands in the last bin.
    bins = np.searchsorted(inner_edges, p, side="right")  # (N,) in 0..n_bins-1
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    # n_b/N * |sum_y/n_b - sum_p/n_b| = |sum_y - sum_p| / N, empty bins give 0 directly.
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def _ratio(num: int, den: int) -> float | None:
    """num / den as a float, None (undefined) when den is 0."""
    return float(num) / float(den) if den else None


def binary_metrics(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    *,
    threshold: float = 0.5,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    positive_index: int = 1,
    loss: float | None = None,
) -> dict[str, Any]:
    """All metrics of one split at one threshold (predict positive when p_pos >= threshold).

    JSON-ready: plain floats/ints/lists. A metric that is 0/0 on these labels is None, never
    0: sensitivity (recall of the positive class) without positives, specificity without
    negatives, precision of a class never predicted, recall and F1 of a class absent from
    y_true, the macro F1 when either class is absent, and both AUCs when y_true holds one
    class only.
    """
    names = tuple(class_names)
    if len(names) != 2:
        raise XrayError(
            f"binary metrics need exactly 2 classes, got {len(names)} ({', '.join(names)}); "
            "use a two-class dataset"
        )
    if positive_index not in (0, 1):
        raise ValueError(f"positive_index must be 0 or 1, got {positive_index}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    y, p = _check_inputs(y_true, p_pos, len(names))
    negative_index = 1 - positive_index
    labels = [0, 1]
    y_pos = (y == positive_index).astype(np.int64)  # (N,) 1 = positive class
    y_pred = np.where(p >= threshold, positive_index, negative_index)  # (N,) class indices

    # Undefined stays undefined (None, never a real-looking 0): a class's recall and F1 need
    # images of that class, its precision needs predictions of it, and the macro F1 averages
    # over both classes, so it needs both present.
    cm = confusion_matrix(y, y_pred, labels=labels)  # (2, 2): rows true, columns predicted
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)  # (2,) images / predictions per class
    f1 = [_ratio(2 * cm[k, k], support[k] + predicted[k]) if support[k] else None for k in labels]
    if loss is None:
        loss = float(np.mean(log_loss_per_image("binary", y_pos, p)))
    out: dict[str, Any] = {
        "loss": float(loss),
        "accuracy": float(accuracy_score(y, y_pred)),
        "f1_macro": None if None in f1 else (f1[0] + f1[1]) / 2,  # type: ignore[operator]
        "f1_positive": f1[positive_index],
    }
    for k, name in enumerate(names):
        out[f"precision_{name}"] = _ratio(cm[k, k], predicted[k])
        out[f"recall_{name}"] = _ratio(cm[k, k], support[k])
    out["sensitivity"] = out[f"recall_{names[positive_index]}"]
    out["specificity"] = out[f"recall_{names[negative_index]}"]
    both_classes = bool(support.all())
    out["roc_auc"] = float(roc_auc_score(y_pos, p)) if both_classes else None
    out["pr_auc"] = float(average_precision_score(y_pos, p)) if both_classes else None
    out["brier"] = float(brier_score_loss(y_pos, p, pos_label=1))
    out["ece"] = expected_calibration_error(y_pos, p)
    out["confusion_matrix"] = cm.tolist()
    out["threshold"] = float(threshold)
    out["n"] = int(y.size)
    out["n_positive"] = int(y_pos.sum())
    return out


def _closest_to_half(scores: np.ndarray, thresholds: np.ndarray) -> float:
    """The threshold with the best score; among ties (within 1e-12), the one nearest 0.5."""
    best = scores >= scores.max() - 1e-12
    candidates = thresholds[best]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


def check_choosing_split(split: str, what: str = "a threshold") -> None:
    """Refuse to choose anything on a split that is reported (test, or an external split).

    Raises:
        XrayError: unless `split` is one of CHOOSING_SPLITS.
    """
    if split not in CHOOSING_SPLITS:
        raise XrayError(
            f"{what} is chosen on validation (or a local calibration set), never on the "
            f"{split!r} split it would be judged on"
        )


def choose_threshold(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    *,
    policy: str = "youden",
    positive_index: int = 1,
    split: str = "val",
) -> float:
    """Pick a decision threshold (predict positive when p >= it) on validation.

    Policies: "youden" (max TPR - FPR; Youden 1950, Cancer 3:32), "f1" (max positive-class F1),
    "sensitivity:T" (the highest threshold whose sensitivity is >= T, so specificity is the
    best that target allows), "specificity:T" (the lowest threshold whose specificity is >= T,
    so sensitivity is the best allowed), "fixed:T" (T; "fixed" alone is 0.5). y_true holds class
    indices (0/1). Ties of youden and f1 go to the threshold closest to 0.5; a split with one
    class only gives 0.5 (fixed: its T). Candidates are the split's own scores, so a target
    reached here is reached exactly on this split.

    Raises:
        XrayError: for an unknown policy, or when `split` is not validation or calibration.
    """
    kind, target = parse_threshold_policy(policy)
    check_choosing_split(split)
    if positive_index not in (0, 1):
        raise ValueError(f"positive_index must be 0 or 1, got {positive_index}")
    labels, p = _check_inputs(y_true, p_pos, 2)
    y = (labels == positive_index).astype(np.int64)  # (N,) 1 = positive class
    if kind == "fixed":
        assert target is not None
        return float(target)
    if not 0 < int(y.sum()) < y.size:
        return 0.5
    if kind in ("youden", "sensitivity", "specificity"):
        # drop_intermediate=False keeps every distinct score, so tie-breaking sees all candidates.
        # thresholds descend; tpr and fpr rise with the index.
        fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
        # The first threshold is +inf (predict nothing positive); as a probability that is 1.0.
        thresholds = np.minimum(thresholds, 1.0)
        if kind == "youden":
            return _closest_to_half(tpr - fpr, thresholds)
        assert target is not None
        if kind == "sensitivity":
            # tpr reaches 1 at the last index, so some index qualifies for any target <= 1.
            return float(thresholds[np.flatnonzero(tpr >= target - 1e-12)[0]])
        # fpr is 0 at the first index, so some index qualifies for any target <= 1.
        return float(thresholds[np.flatnonzero(fpr <= 1.0 - target + 1e-12)[-1]])
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last (1, 0) point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return _closest_to_half(f1, thresholds)


def operating_point(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    *,
    policy: str = "youden",
    positive_index: int = 1,
    split: str = "val",
) -> dict[str, Any]:
    """The threshold a policy picks on `split` and what it reached there (metrics.json's
    `threshold`): {"policy", "value", "chosen_on", "reached": {"sensitivity", "specificity",
    "youden_j", "f1_positive"}}. A reached value is None where undefined (one class only).

    Raises:
        XrayError: as `choose_threshold`.
    """
    value = choose_threshold(
        y_true, p_pos, policy=policy, positive_index=positive_index, split=split
    )
    labels, p = _check_inputs(y_true, p_pos, 2)
    y = labels == positive_index  # (N,) bool
    pred = p >= value  # (N,) bool
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    sens = tp / n_pos if n_pos else None
    spec = (n_neg - fp) / n_neg if n_neg else None
    f1 = 2 * tp / (tp + n_pos + fp) if (tp + n_pos + fp) else None
    return {
        "policy": policy,
        "value": float(value),
        "chosen_on": split,
        "reached": {
            "sensitivity": sens,
            "specificity": spec,
            "youden_j": None if sens is None or spec is None else sens + spec - 1.0,
            "f1_positive": f1,
        },
    }


def evaluate_split(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    *,
    threshold: float,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    positive_index: int = 1,
    loss: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of one split at 0.5 and at the validation-chosen threshold (metrics.json layout)."""
    common: dict[str, Any] = {
        "class_names": class_names,
        "positive_index": positive_index,
        "loss": loss,
    }
    return {
        "at_0.5": binary_metrics(y_true, p_pos, threshold=0.5, **common),
        "at_threshold": binary_metrics(y_true, p_pos, threshold=threshold, **common),
    }
