"""featurestore.compare.calibration: Platt scaling fitted on validation, ECE not worse."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.compare import (
    IDENTITY,
    calibration_from_dict,
    calibration_report,
    expected_calibration_error,
    fit_calibration,
    logit,
)
from featurestore.errors import XrayError


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a true logit z, scores from 3 z + 1: overconfident and shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    p = 1 / (1 + np.exp(-(3 * z + 1)))
    return y, p


def test_platt_recovers_the_distortion_and_lowers_ece() -> None:
    y, p = _overconfident(4000, seed=0)
    cal = fit_calibration(y, p)
    assert cal.method == "platt" and cal.fitted_on == "val" and cal.n == 4000
    # True logit z = (logit(p) - 1) / 3: scale 1/3, bias -1/3, temperature 3.
    assert cal.scale == pytest.approx(1 / 3, abs=0.05)
    assert cal.bias == pytest.approx(-1 / 3, abs=0.1)
    assert cal.temperature == pytest.approx(3, abs=0.5)
    assert expected_calibration_error(y, cal.apply(p)) < 0.5 * expected_calibration_error(y, p)
    # Fitted on one sample, it helps on another from the same site.
    y2, p2 = _overconfident(4000, seed=1)
    assert expected_calibration_error(y2, cal.apply(p2)) < expected_calibration_error(y2, p2)


@pytest.mark.parametrize("seed", range(5))
def test_validation_ece_is_never_worse_after_recalibration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    y = rng.integers(0, 2, n)
    p = np.clip(rng.random(n) * 0.6 + 0.4 * y, 0, 1)  # arbitrary scores, some calibrated-ish
    cal = fit_calibration(y, p)
    assert expected_calibration_error(y, cal.apply(p)) <= expected_calibration_error(y, p) + 1e-12


def test_apply_is_monotone_so_the_ranking_and_auc_stay() -> None:
    y, p = _overconfident(500, seed=3)
    q = fit_calibration(y, p).apply(p)
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))


def test_a_separable_split_gives_a_finite_moderate_scale() -> None:
    # Four separable images: the 0/1 likelihood has no maximum; Platt's targets keep it finite.
    y = np.array([0, 0, 1, 1])
    p = np.array([0.3, 0.45, 0.55, 0.7])
    cal = fit_calibration(y, p)
    assert cal.method == "platt" and 0 < cal.scale < 20
    q = cal.apply(p)
    assert np.all((q > 0.1) & (q < 0.9))  # no 0/1 certainty from four images


def test_one_class_split_gives_the_identity() -> None:
    cal = fit_calibration(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert cal.method == "identity" and cal.note == "one class only"
    assert np.array_equal(cal.apply(np.array([0.2, 0.7])), [0.2, 0.7])


def test_logit_is_finite_at_zero_and_one() -> None:
    z = logit(np.array([0.0, 0.5, 1.0]))
    assert np.all(np.isfinite(z)) and z[1] == 0.0 and z[0] == pytest.approx(-z[2])


def test_report_and_round_trip() -> None:
    y, p = _overconfident(300, seed=4)
    cal = fit_calibration(y, p, split="calibration")
    doc = calibration_report(cal, {"val": (y, p)})
    assert doc["fitted_on"] == "calibration"
    assert doc["val"]["ece_after"] <= doc["val"]["ece_before"]
    assert doc["val"]["brier_before"] == pytest.approx(np.mean((p - y) ** 2))
    back = calibration_from_dict(doc)
    assert back == cal
    assert calibration_from_dict(None) == IDENTITY
    with pytest.raises(XrayError, match="malformed"):
        calibration_from_dict({"method": "platt"})


def test_positive_index_zero() -> None:
    y, p = _overconfident(1000, seed=5)
    # The same data with the classes swapped: P(class 1) = 1 - p, positive class 0.
    a = fit_calibration(y, p)
    b = fit_calibration(1 - y, p, positive_index=0)
    assert a.scale == pytest.approx(b.scale) and a.bias == pytest.approx(b.bias)


def test_an_inverting_fit_is_refused_and_the_auc_never_changes() -> None:
    """Issue #28.1: on a split where the scores rank backwards (an external site where the
    model is worse than chance), Platt's maximum-likelihood slope is negative; applying it
    would flip the ranking (ROC-AUC 0.4755 reported as 0.5245). It must be refused."""
    from sklearn.metrics import roc_auc_score

    y, p = _overconfident(400, seed=4)
    p_backwards = 1.0 - p  # the model ranks this site's patients in reverse
    cal = fit_calibration(y, p_backwards, split="calibration")
    assert cal.method == "identity" and "slope" in cal.note and "refused" in cal.note
    q = cal.apply(p_backwards)
    assert roc_auc_score(y, q) == roc_auc_score(y, p_backwards) < 0.5


def test_temperature_scaling_minimises_nll_and_keeps_each_images_argmax() -> None:
    from scipy.special import softmax

    from featurestore.compare import fit_temperature, multiclass_nll

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (300, 3))  # the true logits: y drawn from softmax(logits)
    y = np.array([rng.choice(3, p=q) for q in softmax(logits, axis=1)])
    probs = softmax(3.0 * logits, axis=1)  # overconfident: the true T is 3
    fit = fit_temperature(y, probs, split="calibration")
    assert fit.method == "temperature" and fit.fitted_on == "calibration" and fit.n == 300
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 2001))
    nll = [multiclass_nll(y, softmax(np.log(probs) / t, axis=1)) for t in grid]
    assert fit.temperature == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    assert 2.0 < fit.temperature < 4.5  # the overconfident softmax is cooled
    out = fit.apply(probs)
    np.testing.assert_allclose(out, softmax(np.log(probs) / fit.temperature, axis=1), atol=1e-9)
    assert np.array_equal(out.argmax(1), probs.argmax(1))
    assert multiclass_nll(y, out) <= multiclass_nll(y, probs)
    with pytest.raises(XrayError):
        fit_temperature(y, probs, split="test")


def test_temperature_can_move_a_one_vs_rest_auc_so_none_is_promised() -> None:
    """With three classes, dividing logits by T keeps each image's class order but not one
    class's order across images: (3, 0, 0) vs (1, 0.9, -10) swap P(class 0) at T = 10."""
    from featurestore.compare import Temperature

    p = np.array([[3.0, 0.0, 0.0], [1.0, 0.9, -10.0]])
    probs = np.exp(p) / np.exp(p).sum(1, keepdims=True)
    hot = Temperature("temperature", 10.0, "calibration", 2).apply(probs)
    assert probs[0, 0] > probs[1, 0] and hot[0, 0] < hot[1, 0]
    assert np.array_equal(hot.argmax(1), probs.argmax(1))


