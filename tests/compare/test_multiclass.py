"""Multi-class metrics, bootstrap replicates and baseline agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from featurestore.compare import (
    majority_baseline_multiclass,
    multiclass_metrics,
    multiclass_replicates,
)

NAMES = ("NORMAL", "BACTERIAL", "VIRAL")


def _sample(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_metrics_equal_sklearn() -> None:
    y, p = _sample()
    m = multiclass_metrics(y, p, class_names=NAMES)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["roc_auc_macro"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert m["loss"] == pytest.approx(log_loss(y, p))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    for k, c in enumerate(NAMES):
        assert m[f"auc_{c}"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert m[f"recall_{c}"] == pytest.approx(np.mean(pred[y == k] == k))
        assert m[f"precision_{c}"] == pytest.approx(np.mean(y[pred == k] == k))
        assert m[f"n_{c}"] == int(np.sum(y == k))


def test_a_class_absent_from_the_split_is_undefined_not_zero() -> None:
    y, p = _sample()
    keep = y != 2
    m = multiclass_metrics(y[keep], p[keep], class_names=NAMES)
    assert m["recall_VIRAL"] is None and m["auc_VIRAL"] is None
    assert m["roc_auc_macro"] is None  # the macro AUC needs every class
    assert m["auc_NORMAL"] is not None
    # Never predicted: precision is 0/0.
    never = np.tile([0.6, 0.3, 0.1], (len(y), 1))
    assert multiclass_metrics(y, never, class_names=NAMES)["precision_VIRAL"] is None


def test_replicates_equal_sklearn_on_the_same_resamples() -> None:
    y, p = _sample(n=24, seed=3)
    groups = np.array([f"p{i // 2}" for i in range(24)])  # two images per patient
    reps = multiclass_replicates(y, p, groups=groups, n_boot=6, seed=7)
    # Rebuild the resamples the way the bootstrap draws them: whole patients with replacement.
    _, unit = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(7).integers(0, 12, size=(6, 12))
    for b in range(6):
        idx = np.concatenate([np.flatnonzero(unit == u) for u in draws[b]])
        yb, pb = y[idx], p[idx]
        predb = pb.argmax(1)
        assert reps["accuracy"][b] == pytest.approx(accuracy_score(yb, predb))
        assert reps["f1_macro"][b] == pytest.approx(
            f1_score(yb, predb, labels=[0, 1, 2], average="macro", zero_division=0)
        )
        if len(np.unique(yb)) == 3:
            assert reps["roc_auc_macro"][b] == pytest.approx(
                roc_auc_score(yb, pb, multi_class="ovr", average="macro")
            )
            assert reps["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, predb))
        else:
            assert np.isnan(reps["roc_auc_macro"][b])


def test_majority_baseline_predicts_the_train_majority() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    b = majority_baseline_multiclass(np.array([10.0, 30.0, 5.0]), y, NAMES)
    assert b["majority_class"] == "BACTERIAL"
    assert b["accuracy"] == pytest.approx(1 / 6)
    assert b["roc_auc_macro"] == pytest.approx(0.5)
    assert b["priors"]["BACTERIAL"] == pytest.approx(30 / 45)
