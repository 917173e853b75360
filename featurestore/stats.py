"""Statistics for compare (y: 1 = positive class, p = P(positive)): bootstrap, McNemar, DeLong."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import stats as sps

from featurestore.errors import XrayError
from featurestore.metrics import PROB_EPS, binary_metrics

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
        f1_pos = _divide(2 * tp, 2 * tp + fp + fn, 0.0)
        if self.name == "f1_positive":
            return f1_pos
        return (f1_pos + _divide(2 * tn, 2 * tn + fn + fp, 0.0)) / 2  # f1_macro


def _check_labels(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
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


def _replicates(
    metrics_and_scores: Sequence[tuple[Callable[[np.ndarray, np.ndarray], float], np.ndarray]],
    y: np.ndarray,
    groups: np.ndarray | Sequence[str] | None,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """(K, B) metric k on scores k for each of B resamples (the same resamples for every k);
    NaN where undefined. Units (images or whole patients) are drawn with replacement; a
    resample is a (B, N) matrix of multiplicities, built in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    unit, n_units = _unit_index(y.size, groups)
    rows = max(1, _CHUNK_CELLS // max(y.size, n_units))
    index = np.arange(y.size)
    out = np.empty((len(metrics_and_scores), n_boot))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units))  # (b, G) unit draws
        offsets = (np.arange(b) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_units)
        w = counts.reshape(b, n_units)[:, unit].astype(np.float64)  # (b, N) multiplicities
        for k, (metric, p) in enumerate(metrics_and_scores):
            if isinstance(metric, WeightedMetric):
                out[k, start : start + b] = metric.weighted(y, p, w)
            else:  # any other callable (e.g. an sklearn scorer): one call per resample
                takes = (np.repeat(index, c) for c in w.astype(np.int64))
                out[k, start : start + b] = [_call(metric, y, p, t) for t in takes]
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
    yf, (pf,) = _check_labels(y, p)
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
    yf, (pa, pb) = _check_labels(y, p_a, p_b)
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


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired correctness: b = only A right, c = only B right."""

    b: int
    c: int
    statistic: float
    """Exact: b; chi-square: (|b - c| - 1)^2 / (b + c)."""
    p_value: float
    method: str
    """"exact" (two-sided binomial, b + c < 25) or "chi2-cc" (continuity corrected)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar (1947, Psychometrika 12:153) test that two classifiers have equal accuracy.

    Only discordant pairs count. Exact binomial test of b ~ Bin(b + c, 1/2) when b + c < 25,
    else chi-square with Edwards' continuity correction (Fagerland, Lydersen & Laake 2013,
    BMC Med Res Methodol 13:91, on when the asymptotic form is adequate). b + c = 0 gives p = 1.
    """
    a, bb = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != bb.shape or a.ndim != 1:
        raise ValueError(
            f"correct_a and correct_b must be 1-D of equal length: {a.shape}, {bb.shape}"
        )
    if a.dtype != np.bool_ or bb.dtype != np.bool_:
        raise ValueError("correct_a and correct_b must be boolean arrays (prediction == label)")
    b, c = int(np.sum(a & ~bb)), int(np.sum(~a & bb))
    if b + c == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact")
    if b + c < 25:
        p = sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        return McNemarResult(b, c, float(b), float(p), "exact")
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarResult(b, c, float(stat), float(sps.chi2.sf(stat, df=1)), "chi2-cc")


def _delong_components(y: np.ndarray, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """AUCs (K,) and the structural components V10 (K, m) and V01 (K, n), via midranks.

    Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under
    correlated ROC curves", IEEE Signal Processing Letters 21(11):1389, eqs. (10)-(12).
    """
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise XrayError("AUC needs both classes in the labels; the test set holds one class only")
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, z = s[pos], s[neg]
        tz = sps.rankdata(np.concatenate([x, z]))  # midranks in the pooled sample (m + n,)
        tx, ty = sps.rankdata(x), sps.rankdata(z)  # midranks within positives (m,), negatives (n,)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10s.append((tz[:m] - tx) / n)  # share of negatives each positive beats
        v01s.append(1.0 - (tz[m:] - ty) / m)  # share of positives that beat each negative
    return np.array(aucs), np.array(v10s), np.array(v01s)


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """(K, K) covariance of the AUC estimates: S10 / m + S01 / n (DeLong et al. 1988, eq. 4)."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(v10), len(v10)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(v01), len(v01)))
    return s10 / m + s01 / n


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated ROC AUCs on the same images."""

    auc_a: float
    auc_b: float
    diff: float
    z: float | None
    """None when the variance of the difference is 0 (e.g. identical predictors)."""
    p_value: float
    var_a: float
    var_b: float
    cov: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def delong_roc_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) of
    AUC(a) = AUC(b), computed with the fast midrank algorithm of Sun & Xu (2014).

    When the difference has zero estimated variance, z is None and p is 1 if the AUCs are
    equal (identical predictors) and 0 otherwise (a degenerate, certain difference).
    """
    yf, (pa, pb) = _check_labels(y, p_a, p_b)
    aucs, v10, v01 = _delong_components(yf, [pa, pb])
    cov = _delong_cov(v10, v01)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, p = None, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    return DeLongResult(
        float(aucs[0]),
        float(aucs[1]),
        diff,
        None if z is None else float(z),
        p,
        float(cov[0, 0]),
        float(cov[1, 1]),
        float(cov[0, 1]),
    )


def delong_ci(y: np.ndarray, p: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """(auc, lo, hi): Wald interval AUC -/+ z_{1-alpha/2} * DeLong SE, clipped to [0, 1]."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    yf, (pf,) = _check_labels(y, p)
    aucs, v10, v01 = _delong_components(yf, [pf])
    auc = float(aucs[0])
    half = float(sps.norm.ppf(1 - alpha / 2) * np.sqrt(_delong_cov(v10, v01)[0, 0]))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def majority_baseline(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    *,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    positive_index: int = 1,
) -> dict[str, Any]:
    """Metrics on test of always predicting train's majority class (binary_metrics keys).

    The rule scores every image with train's positive prevalence, so it predicts the
    majority class at 0.5 (a 50/50 tie predicts positive), its AUC is 0.5 (a constant ranks
    nothing; None if test holds one class) and its loss and Brier score are the prior's.
    Adds `majority_class` and `prior_positive`.
    """
    train = np.asarray(train_labels)
    if train.ndim != 1 or train.size == 0:
        raise XrayError("the training labels are empty: the majority-class baseline needs them")
    prior = float(np.mean(train == positive_index))
    test = np.asarray(test_labels)
    out = binary_metrics(
        test,
        np.full(test.shape, prior),
        threshold=0.5,
        class_names=class_names,
        positive_index=positive_index,
    )
    names = tuple(class_names)
    out["majority_class"] = names[positive_index] if prior >= 0.5 else names[1 - positive_index]
    out["prior_positive"] = prior
    return out
