"""The one scoring engine: every task's point estimates and bootstrap replicates equal
scikit-learn recomputed on the same (resampled) test rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    roc_auc_score,
)

from featurestore.compare import Decision, TestArrays, engine
from featurestore.tasks import Task

TASKS = {
    "binary": Task.from_classes(["NORMAL", "PNEUMONIA"]),
    "multiclass": Task.from_classes(["NORMAL", "BACTERIAL", "VIRAL"]),
    "multilabel": Task.from_classes(["Effusion", "Edema", "Mass"], multilabel=True),
}


def _arrays(kind: str, n: int = 40, seed: int = 0) -> tuple[TestArrays, Decision]:
    rng = np.random.default_rng(seed)
    groups = np.array([f"p{i // 2}" for i in range(n)])  # two images per patient
    keys = np.array([f"k{i:03d}" for i in range(n)])
    if kind == "binary":
        y = rng.integers(0, 2, n)
        p = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
        return TestArrays(keys, y, p, groups), Decision("at_threshold", "", 0.45)
    if kind == "multiclass":
        y = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return TestArrays(keys, y, p, groups), Decision("argmax", "", None)
    y = rng.integers(0, 2, (n, 3)).astype(float)
    y[rng.random((n, 3)) < 0.15] = np.nan  # masked (uncertain, ignored) entries
    p = np.clip(0.3 * np.nan_to_num(y) + rng.uniform(0, 0.7, (n, 3)), 0, 1)
    return TestArrays(keys, y, p, groups), Decision("at_threshold", "", (0.4, 0.5, 0.6))


def _sklearn(kind: str, task: Task, y: np.ndarray, p: np.ndarray, d: Decision) -> dict:
    """The task's metrics recomputed with scikit-learn (NaN where it refuses: one class)."""

    def safe(fn, *args, **kw) -> float:
        try:
            return float(fn(*args, **kw))
        except ValueError:
            return float("nan")

    out: dict = {}
    if kind == "binary":
        pred = (p >= d.thresholds).astype(int)
        out[("accuracy", None)] = accuracy_score(y, pred)
        out[("sensitivity", None)] = np.mean(pred[y == 1]) if (y == 1).any() else np.nan
        out[("specificity", None)] = 1 - np.mean(pred[y == 0]) if (y == 0).any() else np.nan
        out[("roc_auc", None)] = safe(roc_auc_score, y, p)
        out[("loss", None)] = log_loss(y, p, labels=[0, 1])
        if len(np.unique(y)) == 2:
            out[("f1_macro", None)] = f1_score(y, pred, average="macro")
        return out
    if kind == "multiclass":
        pred = p.argmax(1)
        out[("accuracy", None)] = accuracy_score(y, pred)
        out[("f1_macro", None)] = f1_score(y, pred, labels=[0, 1, 2], average="macro",
                                           zero_division=0)  # fmt: skip
        out[("loss", None)] = log_loss(y, p, labels=[0, 1, 2])
        if len(np.unique(y)) == 3:
            out[("balanced_accuracy", None)] = balanced_accuracy_score(y, pred)
            out[("roc_auc_macro", None)] = roc_auc_score(y, p, multi_class="ovr")
        for k, c in enumerate(task.class_names):
            out[("auc", c)] = safe(roc_auc_score, y == k, p[:, k])
        return out
    aucs = []
    for k, c in enumerate(task.class_names):
        m = ~np.isnan(y[:, k])
        yk, pk = y[m, k], p[m, k]
        hit = pk >= d.thresholds[k]
        out[("auc", c)] = safe(roc_auc_score, yk, pk)
        out[("sensitivity", c)] = hit[yk == 1].mean() if (yk == 1).any() else np.nan
        out[("specificity", c)] = (~hit[yk == 0]).mean() if (yk == 0).any() else np.nan
        aucs.append(out[("auc", c)])
    out[("roc_auc_macro", None)] = np.mean(aucs)
    return out


@pytest.mark.parametrize("kind", list(TASKS))
def test_point_estimates_equal_sklearn(kind: str) -> None:
    task = TASKS[kind]
    arrays, d = _arrays(kind)
    point = engine.point_estimates(engine.kernel(task, arrays, d), arrays.n)
    for key, expected in _sklearn(kind, task, arrays.labels, arrays.scores, d).items():
        assert point[key] == pytest.approx(expected, abs=1e-9), key


@pytest.mark.parametrize("kind", list(TASKS))
def test_replicates_equal_sklearn_on_the_same_patient_resamples(kind: str) -> None:
    task = TASKS[kind]
    arrays, d = _arrays(kind, n=24, seed=3)
    reps = engine.replicates(
        engine.kernel(task, arrays, d), arrays.n, groups=arrays.groups, n_boot=6, seed=7
    )
    # Rebuild the resamples as the bootstrap draws them: whole patients with replacement.
    _, unit = np.unique(arrays.groups, return_inverse=True)
    draws = np.random.default_rng(7).integers(0, 12, size=(6, 12))
    for b in range(6):
        idx = np.concatenate([np.flatnonzero(unit == u) for u in draws[b]])
        expected = _sklearn(kind, task, arrays.labels[idx], arrays.scores[idx], d)
        for key, value in expected.items():
            got = reps[key][b]
            if np.isnan(value):
                assert np.isnan(got), (key, b)
            else:
                assert got == pytest.approx(value, abs=1e-9), (key, b)


@pytest.mark.parametrize("kind", list(TASKS))
def test_a_constant_baseline_ranks_nothing(kind: str) -> None:
    task = TASKS[kind]
    arrays, d = _arrays(kind)
    counts = np.array([10.0, 30.0]) if kind == "binary" else np.array([10.0, 30.0, 5.0])
    if kind == "multilabel":
        counts = np.zeros(3)
    scores = engine.baseline_scores(task, counts, arrays.n)
    constant = TestArrays(arrays.keys, arrays.labels, scores, arrays.groups)
    point = engine.point_estimates(engine.kernel(task, constant, d), arrays.n)
    assert point[(task.primary_metric, None)] == pytest.approx(0.5)
    if kind == "multiclass":  # always BACTERIAL, the train majority
        assert point[("accuracy", None)] == pytest.approx(np.mean(arrays.labels == 1))


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_the_loss_of_confident_mistakes_equals_sklearn(kind: str) -> None:
    # A saved probability of 1e-12 and an exact 0 for the true class: sklearn clips at float64's
    # eps without renormalising; the old 1e-7 clip gave 16.1 nats where sklearn gives 36.0.
    task = TASKS[kind]
    arrays, d = _arrays(kind, n=20, seed=5)
    y, p = arrays.labels, arrays.scores.copy()
    if kind == "binary":
        p[0], p[1] = (1e-12, 1.0) if y[0] == 1 else (1.0, 1e-12)
        p[2] = 0.0 if y[2] == 1 else 1.0
    else:
        for i, tiny in ((0, 1e-12), (1, 0.0)):
            p[i] = 0.0
            p[i, y[i]] = tiny
            p[i, (y[i] + 1) % 3] = 1.0 - tiny
    confident = TestArrays(arrays.keys, y, p, arrays.groups)
    point = engine.point_estimates(engine.kernel(task, confident, d), arrays.n)
    labels = [0, 1] if kind == "binary" else [0, 1, 2]
    assert point[("loss", None)] == pytest.approx(log_loss(y, p, labels=labels), rel=1e-12)
