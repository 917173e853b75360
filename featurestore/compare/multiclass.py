"""Multi-class metrics of one split (argmax decisions), computed by scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from featurestore.compare.metrics import log_loss_per_image
from featurestore.errors import XrayError

MULTICLASS_DECISION = "argmax"
"""metrics.json key of a multi-class split: decisions are the most probable class (no threshold
is chosen, so nothing on validation can leak into the decision rule)."""


def check_multiclass_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (N,) and probabilities (N, C); return them as int64 and float64."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"need y_true (N,) and probs (N, C), got {y.shape}, {p.shape}")
    if y.size == 0:
        raise XrayError("no samples to evaluate: the split is empty; check the dataset's splits")
    if not np.all(np.isfinite(p)):
        raise XrayError(
            f"{int(np.sum(~np.isfinite(p)))} predicted probabilities are NaN/inf: training "
            "diverged; lower the learning rate (--lr) and retrain"
        )
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true must hold class indices in 0..{p.shape[1] - 1}")
    return y, p


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in y (sklearn's balanced_accuracy_score)."""
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when a class is absent from a split.
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def one_vs_rest_auc(y: np.ndarray, probs: np.ndarray, k: int) -> float | None:
    """ROC-AUC of class k against the rest; None when the split lacks class k or holds only it."""
    y_k = y == k
    if not 0 < int(y_k.sum()) < y.size:
        return None
    return float(roc_auc_score(y_k, probs[:, k]))


def multiclass_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    loss: float | None = None,
) -> dict[str, Any]:
    """All metrics of one multi-class split, deciding by argmax; JSON-ready.

    y_true (N,) class indices, probs (N, C) softmax outputs. Keys: loss (mean cross-entropy),
    accuracy, balanced_accuracy (mean per-class recall), f1_macro, f1_weighted,
    precision_<class>, recall_<class>, f1_<class> (sklearn, zero_division=0),
    auc_<class> (one-vs-rest), roc_auc_macro
    (unweighted mean of the one-vs-rest AUCs, as sklearn's `multi_class="ovr", average="macro"`;
    None when any class's AUC is undefined), confusion_matrix (C x C, rows true, columns
    predicted), n and n_<class>. Undefined values (a class absent from the split) are None.
    """
    names = tuple(class_names)
    y, p = check_multiclass_inputs(y_true, probs)
    if p.shape[1] != len(names):
        raise ValueError(f"probs has {p.shape[1]} columns for {len(names)} classes")
    labels = list(range(len(names)))
    pred = p.argmax(1)  # (N,)
    if loss is None:
        loss = float(np.mean(log_loss_per_image("multiclass", y, p)))  # sklearn's log_loss
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    present = support > 0  # classes in y: recall is defined
    predicted = np.bincount(pred, minlength=len(names)) > 0
    out: dict[str, Any] = {
        "loss": float(loss),
        "accuracy": float(accuracy_score(y, pred)),
        # Mean recall over the classes present (sklearn's definition); undefined with none.
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
    }
    aucs = [one_vs_rest_auc(y, p, k) for k in labels]
    for k, name in enumerate(names):
        # Recall of a class absent from the split, precision of one never predicted: 0/0,
        # undefined (None), not 0.
        out[f"precision_{name}"] = float(precision[k]) if predicted[k] else None
        out[f"recall_{name}"] = float(recall[k]) if present[k] else None
        out[f"f1_{name}"] = float(f1[k])
        out[f"auc_{name}"] = aucs[k]
    defined = [a for a in aucs if a is not None]
    out["roc_auc_macro"] = float(np.mean(defined)) if len(defined) == len(aucs) else None
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels).tolist()
    out["n"] = int(y.size)
    for k, name in enumerate(names):
        out[f"n_{name}"] = int(support[k])
    return out


def evaluate_multiclass_split(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    loss: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of one split in the metrics.json layout: `{"argmax": {...}}`."""
    return {
        MULTICLASS_DECISION: multiclass_metrics(y_true, probs, class_names=class_names, loss=loss)
    }
