"""Paired tests for compare (y: 1 = positive class, p = P(positive)): McNemar, DeLong, baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from featurestore.compare.bootstrap import check_labels
from featurestore.compare.metrics import binary_metrics
from featurestore.errors import XrayError


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
    yf, (pa, pb) = check_labels(y, p_a, p_b)
    aucs, v10, v01 = _delong_components(yf, [pa, pb])
    cov = _delong_cov(v10, v01)
    return _delong_result(aucs, cov)


def _delong_result(aucs: np.ndarray, cov: np.ndarray) -> DeLongResult:
    """The two-sided z test of AUC(a) - AUC(b) from the AUCs (2,) and their covariance (2, 2).

    When the difference has zero estimated variance, z is None and p is 1 if the AUCs are
    equal (identical predictors) and 0 otherwise (a degenerate, certain difference).
    """
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


def _cluster_index(groups: np.ndarray | Sequence[str] | None, n: int) -> np.ndarray:
    """(n,) cluster number of each image (each image its own cluster when groups is None)."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per image ({n}), got {g.shape}")
    return np.unique(g, return_inverse=True)[1]


def clustered_delong_test(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    groups: np.ndarray | Sequence[str] | None = None,
) -> DeLongResult:
    """Two-sided test of AUC(a) = AUC(b) when images come in clusters (patients).

    Obuchowski (1997), "Nonparametric analysis of clustered ROC curve data", Biometrics
    53:567, eqs. (3)-(5): DeLong's structural components V10 (per positive image) and V01 (per
    negative image) are summed per cluster, and the (co)variance of the AUCs is
        cov_kl = I10/((I10-1) M^2) sum_i A_ik A_il + I01/((I01-1) N^2) sum_i B_ik B_il
                 + I/((I-1) M N) sum_i (A_ik B_il + A_il B_ik),
    with A_ik = sum_{positives j of i} V10_kj - m_i AUC_k, B_ik likewise over the n_i
    negatives, M, N the positive and negative images, I the clusters and I10 (I01) those holding
    a positive (negative). With one image per cluster it is DeLong's test exactly.
    Raises XrayError when y holds one class only.
    """
    yf, (pa, pb) = check_labels(y, p_a, p_b)
    aucs, v10, v01 = _delong_components(yf, [pa, pb])  # (2,), (2, M), (2, N)
    cluster = _cluster_index(groups, yf.size)
    n_clusters = int(cluster.max()) + 1
    pos, neg = yf == 1, yf == 0
    m, n = int(pos.sum()), int(neg.sum())
    m_i = np.bincount(cluster[pos], minlength=n_clusters)  # (I,) positives per cluster
    n_i = np.bincount(cluster[neg], minlength=n_clusters)
    a = np.stack([np.bincount(cluster[pos], v, n_clusters) for v in v10]) - np.outer(aucs, m_i)
    b = np.stack([np.bincount(cluster[neg], v, n_clusters) for v in v01]) - np.outer(aucs, n_i)
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())

    def scaled(k: int) -> float:  # k / (k - 1), 0 where a single cluster leaves no spread
        return k / (k - 1) if k > 1 else 0.0

    cross = a @ b.T  # (2, 2): sum_i A_ik B_il
    cov = (
        scaled(i10) * (a @ a.T) / m**2
        + scaled(i01) * (b @ b.T) / n**2
        + scaled(n_clusters) * (cross + cross.T) / (m * n)
    )
    return _delong_result(aucs, cov)


def clustered_mcnemar(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    groups: np.ndarray | Sequence[str] | None = None,
) -> McNemarResult:
    """McNemar's test on paired correctness when images come in clusters (patients).

    Without clustering (every cluster one image) it is `mcnemar` (exact below 25 discordant
    pairs). Otherwise the statistic of Durkalski, Palesch, Lipsitz & Rust (2003), "Analysis of
    clustered matched-pair data", Stat Med 22:2417, eq. (3):
        X^2 = (sum_i (b_i - c_i))^2 / sum_i (b_i - c_i)^2  ~  chi-square(1),
    with b_i (c_i) the images of patient i that only A (only B) gets right; it reduces to the
    uncorrected McNemar statistic for singleton clusters and, unlike it, does not treat a
    patient's images as independent (cf. Obuchowski 1998, Stat Med 17:1495). Method
    "clustered-chi2"; b and c stay the image counts.
    """
    plain = mcnemar(correct_a, correct_b)
    cluster = _cluster_index(groups, np.asarray(correct_a).size)
    if groups is None or np.bincount(cluster).max() == 1 or plain.b + plain.c == 0:
        return plain
    a, bb = np.asarray(correct_a), np.asarray(correct_b)
    d = np.bincount(cluster, (a & ~bb).astype(float)) - np.bincount(
        cluster, (~a & bb).astype(float)
    )
    denom = float((d**2).sum())
    stat = float(d.sum()) ** 2 / denom
    return McNemarResult(plain.b, plain.c, stat, float(sps.chi2.sf(stat, df=1)), "clustered-chi2")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979, Scand J Statist 6:65) step-down adjusted p-values, same order as given.

    p_(j) adjusted = max_{k <= j} min(1, (m - k + 1) p_(k)) over the ascending p-values: it
    controls the family-wise error rate at alpha for any dependence between the tests.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def delong_ci(y: np.ndarray, p: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """(auc, lo, hi): Wald interval AUC -/+ z_{1-alpha/2} * DeLong SE, clipped to [0, 1]."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    yf, (pf,) = check_labels(y, p)
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
