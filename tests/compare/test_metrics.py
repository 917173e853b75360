"""featurestore.compare.metrics: hand-computed cases, degenerate splits, threshold policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from featurestore.compare import (
    binary_metrics,
    choose_threshold,
    evaluate_split,
    expected_calibration_error,
    fit_calibration,
    operating_point,
    parse_threshold_policy,
)
from featurestore.errors import XrayError
from featurestore.train import TrainConfig

# Ten images, NORMAL=0, PNEUMONIA=1 (positive). No probability sits on a 0.1 bin edge, so the
# ECE bins below are unambiguous in floating point.
Y10 = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P10 = np.array([0.12, 0.42, 0.62, 0.22, 0.92, 0.82, 0.32, 0.72, 0.55, 0.45])

EXPECTED_KEYS = {
    "loss",
    "accuracy",
    "f1_macro",
    "f1_positive",
    "precision_NORMAL",
    "recall_NORMAL",
    "precision_PNEUMONIA",
    "recall_PNEUMONIA",
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
    "confusion_matrix",
    "threshold",
    "n",
    "n_positive",
}


def test_hand_computed_ten_samples_at_half() -> None:
    m = binary_metrics(Y10, P10)
    assert set(m) == EXPECTED_KEYS
    # At 0.5: negatives predict 0,0,1,0 -> TN=3 FP=1; positives 1,1,0,1,1,0 -> TP=4 FN=2.
    tp, fp, tn, fn = 4, 1, 3, 2
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["recall_PNEUMONIA"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["recall_NORMAL"] == pytest.approx(3 / 4)
    assert m["precision_PNEUMONIA"] == pytest.approx(4 / 5)
    assert m["precision_NORMAL"] == pytest.approx(3 / 5)  # TN / (TN + FN)
    f1_pos = 2 * tp / (2 * tp + fp + fn)  # 8/11
    f1_neg = 2 * tn / (2 * tn + fn + fp)  # 6/9
    assert m["f1_positive"] == pytest.approx(f1_pos)
    assert m["f1_macro"] == pytest.approx((f1_pos + f1_neg) / 2)
    # AUC: positive-over-negative pairs 4+4+2+4+3+3 = 20 of 24.
    assert m["roc_auc"] == pytest.approx(20 / 24)
    # AP: descending order puts positives at ranks 1,2,3,5,6,8 -> mean precision at each.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 1 + 4 / 5 + 5 / 6 + 6 / 8) / 6)
    brier = (0.12**2 + 0.42**2 + 0.62**2 + 0.22**2) + (
        0.08**2 + 0.18**2 + 0.68**2 + 0.28**2 + 0.45**2 + 0.55**2
    )
    assert m["brier"] == pytest.approx(brier / 10)
    # ECE: one sample per bin except bin 4 (0.42 -> y=0, 0.45 -> y=1): |1 - 0.87| = 0.13.
    singles = 0.12 + 0.62 + 0.22 + 0.08 + 0.18 + 0.68 + 0.28 + 0.45
    assert m["ece"] == pytest.approx((singles + 0.13) / 10)
    log_lik = [0.88, 0.58, 0.38, 0.78, 0.92, 0.82, 0.32, 0.72, 0.55, 0.45]
    assert m["loss"] == pytest.approx(-sum(math.log(v) for v in log_lik) / 10)
    assert m["threshold"] == 0.5
    assert m["n"] == 10
    assert m["n_positive"] == 6


def test_hand_computed_at_other_threshold_and_given_loss() -> None:
    m = binary_metrics(Y10, P10, threshold=0.6, loss=0.123)
    # At 0.6: negatives 0,0,1,0 -> TN=3 FP=1; positives 1,1,0,1,0,0 -> TP=3 FN=3.
    assert m["confusion_matrix"] == [[3, 1], [3, 3]]
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 6)
    assert m["loss"] == 0.123
    assert m["threshold"] == 0.6
    # Threshold-free metrics do not move.
    assert m["roc_auc"] == pytest.approx(20 / 24)


def test_prediction_is_inclusive_at_threshold() -> None:
    m = binary_metrics(np.array([0, 1]), np.array([0.3, 0.5]), threshold=0.5)
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]


def test_positive_index_zero_mirrors_positive_index_one() -> None:
    a = binary_metrics(Y10, P10, class_names=("NORMAL", "PNEUMONIA"), positive_index=1)
    b = binary_metrics(1 - Y10, P10, class_names=("PNEUMONIA", "NORMAL"), positive_index=0)
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc", "brier", "ece"):
        assert b[key] == pytest.approx(a[key]), key
    assert b["precision_PNEUMONIA"] == pytest.approx(a["precision_PNEUMONIA"])
    assert b["confusion_matrix"] == [[4, 2], [1, 3]]  # rows in class_names order


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_only_is_json_safe_and_quiet(label: int) -> None:
    y = np.full(5, label)
    p = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    m = binary_metrics(y, p)
    assert m["roc_auc"] is None
    assert m["pr_auc"] is None
    json.dumps(m, allow_nan=False)
    assert m["confusion_matrix"][1 - label] == [0, 0]
    assert m["n_positive"] == (5 if label == 1 else 0)
    # The absent class's recall, F1 and the macro F1 are undefined: None, never a real 0.
    absent = "PNEUMONIA" if label == 0 else "NORMAL"
    assert m["sensitivity" if label == 0 else "specificity"] is None
    assert m[f"recall_{absent}"] is None
    assert m["f1_macro"] is None
    assert (m["f1_positive"] is None) == (label == 0)
    assert m["sensitivity" if label == 1 else "specificity"] is not None
    assert m["accuracy"] == pytest.approx(3 / 5 if label == 1 else 2 / 5)


@pytest.mark.filterwarnings("error")
def test_no_positive_predictions_is_quiet() -> None:
    m = binary_metrics(Y10, P10, threshold=1.0)
    assert m["precision_PNEUMONIA"] is None  # 0/0: nothing predicted positive
    assert m["recall_PNEUMONIA"] == 0.0
    assert m["f1_positive"] == 0.0
    assert m["confusion_matrix"] == [[4, 0], [6, 0]]


def test_output_is_plain_json() -> None:
    out = evaluate_split(Y10, P10, threshold=0.6)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert set(out) == {"at_0.5", "at_threshold"}
    assert out["at_0.5"]["threshold"] == 0.5
    assert out["at_threshold"]["threshold"] == 0.6
    assert out["at_threshold"]["confusion_matrix"] == [[3, 1], [3, 3]]


def test_confident_mistake_loss_is_clipped_not_infinite() -> None:
    m = binary_metrics(np.array([0, 1]), np.array([1.0, 0.0]))
    assert math.isfinite(m["loss"]) and m["loss"] > 10


def test_expected_calibration_error_cases() -> None:
    # Perfectly calibrated bins: ten samples at 0.25 with 2.5 positives is impossible, so use
    # 0.25 x 4 with one positive and 0.75 x 4 with three.
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    # Always 0.9, never positive: error 0.9 whatever the bin count.
    assert expected_calibration_error(np.zeros(3), np.full(3, 0.9), n_bins=1) == pytest.approx(0.9)
    # p = 1.0 falls in the last bin instead of overflowing.
    assert expected_calibration_error(np.array([1.0]), np.array([1.0])) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error(y, p, n_bins=0)


def test_youden_known_answer_with_tie_broken_towards_half() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.8])
    # J: 0.8 -> 1/3, 0.7 -> 2/3, 0.6 -> 1/3, 0.4 -> 2/3, 0.2 -> 1/3, 0.1 -> 0.
    # 0.7 and 0.4 tie; 0.4 is closer to 0.5.
    assert choose_threshold(y, p, policy="youden") == pytest.approx(0.4)
    # Without the tie (0.6 lowered below 0.4) the unique optimum is 0.4 -> J = 1 at 0.4.
    p2 = np.array([0.1, 0.2, 0.35, 0.4, 0.7, 0.8])
    assert choose_threshold(y, p2) == pytest.approx(0.4)


def test_youden_never_returns_infinity() -> None:
    # An anti-correlated score: the best J (0) includes roc_curve's +inf threshold.
    y = np.array([1, 1, 0, 0])
    p = np.array([0.0, 0.3, 0.8, 0.9])
    t = choose_threshold(y, p)
    assert math.isfinite(t) and 0.0 <= t <= 1.0


def test_f1_policy_known_answer() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.8])
    # F1 per threshold: 0.8 -> 1/2, 0.7 -> 4/5, 0.6 -> 2/3, 0.4 -> 6/7, 0.2 -> 3/4, 0.1 -> 2/3.
    assert choose_threshold(y, p, policy="f1") == pytest.approx(0.4)


def test_fixed_policy_and_one_class() -> None:
    assert choose_threshold(Y10, P10, policy="fixed") == 0.5
    assert choose_threshold(np.ones(4, int), np.array([0.1, 0.2, 0.3, 0.9])) == 0.5


def test_positive_index_zero_in_threshold_choice() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.8])
    assert choose_threshold(1 - y, p, positive_index=0) == pytest.approx(0.4)


def test_unknown_policy_lists_the_policies() -> None:
    with pytest.raises(XrayError, match=r"youden, f1, sensitivity:0\.95"):
        choose_threshold(Y10, P10, policy="median")


def test_unhappy_inputs() -> None:
    with pytest.raises(XrayError, match="exactly 2 classes"):
        binary_metrics(Y10, P10, class_names=("A", "B", "C"))
    with pytest.raises(XrayError, match="NaN"):
        binary_metrics(Y10, np.where(Y10 == 1, np.nan, 0.2))
    with pytest.raises(XrayError, match="empty"):
        binary_metrics(np.array([], int), np.array([]))
    with pytest.raises(ValueError, match="equal length"):
        binary_metrics(Y10, P10[:5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics(Y10, P10 + 0.5)
    with pytest.raises(ValueError, match="class indices"):
        binary_metrics(Y10 + 1, P10)
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(Y10, P10, threshold=1.5)


def _noisy_scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and overlapping scores in [0, 1] (n,): no threshold separates them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.3, n))))
    return y, p


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_sensitivity_policy_reaches_its_target_with_the_best_specificity(target: float) -> None:
    y, p = _noisy_scores()
    t = choose_threshold(y, p, policy=f"sensitivity:{target}")
    sens = np.mean(p[y == 1] >= t)
    assert sens >= target
    # The next higher candidate (the smallest score above t) misses the target: t is the
    # highest threshold reaching it, so no other threshold gives a better specificity.
    above = p[p > t]
    if above.size:
        assert np.mean(p[y == 1] >= above.min()) < target


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_specificity_policy_reaches_its_target_with_the_best_sensitivity(target: float) -> None:
    y, p = _noisy_scores(seed=1)
    t = choose_threshold(y, p, policy=f"specificity:{target}")
    assert np.mean(p[y == 0] < t) >= target
    below = p[p < t]
    if below.size:
        assert np.mean(p[y == 0] < below.max()) < target


def test_fixed_policy_takes_its_value_and_fixed_alone_is_half() -> None:
    assert choose_threshold(Y10, P10, policy="fixed:0.3") == 0.3
    assert choose_threshold(Y10, P10, policy="fixed") == 0.5
    assert parse_threshold_policy("fixed") == ("fixed", 0.5)
    assert parse_threshold_policy("sensitivity:0.95") == ("sensitivity", 0.95)


@pytest.mark.parametrize(
    "policy",
    ["sensitivity", "specificity:", "sensitivity:high", "sensitivity:0", "specificity:1.2",
     "fixed:-0.1", "youden:0.5", "f1:1", "recall:0.9"],
)  # fmt: skip
def test_malformed_policies_are_one_line_errors(policy: str) -> None:
    with pytest.raises(XrayError, match="threshold policy"):
        choose_threshold(Y10, P10, policy=policy)
    with pytest.raises(XrayError, match="threshold policy"):
        TrainConfig(threshold_policy=policy)


@pytest.mark.parametrize("split", ["test", "external", "train"])
def test_nothing_is_chosen_on_a_split_that_is_reported(split: str) -> None:
    with pytest.raises(XrayError, match="never on"):
        choose_threshold(Y10, P10, policy="youden", split=split)
    with pytest.raises(XrayError, match="never on"):
        operating_point(Y10, P10, policy="fixed:0.5", split=split)
    with pytest.raises(XrayError, match="never on"):
        fit_calibration(Y10, P10, split=split)


@pytest.mark.parametrize(
    "policy", ["youden", "f1", "sensitivity:0.95", "specificity:0.9", "fixed:0.5"]
)
def test_operating_point_records_what_the_policy_reached(policy: str) -> None:
    y, p = _noisy_scores(seed=2)
    point = operating_point(y, p, policy=policy)
    assert point["policy"] == policy and point["chosen_on"] == "val"
    m = binary_metrics(y, p, threshold=point["value"])
    reached = point["reached"]
    assert reached["sensitivity"] == pytest.approx(m["sensitivity"])
    assert reached["specificity"] == pytest.approx(m["specificity"])
    assert reached["f1_positive"] == pytest.approx(m["f1_positive"])
    assert reached["youden_j"] == pytest.approx(m["sensitivity"] + m["specificity"] - 1)
    if policy.startswith("sensitivity"):
        assert reached["sensitivity"] >= 0.95
    if policy.startswith("specificity"):
        assert reached["specificity"] >= 0.9


def test_issue_13_1_all_positive_test_split_leaves_negative_metrics_undefined() -> None:
    """test = 0 NORMAL + 6 PNEUMONIA: specificity, NORMAL's precision/recall and the macro F1
    are undefined, not 0.0; the metrics that exist are still computed."""
    y = np.ones(6, dtype=int)
    p = np.array([0.2, 0.6, 0.7, 0.8, 0.9, 0.95])
    m = binary_metrics(y, p, threshold=0.5)
    for key in ("specificity", "recall_NORMAL", "f1_macro", "roc_auc", "pr_auc"):
        assert m[key] is None, key
    assert m["precision_NORMAL"] == 0.0  # one image predicted NORMAL, and it is wrong: defined
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["f1_positive"] == pytest.approx(10 / 11)
