"""featurestore.compare bootstrap and stats vs hand computations and slow references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, roc_auc_score

from featurestore.compare import (
    BOOT_METRICS,
    BootMetric,
    McNemarResult,
    binary_metrics,
    bootstrap,
    check_labels,
    clustered_delong_test,
    clustered_mcnemar,
    delong_ci,
    delong_roc_test,
    holm,
    majority_baseline,
    mcnemar,
    paired_p_value,
    percentile_interval,
    replicate_interval,
    replicates,
    weight_blocks,
)
from featurestore.errors import XrayError


def make_scores(n: int, *, seed: int = 0, signal: float = 0.3, decimals: int = 1):
    """Labels (~60% positive) and informative probabilities, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    p = np.clip(signal * y + rng.random(n) * (1 - signal), 0, 1).round(decimals)
    return y, p


# ---------------------------------------------------------------- vectorised bootstrap metrics


@pytest.mark.parametrize("name", BOOT_METRICS)
@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_boot_metric_equals_binary_metrics(name: str, threshold: float) -> None:
    y, p = make_scores(80)
    expected = binary_metrics(y, p, threshold=threshold)[name]
    assert BootMetric(name, threshold)(y, p) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", BOOT_METRICS)
def test_weighted_rows_equal_explicit_resamples(name: str) -> None:
    y, p = make_scores(30, seed=1)
    rng = np.random.default_rng(2)
    w = rng.multinomial(30, np.full(30, 1 / 30), size=5).astype(float)  # (5, 30) counts
    w[4] = 0.0
    w[4, y == 1] = 2.0  # a resample holding positives only
    got = BootMetric(name).weighted(y.astype(float), p, w)
    for b in range(len(w)):
        take = np.repeat(np.arange(30), w[b].astype(int))
        value = binary_metrics(y[take], p[take])[name]
        if value is None:
            assert np.isnan(got[b]), (name, b)
        elif name == "specificity" and b == 4:
            assert np.isnan(got[b])  # undefined without negatives: skipped, not scored 0
        else:
            assert got[b] == pytest.approx(value, abs=1e-12), (name, b)


def test_unknown_boot_metric_lists_names() -> None:
    with pytest.raises(
        XrayError, match=r"^unknown metric 'kappa'; choose one of: loss, accuracy, "
    ):
        BootMetric("kappa")
    for threshold in (0.0, 1.0):  # both ends are thresholds one may ask for
        assert BootMetric("accuracy", threshold).threshold == threshold
    for threshold in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"^threshold must lie in \[0, 1\], got"):
            BootMetric("accuracy", threshold)


def test_boot_metrics_on_tiny_and_one_class_samples() -> None:
    """One positive gives sensitivity 1 (defined); without positives sensitivity, the positive
    class's F1 and so the macro F1 are undefined (NaN), never 0; likewise without negatives."""
    y1, p1 = np.array([1, 0]), np.array([0.9, 0.1])
    assert BootMetric("sensitivity")(y1, p1) == 1.0
    assert BootMetric("specificity")(y1, p1) == 1.0
    y0, p0 = np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])
    assert np.isnan(BootMetric("sensitivity")(y0, p0))
    assert np.isnan(BootMetric("f1_positive")(y0, p0))
    assert np.isnan(BootMetric("f1_macro")(y0, p0))
    assert np.isnan(BootMetric("specificity")(1 - y0, p0))
    # All positive and all predicted positive: F1 of the negatives, so the macro F1, undefined.
    assert BootMetric("f1_positive")(1 - y0, p0 + 0.5) == 1.0
    assert np.isnan(BootMetric("f1_macro")(1 - y0, p0 + 0.5))
    for name in ("loss", "brier", "accuracy", "f1_macro"):  # boolean labels read as 0 / 1
        assert BootMetric(name)(y1.astype(bool), p1) == BootMetric(name)(y1, p1)


# ---------------------------------------------------------------- bootstrap intervals