def test_platt_per_finding_refuses_an_inverting_fit_and_says_which() -> None:
    from featurestore.compare import fit_label_calibration

    rng = np.random.default_rng(1)
    n = 200
    y = rng.integers(0, 2, (n, 2)).astype(np.float64)
    good = np.clip(0.3 + 0.4 * y[:, 0] + rng.normal(0, 0.1, n), 0.01, 0.99)
    inverted = np.clip(0.7 - 0.4 * y[:, 1] + rng.normal(0, 0.1, n), 0.01, 0.99)
    y[::5, 0] = np.nan  # masked entries are left out of the fit
    cal = fit_label_calibration(y, np.c_[good, inverted], ["A", "B"], split="calibration")
    assert cal.per_label["A"].method in ("platt", "identity")
    assert cal.per_label["A"].n == int((~np.isnan(y[:, 0])).sum())
    assert cal.per_label["B"].method == "identity" and "slope" in cal.per_label["B"].note
    assert any(note.startswith("B: ") for note in cal.notes)
    assert not any(note.startswith("A: ") and "slope" in note for note in cal.notes)
    out = cal.apply(np.c_[good, inverted], ["A", "B"])
    np.testing.assert_array_equal(out[:, 1], inverted)  # refused: the scores are kept


def test_a_temperature_is_not_fitted_where_the_nll_has_no_minimum() -> None:
    """A calibration set with every image right: NLL falls as T -> 0 without end (the fit
    would make the model certain); the identity is kept and the reason said."""
    from featurestore.compare import fit_temperature

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    fit = fit_temperature(np.array([0, 1, 2]), probs, split="calibration")
    assert fit.method == "identity" and "classified right" in fit.note
    np.testing.assert_array_equal(fit.apply(probs), probs)
    wrong = fit_temperature(np.array([1, 2, 0]), probs, split="calibration")
    assert wrong.method == "identity" and "classified wrong" in wrong.note
