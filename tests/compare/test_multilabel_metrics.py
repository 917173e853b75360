"""Multi-label metrics and per-label thresholds agree with scikit-learn on observed entries."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from featurestore.compare import choose_label_thresholds, multilabel_metrics

NAMES = ("Effusion", "Mass", "Nodule")


def _sample(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 3)).astype(np.float64)
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=(n, 3)))))
    y[rng.random((n, 3)) < 0.15] = np.nan
    return y, p


def test_per_label_metrics_equal_sklearn_on_observed_entries() -> None:
    y, p = _sample()
    thresholds = {"Effusion": 0.4, "Mass": 0.5, "Nodule": 0.6}
    m = multilabel_metrics(y, p, names=NAMES, thresholds=thresholds)
    aucs = []
    for k, name in enumerate(NAMES):
        obs = ~np.isnan(y[:, k])
        yk, pk = y[obs, k] == 1, p[obs, k]
        got = m["labels"][name]
        assert got["auc"] == pytest.approx(roc_auc_score(yk, pk))
        assert got["average_precision"] == pytest.approx(average_precision_score(yk, pk))
        pred = pk >= thresholds[name]
        assert got["sensitivity"] == pytest.approx(pred[yk].mean())
        assert got["specificity"] == pytest.approx((~pred[~yk]).mean())
        assert got["n"] == obs.sum() and got["n_masked"] == (~obs).sum()
        aucs.append(roc_auc_score(yk, pk))
    assert m["macro_auc"] == pytest.approx(np.mean(aucs)) and m["n_labels_auc"] == 3
    obs = ~np.isnan(y)
    assert m["micro_auc"] == pytest.approx(roc_auc_score(y[obs], p[obs]))


def test_a_label_with_one_class_is_undefined_and_left_out_of_the_macro() -> None:
    y, p = _sample()
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # Nodule: no positive on this split
    m = multilabel_metrics(y, p, names=NAMES, thresholds=dict.fromkeys(NAMES, 0.5))
    assert m["labels"]["Nodule"]["auc"] is None and m["labels"]["Nodule"]["sensitivity"] is None
    assert m["labels"]["Nodule"]["specificity"] is not None
    assert m["n_labels_auc"] == 2


def test_thresholds_are_youden_per_label_on_observed_validation_entries() -> None:
    y, p = _sample(seed=1)
    t = choose_label_thresholds(y, p, NAMES, policy="youden")
    for k, name in enumerate(NAMES):
        obs = ~np.isnan(y[:, k])
        fpr, tpr, _ = roc_curve(y[obs, k], p[obs, k], drop_intermediate=False)
        best = np.max(tpr - fpr)
        # The chosen threshold reaches the best J on this label (ties go towards 0.5).
        pred = p[obs, k] >= t[name]
        yk = y[obs, k] == 1
        assert pred[yk].mean() - pred[~yk].mean() == pytest.approx(best)
    assert choose_label_thresholds(y, p, NAMES, policy="fixed") == dict.fromkeys(NAMES, 0.5)


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    from featurestore.compare import holm

    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5.
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_loss_is_the_mean_over_scored_images_of_each_ones_sklearn_log_loss() -> None:
    # Each image's binary cross-entropy over its observed findings, then the mean over images with
    # one observed; confident mistakes (1e-12 and an exact 0) are clipped as sklearn clips them.
    y, p = _sample(seed=4)
    y[0] = np.nan  # nothing observed: the image counts nowhere
    y[1], p[1] = [1.0, 0.0, np.nan], [1e-12, 1.0, 0.5]
    y[2], p[2] = [0.0, np.nan, 1.0], [1.0, 0.5, 0.0]
    per_image = [
        log_loss(y[i][~np.isnan(y[i])], p[i][~np.isnan(y[i])], labels=[0, 1])
        for i in range(len(y))
        if (~np.isnan(y[i])).any()
    ]
    thresholds = dict.fromkeys(NAMES, 0.5)
    m = multilabel_metrics(y, p, names=NAMES, thresholds=thresholds)
    assert m["loss"] == pytest.approx(np.mean(per_image), rel=1e-12)
    assert (
        multilabel_metrics(np.full((3, 3), np.nan), p[:3], names=NAMES, thresholds=thresholds)[
            "loss"
        ]
        is None
    )
