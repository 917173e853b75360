"""compare.questions on all three tasks against independent computations (sklearn, Holm by hand):
every number comes from the one engine (`compare.engine`), checked here from the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    recall_score,
    roc_auc_score,
)

from featurestore.compare import clustered_delong_test
from featurestore.errors import XrayError
from featurestore.runs import RunRecord
from featurestore.study import answer_questions, check_metric, compare_pair, metric_names, score
from featurestore.tasks import Task

BINARY = Task.from_classes(["NORMAL", "PNEUMONIA"])
MULTICLASS = Task.from_classes(["NORMAL", "BACTERIAL", "VIRAL"])
MULTILABEL = Task.from_classes(["Cardiomegaly", "Effusion", "Opacity"], multilabel=True)


def _record(
    name: str, preds: dict[str, np.ndarray], task: Task, threshold: float = 0.5
) -> RunRecord:
    """A run as load_run reads it: its task in config.json, its validation-chosen threshold(s)
    in metrics.json, its test rows."""
    n = preds["key"].size
    full = {"split": np.array(["test"] * n), **preds}
    point: dict[str, object] = {"value": threshold}
    if task.multilabel:
        point = {"per_label": {c: threshold for c in task.class_names}}
    return RunRecord(Path(name), task.as_record(), {"threshold": point}, {}, full, {})


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
    assert res.metric == "roc_auc_macro"  # the engine's name of the multi-class ROC-AUC


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


def test_every_headline_metric_is_sklearn_on_the_rows() -> None:
    """score() is the engine's point estimate; each equals scikit-learn on predictions.csv."""
    rng = np.random.default_rng(5)
    y = np.arange(60) % 2
    p = np.clip(y * 0.4 + rng.random(60) * 0.6, 0.01, 0.99)
    b = _record("b", {**_base(60), "label": y, "probability": p, "prediction": (p >= 0.4) * 1},
                BINARY, threshold=0.4)  # fmt: skip
    hard = (p >= 0.4).astype(int)
    expected = {
        "roc_auc": roc_auc_score(y, p),
        "accuracy": accuracy_score(y, hard),
        "sensitivity": recall_score(y, hard),
        "specificity": recall_score(1 - y, 1 - hard),
        "f1_macro": f1_score(y, hard, average="macro"),
        "loss": log_loss(y, p),
    }
    assert set(expected) == set(metric_names(BINARY))
    for m, value in expected.items():
        assert score(b, m) == pytest.approx(value), m
    y3 = np.arange(60) % 3
    y3[:6] = 0  # unbalanced, so balanced accuracy differs from accuracy
    q = rng.random((60, 3)) + np.eye(3)[y3] * 0.5
    q /= q.sum(1, keepdims=True)
    mc = _record("m", {**_base(60), "label": y3, "probabilities": q, "prediction": q.argmax(1)},
                 MULTICLASS)  # fmt: skip
    expected = {
        "roc_auc_macro": roc_auc_score(y3, q, multi_class="ovr"),
        "accuracy": accuracy_score(y3, q.argmax(1)),
        "balanced_accuracy": balanced_accuracy_score(y3, q.argmax(1)),
        "f1_macro": f1_score(y3, q.argmax(1), average="macro"),
        "loss": log_loss(y3, q),
        "auc:VIRAL": roc_auc_score(y3 == 2, q[:, 2]),
        "recall:BACTERIAL": recall_score(y3 == 1, q.argmax(1) == 1),
    }
    for m, value in expected.items():
        assert score(mc, m) == pytest.approx(value), m
    assert score(mc, "roc_auc") == pytest.approx(expected["roc_auc_macro"])  # the alias
    t = (rng.random((60, 3)) < 0.5).astype(float)
    t[::4, 1] = np.nan
    pl = rng.random((60, 3))
    rows = {**_base(60), "targets": t, "probabilities": pl, "predictions": (pl >= 0.5) * 1}
    ml = _record("l", rows, MULTILABEL)
    known = np.isfinite(t[:, 1])
    assert score(ml, "auc:Effusion") == pytest.approx(roc_auc_score(t[known, 1], pl[known, 1]))
    assert score(ml, "sensitivity:Effusion") == pytest.approx(
        recall_score(t[known, 1], pl[known, 1] >= 0.5)
    )


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_an_unknown_metric_is_one_line_naming_the_task_s(task: Task) -> None:
    with pytest.raises(XrayError) as exc:
        check_metric(task, "balanced_acc")
    message = str(exc.value)
    assert "\n" not in message and task.kind in message
    assert all(m in message for m in task.table_metrics)
    with pytest.raises(XrayError, match="not defined"):
        check_metric(task, "auc:NoSuchFinding")
    check_metric(task, task.primary_metric)


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_the_bootstrap_is_paired_the_same_resamples_for_both_arms(task: Task) -> None:
    """A run compared with itself: every resampled difference is 0, interval [0, 0], p = 1."""
    rng = np.random.default_rng(6)
    y = (
        (rng.random((40, 3)) < 0.5).astype(float)
        if task.multilabel
        else np.arange(40) % (2 if task.binary else 3)
    )
    run = _task_run(task, y, 0.3, rng)
    res = compare_pair([run], [run], task.primary_metric, n_boot=100)
    assert res.diff == 0 and (res.lo, res.hi) == (0, 0) and res.n_skipped == 0
    if not task.binary:
        assert res.p_value == 1


