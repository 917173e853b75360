"""Multi-label metrics: per-label AUC, average precision, sensitivity and specificity at a
per-label threshold chosen on validation, macro and micro AUC; masked entries left out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from featurestore.compare.metrics import choose_threshold, log_loss_per_image
from featurestore.config import parse_threshold_policy
from featurestore.errors import XrayError

MULTILABEL_DECISION = "at_label_thresholds"
"""metrics.json key of a multi-label split: each label decided at its own validation threshold."""


def check_multilabel_inputs(
    targets: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate targets (N, L) of 1/0/NaN and probabilities (N, L) in [0, 1]; float64 copies."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"need targets and probs of one (N, L) shape, got {y.shape}, {p.shape}")
    if y.shape[0] == 0:
        raise XrayError("no samples to evaluate: the split is empty; check the dataset's splits")
    if not np.all(np.isfinite(p)):
        raise XrayError(
            "predicted probabilities are NaN/inf: training diverged; lower --lr and retrain"
        )
    observed = ~np.isnan(y)
    if not np.isin(y[observed], (0.0, 1.0)).all():
        raise ValueError("targets must be 1, 0 or NaN (masked)")
    return y, p


def choose_label_thresholds(
    targets: np.ndarray, probs: np.ndarray, names: Sequence[str], *, policy: str = "youden"
) -> dict[str, float]:
    """One decision threshold per label, chosen on validation over its observed entries with
    `compare.choose_threshold` (Youden's J by default; 0.5 when the label has one class)."""
    y, p = check_multilabel_inputs(targets, probs)
    out = {}
    for k, name in enumerate(names):
        mask = ~np.isnan(y[:, k])
        if not mask.any():
            out[name] = 0.5
            continue
        out[name] = choose_threshold(y[mask, k].astype(np.int64), p[mask, k], policy=policy)
    return out


def label_threshold_fallbacks(
    targets: np.ndarray, names: Sequence[str], *, policy: str = "youden"
) -> dict[str, str]:
    """The labels whose threshold `choose_label_thresholds` could not choose by `policy`, each
    with the sentence metrics.json and the terminal show: validation targets (N, L) of 1/0/NaN
    holding one class (or none) for the label get 0.5. A `fixed` policy always runs."""
    if parse_threshold_policy(policy)[0] == "fixed":
        return {}
    y = np.asarray(targets, dtype=np.float64)
    out = {}
    for k, name in enumerate(names):
        observed = y[~np.isnan(y[:, k]), k]
        n_pos = int(np.sum(observed == 1))
        if not 0 < n_pos < observed.size:
            what = "no positive" if n_pos == 0 else "no negative"
            what = what if observed.size else "no observed label"
            out[name] = (
                f"{name}: validation has {what}; the {policy} policy could not run, so 0.5 is used"
            )
    return out


def label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """One label's metrics over its observed entries y (n,) in {0, 1}, p (n,); None where
    undefined (AUC and AP with one class, sensitivity without positives, specificity without
    negatives)."""
    pos, neg = y == 1, y == 0
    pred = p >= threshold
    both = bool(pos.any() and neg.any())
    return {
        "auc": float(roc_auc_score(pos, p)) if both else None,
        "average_precision": float(average_precision_score(pos, p)) if both else None,
        "sensitivity": float(pred[pos].mean()) if pos.any() else None,
        "specificity": float((~pred[neg]).mean()) if neg.any() else None,
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": int(pos.sum()),
    }


def _mean_loss(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean over images with an observed finding of each image's mean BCE over its observed
    findings (`log_loss_per_image`); None when no image has one."""
    per_image = log_loss_per_image("multilabel", targets, probs)
    scored = ~np.isnan(per_image)
    return float(per_image[scored].mean()) if scored.any() else None


def multilabel_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    *,
    names: Sequence[str],
    thresholds: dict[str, float],
    loss: float | None = None,
) -> dict[str, Any]:
    """Metrics of one multi-label split; masked (NaN) entries count nowhere. JSON-ready.

    `labels`: per label `label_metrics` at its threshold, plus `n_masked`. `macro_auc`: the mean
    of the per-label AUCs where defined (`n_labels_auc` says how many; None when none is),
    `macro_average_precision` likewise; `micro_auc`: one AUC over every observed (image, label)
    pair pooled (sklearn's average="micro" with masking); `loss`: the mean over images with an
    observed finding of each image's mean BCE over its observed findings (given by the trainer,
    or from `probs` by `log_loss_per_image`).
    """
    y, p = check_multilabel_inputs(targets, probs)
    per_label: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        mask = ~np.isnan(y[:, k])
        m = label_metrics(y[mask, k], p[mask, k], thresholds[name])
        m["n_masked"] = int((~mask).sum())
        per_label[name] = m
    aucs = [m["auc"] for m in per_label.values() if m["auc"] is not None]
    aps = [m["average_precision"] for m in per_label.values() if m["average_precision"] is not None]
    observed = ~np.isnan(y)
    pooled_y, pooled_p = y[observed], p[observed]
    micro = float(roc_auc_score(pooled_y, pooled_p)) if 0 < pooled_y.sum() < pooled_y.size else None
    return {
        "loss": _mean_loss(y, p) if loss is None else float(loss),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "n_labels_auc": len(aucs),
        "micro_auc": micro,
        "macro_average_precision": float(np.mean(aps)) if aps else None,
        "labels": per_label,
        "n": int(y.shape[0]),
    }


def evaluate_multilabel_split(
    targets: np.ndarray,
    probs: np.ndarray,
    *,
    names: Sequence[str],
    thresholds: dict[str, float],
    loss: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of one split in the metrics.json layout: `{"at_label_thresholds": {...}}`."""
    return {
        MULTILABEL_DECISION: multilabel_metrics(
            targets, probs, names=names, thresholds=thresholds, loss=loss
        )
    }
