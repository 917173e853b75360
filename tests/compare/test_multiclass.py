"""Multi-class split metrics agree with scikit-learn (replicates and baseline: test_engine)."""

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

from featurestore.compare import multiclass_metrics

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