def _sklearn_primary(task: Task, y: np.ndarray, p: np.ndarray) -> float:
    """The task's primary metric by scikit-learn on rows (repeated rows = bootstrap weights);
    NaN where a class or finding of the test set is missing."""
    try:
        if task.binary:
            return float(roc_auc_score(y, p))
        if task.multiclass:
            return float(roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2]))
    except ValueError:
        return float("nan")
    aucs = []
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        if np.unique(y[known, j]).size < 2:
            return float("nan")
        aucs.append(roc_auc_score(y[known, j], p[known, j]))
    return float(np.mean(aucs))


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_the_interval_is_sklearn_on_the_same_patient_resamples_of_both_arms(task: Task) -> None:
    """Each resample draws whole patients once for both arms (engine.weight_blocks from the
    study's seed): the interval is the percentile interval of sklearn's differences on them."""
    from featurestore.compare import weight_blocks

    rng = np.random.default_rng(7)
    n = 30
    if task.multilabel:
        y = (rng.random((n, 3)) < 0.5).astype(float)
        y[::6, 2] = np.nan
    else:
        y = np.arange(n) % (2 if task.binary else 3)
    a, b = _task_run(task, y, 0.5, rng), _task_run(task, y, 0.2, rng)
    res = compare_pair([a], [b], task.primary_metric, n_boot=60, seed=3)
    col = "probability" if task.binary else "probabilities"
    pa, pb = a.predictions[col], b.predictions[col]
    diffs = []
    for _, w in weight_blocks(n, a.predictions["patient"], 60, 3):
        for row in w.astype(int):
            take = np.repeat(np.arange(n), row)
            diffs.append(
                _sklearn_primary(task, y[take], pa[take])
                - _sklearn_primary(task, y[take], pb[take])
            )
    valid = np.asarray(diffs)[np.isfinite(diffs)]
    assert res.n_skipped == 60 - valid.size
    assert (res.lo, res.hi) == pytest.approx(tuple(np.quantile(valid, [0.025, 0.975])))


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_the_metric_names_are_the_engine_s(task: Task) -> None:
    """Every name a question may take is a key the engine's kernel gives, and back."""
    from featurestore.compare import decisions, kernel, point_estimates, test_arrays

    rng = np.random.default_rng(8)
    y = (
        (rng.random((20, 3)) < 0.5).astype(float)
        if task.multilabel
        else np.arange(20) % (2 if task.binary else 3)
    )
    run = _task_run(task, y, 0.5, rng)
    arrays = test_arrays(run, task)
    keys = point_estimates(kernel(task, arrays, decisions(task, run)[0]), arrays.n)
    engine_names = {m if c is None else f"{m}:{c}" for m, c in keys}
    assert set(metric_names(task)) == engine_names


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_an_arm_no_better_than_chance_is_named_in_the_answer(task: Task) -> None:
    """Helper review: a question said frozen was significantly better than a fine-tuned arm
    whose macro ROC-AUC was 0.438 without a word; the answer now names the arm at chance, from
    its own interval on the same patient resamples (percentiles of its seed mean)."""
    rng = np.random.default_rng(7)
    n = 80
    if task.multilabel:
        y = (rng.random((n, 3)) < 0.5).astype(float)
    else:
        y = np.arange(n) % (2 if task.binary else 3)
    good, noise = [_task_run(task, y, 0.8, rng)], [_task_run(task, y, 0.0, rng)]
    (answer,) = answer_questions([("q", "frozen", "tuned", good, noise, "roc_auc")], n_boot=300)
    r = answer.result
    lo_b, hi_b = r.interval_b
    assert lo_b <= 0.5 and r.interval_a[0] > 0.5  # noise reaches chance, the signal does not
    assert lo_b <= r.estimate_b <= hi_b
    text = answer.statement()
    assert answer.significant and "no better than chance: tuned (" in text
    assert "frozen (" not in text.split("no better than chance")[1]
    # Other metrics' chance level depends on the class balance: no such line for them.
    other = next(m for m in metric_names(task) if "auc" not in m.split(":")[0])
    (res,) = answer_questions([("q", "frozen", "tuned", good, noise, other)], n_boot=100)
    assert res.result.at_chance("frozen", "tuned") == []


def test_the_chance_line_says_below_0_5_and_blames_no_one_without_a_difference() -> None:
    rng = np.random.default_rng(11)
    y = np.arange(80) % 2
    good = _task_run(BINARY, y, 0.8, rng)
    anti = _task_run(BINARY, y, 0.8, rng)
    anti.predictions["probability"] = 1.0 - anti.predictions["probability"]  # ranks backwards
    (a,) = answer_questions([("q", "good", "anti", [good], [anti], "roc_auc")], n_boot=300)
    assert "anti (roc_auc interval" in a.statement() and "lies below 0.5)" in a.statement()
    noise = [_task_run(BINARY, y, 0.0, rng) for _ in range(2)]
    (b,) = answer_questions([("q", "n1", "n2", [noise[0]], [noise[1]], "roc_auc")], n_boot=300)
    assert not b.significant and "no better than chance" in b.statement()
    assert "failed to learn" not in b.statement()
