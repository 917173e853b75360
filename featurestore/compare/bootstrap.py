"""The bootstrap behind every interval: patient-clustered resampling weights, binary metrics
vectorised over them, the percentile interval and the paired p-value."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featurestore.compare.metrics import log_loss_per_image
from featurestore.errors import XrayError

BOOT_METRICS: tuple[str, ...] = (
    "loss",
    "accuracy",
    "f1_macro",
    "f1_positive",
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
    "brier",
)
_CHUNK_CELLS = 2_000_000  # resamples x images per vectorised block (~16 MB of float64)


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den with `empty` where den == 0 (NaN: undefined; 0: sklearn's zero_division=0)."""
    return np.divide(num, den, out=np.full(num.shape, empty), where=den > 0)


def _weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row of weights, ties counted 1/2 (equals sklearn's roc_auc_score)."""
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # first index of each distinct score
    pos = np.add.reduceat(ws * ys, starts, axis=1)  # (B, U) positive weight per distinct score
    neg = np.add.reduceat(ws * (1 - ys), starts, axis=1)  # (B, U)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    return _divide(num, pos.sum(axis=1) * neg.sum(axis=1), np.nan)


def _weighted_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision sum_k (R_k - R_{k-1}) P_k per row (equals average_precision_score)."""
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    tp = np.add.reduceat(ws * ys, starts, axis=1)  # (B, U), scores descending
    fp = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    cum_tp, cum_fp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    precision = _divide(cum_tp, cum_tp + cum_fp, 0.0)
    # Undefined without positives, and (like the ROC AUC) reported undefined without negatives.
    defined = cum_tp[:, -1] * (cum_fp[:, -1] > 0)
    return _divide((tp * precision).sum(axis=1), defined, np.nan)


@dataclass(frozen=True)
class BootMetric:
    """A named metric at a threshold, exact on one sample and vectorised over resamples."""

    name: str
    """One of BOOT_METRICS."""
    threshold: float = 0.5
    """Predict positive when p >= threshold (unused by loss, AUCs and Brier)."""

    def __post_init__(self) -> None:
        if self.name not in BOOT_METRICS:
            raise XrayError(
                f"unknown metric {self.name!r}; choose one of: {', '.join(BOOT_METRICS)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    def __call__(self, y: np.ndarray, p: np.ndarray) -> float:
        """The metric on one sample (NaN where undefined)."""
        y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
        return float(self.weighted(y, p, np.ones((1, y.size)))[0])

    def weighted(self, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(N,) labels, (N,) scores, (B, N) counts -> (B,) values, NaN where undefined."""
        if self.name == "roc_auc":
            return _weighted_auc(y, p, w)
        if self.name == "pr_auc":
            return _weighted_ap(y, p, w)
        total = w.sum(axis=1)
        if self.name == "loss":
            return w @ log_loss_per_image("binary", y, p) / total
        if self.name == "brier":
            return w @ (p - y) ** 2 / total
        pred = (p >= self.threshold).astype(np.float64)
        tp, fp = w @ (y * pred), w @ ((1 - y) * pred)  # (B,) weighted confusion counts
        fn, tn = w @ (y * (1 - pred)), w @ ((1 - y) * (1 - pred))
        if self.name == "accuracy":
            return (tp + tn) / total
        if self.name == "sensitivity":
            return _divide(tp, tp + fn, np.nan)
        if self.name == "specificity":
            return _divide(tn, tn + fp, np.nan)
        # A class's F1 is undefined (NaN) without images of that class, as in binary_metrics;
        # the macro F1 then is too (NaN propagates through the mean).
        f1_pos = np.where(tp + fn > 0, _divide(2 * tp, 2 * tp + fp + fn, np.nan), np.nan)
        if self.name == "f1_positive":
            return f1_pos
        f1_neg = np.where(tn + fp > 0, _divide(2 * tn, 2 * tn + fn + fp, np.nan), np.nan)
        return (f1_pos + f1_neg) / 2  # f1_macro


def check_labels(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate y in {0, 1} and scores of the same length; return float64 copies."""
    y_arr = np.asarray(y)
    if y_arr.ndim != 1 or y_arr.size == 0:
        raise ValueError(f"y must be a non-empty 1-D array, got shape {y_arr.shape}")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("y must hold 1 for the positive class and 0 otherwise")
    out = []
    for s in scores:
        arr = np.asarray(s, dtype=np.float64)
        if arr.shape != y_arr.shape:
            raise ValueError(f"scores must match y's shape {y_arr.shape}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise XrayError("predicted probabilities contain NaN/inf; re-run the training")
        out.append(arr)
    return y_arr.astype(np.float64), out


def _unit_index(n: int, groups: np.ndarray | Sequence[str] | None) -> tuple[np.ndarray, int]:
    """(N,) resampling unit of each image (itself, or its patient) and the number of units."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per image ({n}), got {g.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def weight_blocks(
    n: int, groups: np.ndarray | Sequence[str] | None, n_boot: int, seed: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of bootstrap resamples as (B, N) multiplicity weights, with their slice of 0..n_boot.

    Units (images, or whole patients when `groups` is given) are drawn with replacement, in
    blocks that bound memory; the same `seed`, `n` and groups give the same resamples, so
    every metric and every run scored on them is paired.
    """
    rng = np.random.default_rng(seed)
    unit, n_units = _unit_index(n, groups)
    rows = max(1, _CHUNK_CELLS // max(n, n_units))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units))  # (b, G) unit draws
        offsets = (np.arange(b) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_units)
        yield slice(start, start + b), counts.reshape(b, n_units)[:, unit].astype(np.float64)


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float] | None:
    """(lo, hi): the percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of a
    statistic from its replicates (B,), the alpha/2 and 1 - alpha/2 quantiles of the finite
    ones (NaN: a resample left it undefined, e.g. a class not drawn); None when none is finite.

    Every interval xray reports (a metric, a paired difference, an external-minus-internal
    difference) is this function of its replicates.
    """
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of a paired bootstrap from the replicated differences d* (B,) of two
    models scored on the same resamples: 2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1),
    capped at 1, over the finite d* (Davison & Hinkley 1997, eq. 4.11): the smallest alpha
    whose percentile interval excludes 0, +1 so it is never exactly 0. NaN when none is finite.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(np.sum(d <= 0), np.sum(d >= 0)) + 1
    return min(1.0, 2 * float(tail) / (d.size + 1))