def resampled(
    name: str,
    y: np.ndarray,
    p: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """(n_boot,) BootMetric replicates on the engine's resamples (engine.replicates)."""
    metric = BootMetric(name)
    score = lambda w: {(name, None): metric.weighted(y.astype(float), p, w)}  # noqa: E731
    return replicates(score, y.size, groups=groups, n_boot=n_boot, seed=seed)[(name, None)]


def explicit_resamples(n: int, groups: np.ndarray | None, n_boot: int, seed: int):
    """The engine's resamples as lists of image indices (each image repeated by its count)."""
    for _, w in weight_blocks(n, groups, n_boot, seed):
        for row in w.astype(np.int64):
            yield np.repeat(np.arange(n), row)


def test_vectorised_replicates_equal_sklearn_on_the_same_resamples() -> None:
    y, p = make_scores(120, seed=3)
    groups = np.repeat(np.arange(40), 3)
    for g in (None, groups):
        takes = list(explicit_resamples(y.size, g, 200, 7))
        slow_auc = [roc_auc_score(y[t], p[t]) for t in takes]
        slow_acc = [accuracy_score(y[t], p[t] >= 0.5) for t in takes]
        np.testing.assert_allclose(resampled("roc_auc", y, p, groups=g, n_boot=200, seed=7),
                                   slow_auc, atol=1e-12)  # fmt: skip
        np.testing.assert_allclose(resampled("accuracy", y, p, groups=g, n_boot=200, seed=7),
                                   slow_acc, atol=1e-12)  # fmt: skip


def test_blocked_resampling_gives_the_same_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p = make_scores(100, seed=12, decimals=3)
    groups = np.repeat(np.arange(25), 4)
    whole = [resampled("roc_auc", y, p, groups=g, n_boot=500) for g in (None, groups)]
    monkeypatch.setattr(bootstrap, "_CHUNK_CELLS", 700)  # blocks of 7 resamples, the last of 3
    blocked = [resampled("roc_auc", y, p, groups=g, n_boot=500) for g in (None, groups)]
    for b, w in zip(blocked, whole, strict=True):
        np.testing.assert_array_equal(b, w)


def test_interval_contains_estimate_repeats_with_seed_and_varies_without() -> None:
    y, p = make_scores(600, seed=4, decimals=3)
    est = BootMetric("roc_auc")(y, p)
    assert est == pytest.approx(roc_auc_score(y, p))
    lo, hi = percentile_interval(resampled("roc_auc", y, p), 0.05)
    assert lo < est < hi
    assert percentile_interval(resampled("roc_auc", y, p), 0.05) == (lo, hi)
    assert percentile_interval(resampled("roc_auc", y, p, seed=1), 0.05) != (lo, hi)
    narrow_lo, narrow_hi = percentile_interval(resampled("roc_auc", y, p), 0.5)
    assert lo < narrow_lo < narrow_hi < hi


def test_interval_narrows_with_more_data() -> None:
    widths = []
    for n in (100, 1600):
        y, p = make_scores(n, seed=5)
        lo, hi = percentile_interval(resampled("accuracy", y, p, n_boot=500), 0.05)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): a factor 4 expected


def test_cluster_bootstrap_is_wider_on_clustered_data() -> None:
    # 40 patients x 10 images; each patient's images share label and prediction, so the
    # effective sample is 40, not 400.
    rng = np.random.default_rng(6)
    patient_y = (rng.random(40) < 0.5).astype(int)
    patient_p = np.clip(0.25 * patient_y + 0.75 * rng.random(40), 0, 1)
    y, p = np.repeat(patient_y, 10), np.repeat(patient_p, 10)
    groups = np.repeat([f"person{i}" for i in range(40)], 10)
    for name in ("accuracy", "roc_auc"):
        lo_i, hi_i = percentile_interval(resampled(name, y, p, n_boot=1000), 0.05)
        lo_p, hi_p = percentile_interval(resampled(name, y, p, groups=groups, n_boot=1000), 0.05)
        assert hi_p - lo_p > 2 * (hi_i - lo_i)  # ~sqrt(10)


