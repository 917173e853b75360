"""compare.questions on all three tasks against independent computations (sklearn, Holm by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from featurestore.compare import clustered_delong_test
from featurestore.runs import RunRecord
from featurestore.study import METRICS, answer_questions, compare_pair
from featurestore.tasks import Task

BINARY = Task.from_classes(["NORMAL", "PNEUMONIA"])
MULTICLASS = Task.from_classes(["NORMAL", "BACTERIAL", "VIRAL"])
MULTILABEL = Task.from_classes(["Cardiomegaly", "Effusion", "Opacity"], multilabel=True)


def _record(name: str, preds: dict[str, np.ndarray], task: Task) -> RunRecord:
    """A run as load_run reads it: its task in config.json, its test rows."""
    n = preds["key"].size
    full = {"split": np.array(["test"] * n), **preds}
    return RunRecord(Path(name), task.as_record(), {}, {}, full, {})


def _base(n: int = 40) -> dict[str, np.ndarray]:
    return {
        "key": np.array([f"img{i:03d}" for i in range(n)]),
        "patient": np.array([f"p{i // 2}" for i in range(n)]),
    }


def test_binary_roc_auc_matches_sklearn_and_clustered_delong() -> None:
    rng = np.random.default_rng(0)
    base = _base()
    y = np.tile([0, 1], 20)
    pa, pb = np.clip(y * 0.3 + rng.random(40) * 0.7, 0, 1), rng.random(40)
    cfg = BINARY
    a = _record("a", {**base, "label": y, "probability": pa, "prediction": (pa > 0.5) * 1}, cfg)
    # b lists its rows in another order: pairing is by key
    order = rng.permutation(40)
    b = _record("b", {k: v[order] for k, v in {**base, "label": y, "probability": pb,
                "prediction": (pb > 0.5) * 1}.items()}, cfg)  # fmt: skip
    res = compare_pair([a], [b], "roc_auc", n_boot=300, seed=1)
    assert res.diff == pytest.approx(roc_auc_score(y, pa) - roc_auc_score(y, pb))
    assert res.p_value == pytest.approx(clustered_delong_test(y, pa, pb, base["patient"]).p_value)
    assert "DeLong" in res.test
    assert res.lo <= res.diff <= res.hi
    again = compare_pair([a], [b], "roc_auc", n_boot=300, seed=1)
    assert (again.lo, again.hi) == (res.lo, res.hi)  # seeded: reproducible
    acc = compare_pair([a], [b], "accuracy", n_boot=300)
    assert "bootstrap" in acc.test
    assert acc.diff == pytest.approx(accuracy_score(y, pa > 0.5) - accuracy_score(y, pb > 0.5))


def test_multiclass_macro_ovr_auc_and_seed_means() -> None:
    rng = np.random.default_rng(1)
    base = _base(60)
    y = np.arange(60) % 3
    runs = []
    for _ in range(4):
        p = rng.random((60, 3)) + np.eye(3)[y] * rng.random()
        runs.append(_record("r", {**base, "label": y, "probabilities": p / p.sum(1, keepdims=True),
                                  "prediction": p.argmax(1)}, MULTICLASS))  # fmt: skip
    res = compare_pair(runs[:2], runs[2:], "roc_auc", n_boot=200)
    aucs = [roc_auc_score(y, r.predictions["probabilities"], multi_class="ovr") for r in runs]
    assert res.diff == pytest.approx(np.mean(aucs[:2]) - np.mean(aucs[2:]))
    assert "2-seed means" in res.test and 0 < res.p_value <= 1
    f1 = METRICS["multiclass"]["f1_macro"]
    from sklearn.metrics import f1_score

    p0 = runs[0].predictions["probabilities"]
    assert f1(y, p0) == pytest.approx(f1_score(y, p0.argmax(1), average="macro"))


def test_multilabel_masked_macro_auc_and_undefined_stays_undefined() -> None:
    rng = np.random.default_rng(2)
    base = _base()
    t = (rng.random((40, 3)) < 0.5).astype(float)
    t[::5, 1] = np.nan  # masked uncertain labels
    t[:, 2] = 1.0  # a label with one class only: its AUC is undefined, left out of the mean
    pa, pb = rng.random((40, 3)), rng.random((40, 3))
    rec = [_record(n, {**base, "targets": t, "probabilities": p, "predictions": (p > 0.5) * 1},
                   MULTILABEL) for n, p in (("a", pa), ("b", pb))]  # fmt: skip

    def macro(p: np.ndarray) -> float:
        out = []
        for j in range(2):
            known = np.isfinite(t[:, j])
            out.append(roc_auc_score(t[known, j], p[known, j]))
        return float(np.mean(out))

    res = compare_pair(rec[:1], rec[1:], "roc_auc", n_boot=200)
    assert res.diff == pytest.approx(macro(pa) - macro(pb))
    # A test set of one class: the multi-class AUC is undefined, reported NaN (never 0).
    one = _base(6)
    y = np.zeros(6, dtype=np.int64)
    p = np.full((6, 3), 1 / 3)
    r = _record("c", {**one, "label": y, "probabilities": p, "prediction": y}, MULTICLASS)
    und = compare_pair([r], [r], "roc_auc", n_boot=100)
    assert np.isnan(und.diff) and und.note and und.as_dict()["diff"] is None


def test_holm_runs_over_the_declared_questions_only() -> None:
    rng = np.random.default_rng(3)
    base = _base()
    y = np.tile([0, 1], 20)

    def run(signal: float) -> RunRecord:
        p = np.clip(y * signal + rng.random(40) * (1 - signal), 0, 1)
        return _record("r", {**base, "label": y, "probability": p, "prediction": (p > 0.5) * 1},
                       BINARY)  # fmt: skip

    good, bad, mid = run(0.6), run(0.0), run(0.3)
    answers = answer_questions(
        [("q1", "g", "b", [good], [bad], "roc_auc"), ("q2", "m", "b", [mid], [bad], "roc_auc")],
        n_boot=200,
    )
    p = sorted((a.result.p_value, i) for i, a in enumerate(answers))
    by_hand = [0.0, 0.0]
    by_hand[p[0][1]] = min(1.0, 2 * p[0][0])
    by_hand[p[1][1]] = min(1.0, max(2 * p[0][0], p[1][0]))
    assert [a.holm_p for a in answers] == pytest.approx(by_hand)
    assert all(a.family == 2 for a in answers)
    assert "Holm-adjusted over 2 questions" in answers[0].statement()


def _task_run(task: Task, y: np.ndarray, signal: float, rng: np.random.Generator) -> RunRecord:
    """A run of `task` whose scores carry `signal` (0: noise) about the labels y."""
    base = _base(y.shape[0])
    if task.binary:
        p = np.clip(y * signal + rng.random(y.shape[0]) * (1 - signal), 0, 1)
        return _record("r", {**base, "label": y, "probability": p, "prediction": (p > 0.5) * 1},
                       task)  # fmt: skip
    if task.multiclass:
        p = np.eye(3)[y] * signal + rng.random((y.shape[0], 3)) * (1 - signal)
        p = p / p.sum(1, keepdims=True)
        return _record("r", {**base, "label": y, "probabilities": p, "prediction": p.argmax(1)},
                       task)  # fmt: skip
    p = np.clip(np.nan_to_num(y) * signal + rng.random(y.shape) * (1 - signal), 0, 1)
    return _record("r", {**base, "targets": y, "probabilities": p, "predictions": (p > 0.5) * 1},
                   task)  # fmt: skip


def _sklearn_auc(task: Task, run: RunRecord) -> float:
    y, p = (
        (run.predictions["targets"] if task.multilabel else run.predictions["label"]),
        (run.predictions["probability"] if task.binary else run.predictions["probabilities"]),
    )
    if task.binary:
        return float(roc_auc_score(y, p))
    if task.multiclass:
        return float(roc_auc_score(y, p, multi_class="ovr"))
    known = [np.isfinite(y[:, j]) for j in range(y.shape[1])]
    return float(np.mean([roc_auc_score(y[k, j], p[k, j]) for j, k in enumerate(known)]))


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_declared_questions_on_every_task(task: Task) -> None:
    """Two questions on two seeds per arm: the difference of seed means (sklearn), a bootstrap
    p-value in (0, 1], Holm over the two by hand, the statement naming the family."""
    rng = np.random.default_rng(4)
    n = 60
    if task.multilabel:
        y = (rng.random((n, 3)) < 0.5).astype(float)
        y[::7, 0] = np.nan  # masked uncertain labels
    else:
        y = np.arange(n) % (2 if task.binary else 3)
    good = [_task_run(task, y, 0.7, rng) for _ in range(2)]
    mid = [_task_run(task, y, 0.3, rng) for _ in range(2)]
    bad = [_task_run(task, y, 0.0, rng) for _ in range(2)]
    answers = answer_questions(
        [("q1", "g", "b", good, bad, "roc_auc"), ("q2", "m", "b", mid, bad, "roc_auc")],
        n_boot=200,
    )
    for answer, arm in zip(answers, (good, mid), strict=True):
        r = answer.result
        expected = np.mean([_sklearn_auc(task, x) for x in arm]) - np.mean(
            [_sklearn_auc(task, x) for x in bad]
        )
        assert r.task == task.kind and r.diff == pytest.approx(expected)
        assert "2-seed means" in r.test and 0 < r.p_value <= 1 and r.lo <= r.diff <= r.hi
        assert answer.family == 2 and "over 2 questions" in answer.statement()
    p = sorted((a.result.p_value, i) for i, a in enumerate(answers))
    by_hand = [0.0, 0.0]
    by_hand[p[0][1]] = min(1.0, 2 * p[0][0])
    by_hand[p[1][1]] = min(1.0, max(2 * p[0][0], p[1][0]))
    assert [a.holm_p for a in answers] == pytest.approx(by_hand)
    assert answers[0].significant is True  # 0.7 signal vs noise on 60 images
