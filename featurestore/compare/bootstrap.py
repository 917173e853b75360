"""Bootstrap intervals for compare: percentile, patient-clustered, paired; vectorised metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from featurestore.compare.metrics import PROB_EPS
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


@runtime_checkable
class WeightedMetric(Protocol):
    """A metric that also scores many resamples at once, given as multiplicity weights."""

    def __call__(self, y: np.ndarray, p: np.ndarray) -> float: ...

    def weighted(self, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(N,) labels, (N,) scores, (B, N) counts -> (B,) values, NaN where undefined."""
        ...


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
            q = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
            return w @ -(y * np.log(q) + (1 - y) * np.log(1 - q)) / total
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


def _replicates(
    metrics_and_scores: Sequence[tuple[Callable[[np.ndarray, np.ndarray], float], np.ndarray]],
    y: np.ndarray,
    groups: np.ndarray | Sequence[str] | None,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """(K, B) metric k on scores k for each of B resamples (the same resamples for every k,
    `weight_blocks`); NaN where undefined."""
    index = np.arange(y.size)
    out = np.empty((len(metrics_and_scores), n_boot))
    for sl, w in weight_blocks(y.size, groups, n_boot, seed):
        for k, (metric, p) in enumerate(metrics_and_scores):
            if isinstance(metric, WeightedMetric):
                out[k, sl] = metric.weighted(y, p, w)
            else:  # any other callable (e.g. an sklearn scorer): one call per resample
                takes = (np.repeat(index, c) for c in w.astype(np.int64))
                out[k, sl] = [_call(metric, y, p, t) for t in takes]
    return out


def _call(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    take: np.ndarray | None = None,
) -> float:
    """metric on the images `take` (all if None), y as int; NaN where it is undefined."""
    yt, pt = (y, p) if take is None else (y[take], p[take])
    if isinstance(metric, WeightedMetric):
        return metric(yt, pt)
    try:
        value = metric(yt.astype(np.int64), pt)
    except ValueError:
        if np.unique(yt).size > 1:
            raise  # a real error, not sklearn's one-class refusal
        return float("nan")
    return float("nan") if value is None else float(value)


def _point(
    metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, p: np.ndarray
) -> float:
    """The metric on the full sample; undefined there is a user-level problem."""
    value = _call(metric, y, p)
    if not np.isfinite(value):
        raise XrayError(
            "the metric is undefined on these labels (the test set holds one class only?); "
            "evaluate on a test set with both classes"
        )
    return float(value)


@dataclass(frozen=True)
class BootstrapResult:
    """A percentile bootstrap interval and how it was obtained."""

    estimate: float
    lo: float
    hi: float
    alpha: float
    n_boot: int
    n_skipped: int
    """Resamples where the metric was undefined (e.g. one class drawn), left out."""
    unit: str
    """"patients" (cluster bootstrap) or "images"."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of metric(y, p).

    With `groups` (patient ids) whole patients are resampled, the cluster bootstrap of
    Davison & Hinkley (1997, sec. 3.8) / Field & Welsh (2007, JRSS-B 69:369): images of one
    patient are correlated, and resampling images would understate the uncertainty.
    BootMetric metrics are scored on all resamples at once through multiplicity weights;
    other callables run once per resample.
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    yf, (pf,) = check_labels(y, p)
    estimate = _point(metric, yf, pf)
    values = _replicates([(metric, pf)], yf, groups, n_boot, seed)[0]
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        raise XrayError("the metric was undefined on every bootstrap resample; too few samples")
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    unit = "images" if groups is None else "patients"
    return BootstrapResult(
        estimate, float(lo), float(hi), alpha, n_boot, int(n_boot - valid.size), unit
    )


def bootstrap_replicates(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """(n_boot,) metric(y*, p*) over resamples of images or whole patients; NaN where undefined.

    The replicates behind `bootstrap_interval`, for statistics built from several samples
    (e.g. the difference between two independent test sets).
    """
    yf, (pf,) = check_labels(y, p)
    return _replicates([(metric, pf)], yf, groups, n_boot, seed)[0]


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): the percentile interval of `bootstrap_interval`."""
    r = bootstrap_interval(metric, y, p, groups=groups, n_boot=n_boot, alpha=alpha, seed=seed)
    return r.estimate, r.lo, r.hi


@dataclass(frozen=True)
class PairedResult:
    """metric(a) - metric(b) on the same images, with a bootstrap interval and p-value."""

    diff: float
    lo: float
    hi: float
    p_value: float
    estimate_a: float
    estimate_b: float
    n_skipped: int
    """Resamples where the metric was undefined for either model, left out."""
    unit: str
    """"patients" (cluster bootstrap) or "images"."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of metric(y, p_a) - metric(y, p_b): both scored on the same resamples.

    Two-sided p-value = 2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1), capped at 1: the
    smallest alpha whose percentile interval excludes 0, with the +1 correction of
    Davison & Hinkley (1997, eq. 4.11) so it is never exactly 0.
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    yf, (pa, pb) = check_labels(y, p_a, p_b)
    est_a, est_b = _point(metric, yf, pa), _point(metric, yf, pb)
    va, vb = _replicates([(metric, pa), (metric, pb)], yf, groups, n_boot, seed)
    d = va - vb
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise XrayError("the metric was undefined on every bootstrap resample; too few samples")
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    tail = min(np.sum(d <= 0), np.sum(d >= 0)) + 1
    p_value = min(1.0, 2 * float(tail) / (d.size + 1))
    unit = "images" if groups is None else "patients"
    return PairedResult(
        est_a - est_b, float(lo), float(hi), p_value, est_a, est_b, n_boot - d.size, unit
    )