def small_clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """14 images of 7 patients, 2 of them negative: some resamples draw no negative (AUC NaN)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 1, 0, 1, 1, 1], 2)
    p = np.clip(0.3 * y + 0.7 * rng.random(y.size), 0, 1)
    return y, p, np.repeat([f"p{i}" for i in range(7)], 2)


@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("clustered", [False, True])
def test_interval_ends_are_quantiles_of_defined_resamples(alpha: float, clustered: bool) -> None:
    """lo, hi = np.quantile of the defined resampled values at alpha/2 and 1 - alpha/2; the
    undefined ones are counted (replicate_interval), not used; patients are drawn whole."""
    y, p, groups = small_clustered()
    g = groups if clustered else None
    values = resampled("roc_auc", y, p, groups=g, n_boot=400, seed=5)
    defined = values[np.isfinite(values)]
    assert 400 - defined.size > 0  # the test covers the skipping
    ends = percentile_interval(values, alpha)
    assert ends == tuple(np.quantile(defined, [alpha / 2, 1 - alpha / 2]))
    iv = replicate_interval(0.7, values, alpha=alpha, fewest_units=None, min_units=1)
    assert (iv.lo, iv.hi, iv.n_boot, iv.n_undefined) == (*ends, 400, 400 - defined.size)
    assert iv.reliable == (400 - defined.size <= 4)  # unreliable past 1% undefined
    w = np.concatenate([w for _, w in weight_blocks(y.size, g, 400, 5)])  # (B, N) multiplicities
    if clustered:
        per_patient = w.reshape(400, 7, 2)
        assert (per_patient[:, :, 0] == per_patient[:, :, 1]).all()  # a patient moves whole
        assert (per_patient[:, :, 0].sum(axis=1) == 7).all()  # 7 patients drawn per resample
    else:
        assert (w.sum(axis=1) == y.size).all()
        assert (w.reshape(400, 7, 2)[:, :, 0] != w.reshape(400, 7, 2)[:, :, 1]).any()


def test_undefined_resamples_are_counted_and_an_undefined_estimate_has_no_interval() -> None:
    y = np.array([0, 1, 1, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.7, 0.4, 0.9, 0.8])
    iv = replicate_interval(BootMetric("roc_auc")(y, p), resampled("roc_auc", y, p), alpha=0.05,
                            fewest_units=1, min_units=5)  # fmt: skip
    # P(the single negative is never drawn) = (5/6)^6 = 0.335.
    assert 0.29 * 2000 < iv.n_undefined < 0.38 * 2000
    assert iv.lo <= iv.estimate <= iv.hi and not iv.reliable
    assert np.isfinite(resampled("accuracy", y, p)).all()
    json.dumps(iv.as_dict(), allow_nan=False)
    assert percentile_interval(np.full(10, np.nan), 0.05) is None
    assert np.isnan(paired_p_value(np.full(10, np.nan)))
    undefined = replicate_interval(float("nan"), resampled("accuracy", y, p, n_boot=50),
                                   alpha=0.05, fewest_units=None, min_units=1)  # fmt: skip
    assert not undefined.defined and undefined.n_boot == 50 and not undefined.reliable


def test_resampling_unhappy_paths() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        next(weight_blocks(20, np.arange(3), 10, 0))


@pytest.mark.parametrize(
    ("y", "p"),
    [
        ([1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.1]),  # the lowest score is a positive
        ([1, 1, 0], [0.9, 0.8, 0.1]),  # the only negative scores lowest
        ([1, 0, 1, 1], [0.9, 0.5, 0.6, 0.2]),  # a single negative
    ],
)
def test_pr_auc_at_the_edges_equals_sklearn(y: list[int], p: list[float]) -> None:
    from sklearn.metrics import average_precision_score

    assert BootMetric("pr_auc")(np.array(y), np.array(p)) == pytest.approx(
        average_precision_score(y, p)
    )


def test_check_labels_shapes_types_and_messages() -> None:
    y, (s,) = check_labels(np.array([1]), np.array([1]))  # one image is enough
    assert y.dtype == s.dtype == np.float64
    for bad in (np.ones((2, 2), int), np.array([], int)):
        with pytest.raises(ValueError, match=r"^y must be a non-empty 1-D array, got shape"):
            check_labels(bad)
    with pytest.raises(ValueError, match=r"^y must hold 1 for the positive class and 0 otherwise$"):
        check_labels(np.array([0, 2]))
    with pytest.raises(ValueError, match=r"^scores must match y's shape \(2,\), got \(3,\)$"):
        check_labels(np.array([0, 1]), np.zeros(3))
    with pytest.raises(
        XrayError, match=r"^predicted probabilities contain NaN/inf; re-run the training$"
    ):
        check_labels(np.array([0, 1]), np.full(2, np.nan))


# ---------------------------------------------------------------- paired bootstrap


def paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, name: str = "roc_auc", **kw: object):
    """(difference, (lo, hi), p) of the paired bootstrap: both models on the same resamples."""
    d = resampled(name, y, a, **kw) - resampled(name, y, b, **kw)  # type: ignore[arg-type]
    return BootMetric(name)(y, a) - BootMetric(name)(y, b), percentile_interval(d, 0.05), d


def test_paired_p_value_is_the_smallest_alpha_whose_interval_excludes_zero() -> None:
    """p = 2 min(#(d <= 0) + 1, #(d >= 0) + 1) / (B + 1) over the defined differences."""
    y, a, groups = small_clustered(seed=1)
    b = np.clip(a + np.random.default_rng(2).normal(0, 0.3, a.size), 0, 1)
    _, _, d = paired(y, a, b, groups=groups, n_boot=400, seed=4)
    defined = d[np.isfinite(d)]
    assert 0 < defined.size < 400  # undefined differences are left out
    tail = min(np.sum(defined <= 0), np.sum(defined >= 0)) + 1
    p = paired_p_value(d)
    assert p == min(1.0, 2 * tail / (defined.size + 1)) and 0 < p < 1


def test_paired_p_value_matches_interval() -> None:
    y, a = make_scores(200, seed=10, signal=0.3)
    _, b = make_scores(200, seed=11, signal=0.25)
    _, (lo, hi), d = paired(y, a, b, name="accuracy", n_boot=1000, seed=3)
    p = paired_p_value(d)
    assert (p < 0.05) == (not lo <= 0 <= hi) or abs(p - 0.05) < 0.01
    assert 0 < p <= 1


def test_paired_bootstrap_identical_predictors() -> None:
    y, p = make_scores(100)
    diff, ends, d = paired(y, p, p, n_boot=300)
    assert (diff, ends, paired_p_value(d)) == (0.0, (0.0, 0.0), 1.0)


def test_paired_bootstrap_detects_a_better_model_and_is_antisymmetric() -> None:
    y, good = make_scores(300, seed=8, signal=0.5, decimals=3)
    _, weak = make_scores(300, seed=9, signal=0.0, decimals=3)  # noise: AUC ~ 0.5
    diff, (lo, hi), d = paired(y, good, weak, n_boot=1000)
    assert diff == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert 0 < lo < diff < hi
    assert paired_p_value(d) == pytest.approx(2 / 1001)  # no resample reaches 0: the floor
    back, (back_lo, back_hi), d_back = paired(y, weak, good, n_boot=1000)
    assert back == pytest.approx(-diff)
    assert (back_lo, back_hi) == pytest.approx((-hi, -lo))
    assert paired_p_value(d_back) == paired_p_value(d)


# ---------------------------------------------------------------- McNemar


def correctness(b: int, c: int, both: int = 5, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness vectors with b (only A right) and c (only B right) discordant pairs."""
    a = np.r_[np.ones(both + b, bool), np.zeros(c + neither, bool)]
    bb = np.r_[np.ones(both, bool), np.zeros(b, bool), np.ones(c, bool), np.zeros(neither, bool)]
    return a, bb


def test_mcnemar_exact_hand_computation() -> None:
    r = mcnemar(*correctness(10, 2))
    assert (r.b, r.c, r.method) == (10, 2, "exact")
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 158 / 4096.
    assert r.p_value == pytest.approx(158 / 4096)
    assert r.p_value == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar(*correctness(2, 10)).p_value == pytest.approx(158 / 4096)


def test_mcnemar_chi_square_textbook_case() -> None:
    # Agresti (2002), Categorical Data Analysis, Table 10.1: approval ratings b=150, c=86.
    r = mcnemar(*correctness(150, 86))
    assert r.method == "chi2-cc"
    assert r.statistic == pytest.approx((64 - 1) ** 2 / 236)  # 16.818
    assert r.statistic == pytest.approx(16.818, abs=1e-3)
    assert r.p_value == pytest.approx(sps.chi2.sf(16.818, 1), rel=1e-3)
    assert r.p_value < 1e-4


def test_mcnemar_switches_method_at_25_and_handles_no_discordance() -> None:
    assert mcnemar(*correctness(12, 12)).method == "exact"
    assert mcnemar(*correctness(13, 12)).method == "chi2-cc"
    assert mcnemar(*correctness(13, 12)).p_value == pytest.approx(1.0)  # (|1| - 1)^2 = 0
    r = mcnemar(*correctness(0, 0))
    assert r == McNemarResult(0, 0, 0.0, 1.0, "exact")
    json.dumps(r.as_dict(), allow_nan=False)


def test_mcnemar_every_field_when_b_equals_c() -> None:
    """b = c > 0 is a discordance (not the no-discordance case): exact below 25, chi2 above."""
    r = mcnemar(*correctness(3, 3))
    assert r == McNemarResult(3, 3, 3.0, 1.0, "exact")  # binomial p of 3 of 6 is 1
    r = mcnemar(*correctness(15, 15))
    assert (r.b, r.c, r.method) == (15, 15, "chi2-cc")
    assert r.statistic == pytest.approx(1 / 30)  # (|0| - 1)^2 / 30
    assert r.p_value == pytest.approx(sps.chi2.sf(1 / 30, 1))
    r = mcnemar(*correctness(20, 9))
    assert (r.b, r.c, r.method) == (20, 9, "chi2-cc")
    r = mcnemar(*correctness(7, 2))
    assert (r.b, r.c, r.statistic, r.method) == (7, 2, 7.0, "exact")


def test_mcnemar_unhappy_paths() -> None:
    with pytest.raises(ValueError, match=r"^correct_a and correct_b must be boolean arrays"):
        mcnemar(np.array([1, 0]), np.array([0, 1]))
    for a, b in ((np.array([True, False]), np.array([0, 1])), (np.array([1, 0]), np.ones(2, bool))):
        with pytest.raises(ValueError, match="boolean"):  # one of the two is not boolean
            mcnemar(a, b)
    with pytest.raises(ValueError, match="equal length"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


# ---------------------------------------------------------------- DeLong


def slow_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by definition: O(m n) kernel psi, structural components, covariance."""
    v10s, v01s, aucs = [], [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # (m, n)
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))  # (m,)
        v01s.append(psi.mean(axis=0))  # (n,)
    m, n = len(v10s[0]), len(v01s[0])
    return np.array(aucs), np.cov(np.array(v10s)) / m + np.cov(np.array(v01s)) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_slow_reference_with_ties(seed: int) -> None:
    y, a = make_scores(150, seed=seed, signal=0.3, decimals=1)
    rng = np.random.default_rng(100 + seed)
    b = np.clip(a + rng.normal(0, 0.15, a.size), 0, 1).round(1)  # correlated with a
    aucs, cov = slow_delong(y, [a, b])
    r = delong_roc_test(y, a, b)
    assert (r.auc_a, r.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
    assert (r.var_a, r.var_b, r.cov) == pytest.approx((cov[0, 0], cov[1, 1], cov[0, 1]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert r.z == pytest.approx((aucs[0] - aucs[1]) / np.sqrt(var))
    assert r.p_value == pytest.approx(2 * sps.norm.sf(abs(r.z)))
    assert r.auc_a == pytest.approx(roc_auc_score(y, a))


@pytest.mark.parametrize(("n_pos", "n_neg"), [(1, 5), (5, 1), (2, 2), (2, 7)])
def test_delong_with_one_or_two_of_a_class(n_pos: int, n_neg: int) -> None:
    """A class with one image contributes no variance term (np.cov of one value is undefined);
    with two it does. Finite results that equal the definition's where it is defined."""
    rng = np.random.default_rng(n_pos * 10 + n_neg)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    a = rng.random(y.size).round(2)
    b = np.clip(a + rng.normal(0, 0.2, y.size), 0, 1).round(2)
    r = delong_roc_test(y, a, b)
    assert np.isfinite([r.var_a, r.var_b, r.cov, r.p_value]).all()
    x_a, z_a = a[y == 1], a[y == 0]
    x_b, z_b = b[y == 1], b[y == 0]
    psi = [
        (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        for x, z in ((x_a, z_a), (x_b, z_b))
    ]
    v10 = np.array([k.mean(axis=1) for k in psi])  # (2, m)
    v01 = np.array([k.mean(axis=0) for k in psi])  # (2, n)
    cov = np.zeros((2, 2))
    if n_pos > 1:
        cov += np.cov(v10) / n_pos
    if n_neg > 1:
        cov += np.cov(v01) / n_neg
    assert (r.var_a, r.var_b, r.cov) == pytest.approx((cov[0, 0], cov[1, 1], cov[0, 1]))
    _, lo, hi = delong_ci(y, a)
    assert np.isfinite([lo, hi]).all()


def test_delong_certain_difference_has_p_zero() -> None:
    """Zero variance but different AUCs (a perfect and a perfectly wrong ranking): p = 0."""
    y = np.array([0, 0, 1, 1])
    r = delong_roc_test(y, np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert (r.auc_a, r.auc_b, r.diff, r.z, r.p_value) == (1.0, 0.0, 1.0, None, 0.0)


def test_delong_identical_predictors() -> None:
    y, p = make_scores(60)
    r = delong_roc_test(y, p, p)
    assert r.z is None and r.p_value == 1.0 and r.diff == 0.0
    json.dumps(r.as_dict(), allow_nan=False)


def test_delong_known_aucs() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    perfect = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    # Positives 0.9, 0.4, 0.6 vs negatives 0.5, 0.7, 0.1: pairs won 3 + 1 + 2 = 6 of 9.
    partial = np.array([0.9, 0.4, 0.6, 0.5, 0.7, 0.1])
    r = delong_roc_test(y, perfect, partial)
    assert (r.auc_a, r.auc_b) == pytest.approx((1.0, 6 / 9))
    assert r.var_a == 0.0  # a perfect separator has no spread in its components
    assert r.z is not None and r.z > 0


def test_delong_published_hanley_mcneil_example() -> None:
    # Hanley & McNeil (1982), Radiology 143:29, Table 1: CT ratings 1..5 of 58 normal and
    # 51 abnormal patients; published trapezoidal area 0.893, standard error ~0.032.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    s = np.r_[normal, abnormal].astype(float)
    auc, lo, hi = delong_ci(y, s)
    assert auc == pytest.approx(0.893, abs=5e-4)
    se = (hi - lo) / (2 * sps.norm.ppf(0.975))
    assert se == pytest.approx(0.032, abs=0.002)
    _, cov = slow_delong(y, [s, s])
    assert se == pytest.approx(np.sqrt(cov[0, 0]))


def test_delong_ci_clips_and_rejects_one_class() -> None:
    y = np.array([1, 1, 0, 0])
    assert delong_ci(y, np.array([0.9, 0.8, 0.2, 0.1])) == (1.0, 1.0, 1.0)
    # AUC 0.9375 with a wide interval: the upper end is clipped to 1, the lower one is not.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    auc, lo, hi = delong_ci(y, np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.05]))
    assert auc == pytest.approx(15 / 16) and hi == 1.0 and 0 < lo < auc
    with pytest.raises(XrayError, match=r"^AUC needs both classes in the labels"):
        delong_ci(np.ones(4, int), np.linspace(0, 1, 4))
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"^alpha must lie in \(0, 1\)"):
            delong_ci(y, np.linspace(0, 1, 8), alpha=alpha)
    with pytest.raises(XrayError, match="one class"):
        delong_roc_test(np.zeros(4, int), np.linspace(0, 1, 4), np.linspace(0, 1, 4))


# ---------------------------------------------------------------- majority baseline


def test_majority_baseline_positive_majority() -> None:
    train = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    test = np.array([0, 0, 1, 1, 1])
    m = majority_baseline(train, test)
    assert m["majority_class"] == "PNEUMONIA"
    assert m["prior_positive"] == pytest.approx(0.7)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert (m["sensitivity"], m["specificity"]) == (1.0, 0.0)
    assert m["roc_auc"] == 0.5
    assert m["confusion_matrix"] == [[0, 2], [0, 3]]
    json.dumps(m, allow_nan=False)


def test_majority_baseline_negative_majority_and_empty_train() -> None:
    m = majority_baseline(np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1]))
    assert m["majority_class"] == "NORMAL"
    assert (m["accuracy"], m["sensitivity"], m["specificity"]) == (0.25, 0.0, 1.0)
    with pytest.raises(XrayError, match=r"^the training labels are empty"):
        majority_baseline(np.array([], int), np.array([0, 1]))


def test_majority_baseline_passes_on_class_names_and_positive_index() -> None:
    """Positive class at index 0 with other names; a 50/50 train predicts the positive class."""
    names = ("sick", "well")
    m = majority_baseline(
        np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), class_names=names, positive_index=0
    )
    assert m["majority_class"] == "sick" and m["prior_positive"] == 0.5
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == (1.0, 0.0, 0.75)
    assert {"precision_sick", "recall_well"} <= set(m)
    assert m["threshold"] == 0.5


# ---------------------------------------------------------------- clustered paired tests, Holm


def test_clustered_delong_with_one_image_per_patient_is_delong() -> None:
    y, pa = make_scores(60, seed=3)
    _, pb = make_scores(60, seed=4, signal=0.1)
    plain = delong_roc_test(y, pa, pb)
    for groups in (None, [f"p{i}" for i in range(60)]):
        clustered = clustered_delong_test(y, pa, pb, groups)
        assert clustered.diff == pytest.approx(plain.diff)
        assert clustered.p_value == pytest.approx(plain.p_value, rel=1e-9)
        assert clustered.var_a == pytest.approx(plain.var_a, rel=1e-9)
        assert clustered.cov == pytest.approx(plain.cov, rel=1e-9)


def test_clustered_delong_does_not_count_a_patients_copies_as_new_evidence() -> None:
    """Every image twice (one patient, two identical images): the unclustered variance about
    halves, Obuchowski's clustered variance stays that of the single images."""
    y, pa = make_scores(80, seed=5, decimals=3)
    _, pb = make_scores(80, seed=6, signal=0.1, decimals=3)
    single = delong_roc_test(y, pa, pb)
    y2, pa2, pb2 = (np.repeat(v, 2) for v in (y, pa, pb))
    groups = np.repeat([f"p{i}" for i in range(80)], 2)
    naive = delong_roc_test(y2, pa2, pb2)
    clustered = clustered_delong_test(y2, pa2, pb2, groups)
    assert naive.var_a < 0.6 * single.var_a
    assert clustered.var_a == pytest.approx(single.var_a, rel=0.05)
    assert clustered.p_value > naive.p_value


def test_clustered_mcnemar_singletons_and_duplicated_images() -> None:
    a, b = correctness(9, 2, both=20, neither=4)
    groups = [f"p{i}" for i in range(a.size)]
    assert clustered_mcnemar(a, b, groups) == mcnemar(a, b)  # no clustering: exact McNemar
    a2, b2 = np.repeat(a, 2), np.repeat(b, 2)
    dup = clustered_mcnemar(a2, b2, np.repeat(groups, 2))
    assert dup.method == "clustered-chi2"
    assert (dup.b, dup.c) == (18, 4)
    # Durkalski's statistic on patient-level differences: (9 - 2)^2 / (9 + 2), as if each
    # patient were one image, where the naive test would see 18 vs 4.
    assert dup.statistic == pytest.approx(49 / 11)
    assert dup.p_value == pytest.approx(sps.chi2.sf(49 / 11, 1))
    assert mcnemar(a2, b2).p_value < dup.p_value


def test_holm_known_answer() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # monotone, capped at 1
