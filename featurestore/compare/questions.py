"""Declared questions: metric(arm a) - metric(arm b) on paired test predictions, any task.

Works from `RunRecord`s alone (`runs.load_run`): the test rows of predictions.csv, paired by
image key and resampled by patient. Each arm may hold one run per seed; the statistic is the
difference of the seed means, seed s of a paired with seed s of b, every run scored on the
same patient resamples. The tests:

- binary ROC-AUC with one run per arm: the clustered DeLong test (Obuchowski 1997,
  `stats.clustered_delong_test`);
- everything else (other metrics, other tasks, several seeds): the paired patient-cluster
  bootstrap test of the difference (the p-value of `bootstrap.paired_bootstrap`).

The interval is always the paired patient-bootstrap percentile interval. Holm's correction
(`stats.holm`) runs over the declared questions only. A number that is undefined (a metric
without both classes, runs on different test sets) stays NaN, never 0.

The metrics are one mapping, `METRICS[task][metric](y, p) -> float`, so another engine can be
put in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from featurestore.compare.bootstrap import BOOT_METRICS, BootMetric
from featurestore.compare.metrics import PROB_EPS
from featurestore.compare.stats import clustered_delong_test, holm
from featurestore.errors import XrayError
from featurestore.runs import RunRecord

Metric = Callable[[np.ndarray, np.ndarray], float]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC, ties 1/2 (sklearn's roc_auc_score); NaN without both classes."""
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return float("nan")
    ranks = sps.rankdata(s)
    return float((ranks[pos].sum() - m * (m + 1) / 2) / (m * n))


def _multiclass_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC over the C classes; NaN if a class is absent. y (N,), p (N, C)."""
    return float(np.mean([_auc((y == c).astype(np.int64), p[:, c]) for c in range(p.shape[1])]))


def _multiclass_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Share of images whose argmax class is the label. y (N,), p (N, C)."""
    return float(np.mean(np.argmax(p, axis=1) == y))


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2tp / (2tp + fp + fn); NaN for a class without images (undefined)."""
    den = 2 * tp + fp + fn
    out = np.divide(2 * tp, den, out=np.zeros(tp.shape), where=den > 0)
    return np.where(support > 0, out, np.nan)


def _multiclass_f1(y: np.ndarray, p: np.ndarray) -> float:
    """Macro F1 of the argmax prediction; NaN when a class has no image. y (N,), p (N, C)."""
    c = p.shape[1]
    pred = np.argmax(p, axis=1)
    tp = np.bincount(y[pred == y], minlength=c).astype(float)
    support = np.bincount(y, minlength=c).astype(float)
    predicted = np.bincount(pred, minlength=c).astype(float)
    return float(np.mean(_f1(tp, predicted - tp, support - tp, support)))


def _multiclass_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean cross-entropy -log p[label]. y (N,), p (N, C)."""
    q = np.clip(p[np.arange(y.size), y], PROB_EPS, 1.0)
    return float(-np.mean(np.log(q)))


def _per_label(
    y: np.ndarray, p: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], float]
) -> float:
    """Mean of fn over labels where it is defined; masked (NaN) targets left out. (N, L)."""
    values = []
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        v = fn(y[known, j].astype(np.int64), p[known, j]) if known.any() else float("nan")
        if np.isfinite(v):
            values.append(v)
    return float(np.mean(values)) if values else float("nan")


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (sklearn's average_precision_score); NaN without both classes."""
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(BootMetric("pr_auc")(y.astype(np.float64), s))


def _binary_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """F1 of the positive class of 0/1 predictions; NaN without positives."""
    tp = float(np.sum((pred == 1) & (y == 1)))
    fp, fn = float(np.sum((pred == 1) & (y == 0))), float(np.sum((pred == 0) & (y == 1)))
    return float(_f1(np.array([tp]), np.array([fp]), np.array([fn]), np.array([tp + fn]))[0])


METRICS: dict[str, dict[str, Metric]] = {
    # Binary: y in {0, 1} (1 = the positive class), p = P(positive) (N,); the thresholded
    # metrics get p = the run's 0/1 predictions at its validation threshold.
    "binary": {name: BootMetric(name) for name in BOOT_METRICS},
    # Multi-class: y (N,) class indices, p (N, C) probabilities.
    "multiclass": {
        "roc_auc": _multiclass_auc,
        "accuracy": _multiclass_accuracy,
        "f1_macro": _multiclass_f1,
        "loss": _multiclass_loss,
    },
    # Multi-label: y (N, L) 1/0 with NaN masked, p (N, L) probabilities (f1: 0/1 predictions
    # at each label's validation threshold).
    "multilabel": {
        "roc_auc": lambda y, p: _per_label(y, p, _auc),
        "pr_auc": lambda y, p: _per_label(y, p, _ap),
        "f1_macro": lambda y, p: _per_label(y, p, _binary_f1),
    },
}
"""task -> metric -> fn(y, p) -> float (NaN where undefined)."""

THRESHOLDED: dict[str, frozenset[str]] = {
    "binary": frozenset({"accuracy", "f1_macro", "f1_positive", "sensitivity", "specificity"}),
    "multiclass": frozenset(),
    "multilabel": frozenset({"f1_macro"}),
}
"""Metrics scored on the run's predictions (its decision rule) instead of its probabilities."""

LOWER_IS_BETTER = frozenset({"loss", "brier"})
METRIC_NAMES: tuple[str, ...] = tuple(sorted({m for task in METRICS.values() for m in task}))


def run_task(record: RunRecord) -> str:
    """binary, multiclass or multilabel: the run's `Task` as its config.json records it.

    Raises:
        XrayError: the run's config.json names no classes.
    """
    return record.task.kind


@dataclass(frozen=True)
class ScoredArrays:
    """One run's test rows sorted by image key: what a metric is scored on."""

    keys: np.ndarray
    patients: np.ndarray
    y: np.ndarray
    """Binary (N,) 1 = positive; multi-class (N,) indices; multi-label (N, L), NaN masked."""
    p: np.ndarray
    """The scores the metric takes (see METRICS)."""


def scored_arrays(record: RunRecord, metric: str) -> ScoredArrays:
    """The run's test rows, sorted by key, as the arrays `METRICS[task][metric]` takes.

    Raises:
        XrayError: the metric is not defined for the run's task.
    """
    task = run_task(record)
    if metric not in METRICS[task]:
        raise XrayError(
            f"metric {metric!r} is not defined for {task} runs; "
            f"choose one of: {', '.join(METRICS[task])}"
        )
    test = record.split_predictions("test")
    order = np.argsort(test["key"], kind="stable")
    thresholded = metric in THRESHOLDED[task]
    if task == "binary":
        positive = record.task.positive_index
        y = (test["label"][order] == positive).astype(np.float64)
        p = (
            (test["prediction"][order] == positive).astype(np.float64)
            if thresholded
            else test["probability"][order]
        )
    elif task == "multiclass":
        y, p = test["label"][order], test["probabilities"][order]
    else:
        y = test["targets"][order]
        p = (
            test["predictions"][order].astype(np.float64)
            if thresholded
            else test["probabilities"][order]
        )
    return ScoredArrays(test["key"][order], test["patient"][order], y, p)


def score(record: RunRecord, metric: str) -> float:
    """metric on the run's whole test set (NaN where undefined)."""
    arrays = scored_arrays(record, metric)
    return float(METRICS[run_task(record)][metric](arrays.y, arrays.p))


@dataclass(frozen=True)
class PairResult:
    """metric(a) - metric(b) over paired runs (seed means), its interval and test."""

    metric: str
    task: str
    estimate_a: float
    """Mean over a's runs of the metric on the whole test set (NaN: undefined)."""
    estimate_b: float
    diff: float
    lo: float
    hi: float
    p_value: float
    test: str
    """Which test gave p_value, in words."""
    n_runs: int
    """Runs per arm (seeds) paired."""
    n_images: int
    n_patients: int
    n_boot: int
    n_skipped: int
    """Resamples where the difference was undefined, left out of interval and test."""
    alpha: float
    note: str = ""
    """Why a number is undefined (empty when all are defined)."""
    per_run: list[tuple[float, float]] = field(default_factory=list)
    """(metric a, metric b) of each seed pair."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN becomes None (undefined)."""
        return {k: _none(v) for k, v in asdict(self).items()}


def _none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_none(v) for v in value]
    if isinstance(value, tuple):
        return [_none(v) for v in value]
    return value


def _undefined(metric: str, task: str, note: str, n_runs: int, alpha: float) -> PairResult:
    nan = float("nan")
    return PairResult(metric, task, nan, nan, nan, nan, nan, nan, "none", n_runs, 0, 0, 0, 0,
                      alpha, note)  # fmt: skip


def compare_pair(
    runs_a: Sequence[RunRecord],
    runs_b: Sequence[RunRecord],
    metric: str,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairResult:
    """Paired comparison of two arms' runs (runs_a[i] pairs with runs_b[i], e.g. the same seed).

    Every run's test rows are matched by image key; whole patients are resampled (the same
    `n_boot` resamples, drawn from `seed`, for every run), the metric is averaged over each
    arm's runs per resample, and the percentile interval of the difference is taken. An
    undefined estimate (or a difference undefined on every resample) gives NaN numbers and a
    `note` saying why, not an exception.

    Raises:
        XrayError: no runs, unequal numbers of runs, runs of different tasks, or a metric the
            task does not have.
    """
    if not runs_a or len(runs_a) != len(runs_b):
        raise XrayError(
            f"a paired comparison needs the same number of runs on each side, got "
            f"{len(runs_a)} and {len(runs_b)}"
        )
    tasks = {run_task(r) for r in (*runs_a, *runs_b)}
    if len(tasks) != 1:
        raise XrayError(f"the runs compared are of different tasks ({', '.join(sorted(tasks))})")
    task = tasks.pop()
    arrays = [scored_arrays(r, metric) for r in (*runs_a, *runs_b)]
    ref = arrays[0]
    for r, arr in zip((*runs_a, *runs_b), arrays, strict=True):
        same = np.array_equal(arr.keys, ref.keys) and np.array_equal(arr.patients, ref.patients)
        if not same or not np.array_equal(arr.y, ref.y, equal_nan=True):
            return _undefined(
                metric, task, f"{r.name} was tested on other images than {runs_a[0].name}: "
                "paired statistics are undefined", len(runs_a), alpha,
            )  # fmt: skip
    fn = METRICS[task][metric]
    k = len(runs_a)
    scores = [arr.p for arr in arrays]
    per_run = [float(fn(ref.y, s)) for s in scores]
    est_a, est_b = float(np.mean(per_run[:k])), float(np.mean(per_run[k:]))
    pairs = list(zip(per_run[:k], per_run[k:], strict=True))
    _, unit = np.unique(ref.patients, return_inverse=True)
    n_units = int(unit.max()) + 1
    if not (np.isfinite(est_a) and np.isfinite(est_b)):
        out = _undefined(metric, task, f"{metric} is undefined on this test set", k, alpha)
        return PairResult(**{**asdict(out), "estimate_a": est_a, "estimate_b": est_b,
                             "n_images": int(ref.keys.size), "n_patients": n_units,
                             "per_run": pairs})  # fmt: skip
    members = [np.flatnonzero(unit == u) for u in range(n_units)]
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        take = np.concatenate([members[u] for u in rng.integers(0, n_units, n_units)])
        yb = ref.y[take]
        values = [fn(yb, s[take]) for s in scores]
        diffs[b] = np.mean(values[:k]) - np.mean(values[k:])
    valid = diffs[np.isfinite(diffs)]
    diff = est_a - est_b
    note, lo, hi, p_boot = "", float("nan"), float("nan"), float("nan")
    if valid.size == 0:
        note = "the difference was undefined on every bootstrap resample (too few patients)"
    else:
        lo, hi = (float(v) for v in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
        tail = min(np.sum(valid <= 0), np.sum(valid >= 0)) + 1
        p_boot = min(1.0, 2 * float(tail) / (valid.size + 1))
    if task == "binary" and metric == "roc_auc" and k == 1:
        delong = clustered_delong_test(ref.y, scores[0], scores[1], groups=ref.patients)
        p_value, test = delong.p_value, "clustered DeLong test (Obuchowski 1997)"
    else:
        p_value = p_boot
        test = "paired patient-cluster bootstrap test" + (
            f" of the difference of {k}-seed means" if k > 1 else ""
        )
    return PairResult(
        metric, task, est_a, est_b, diff, lo, hi, float(p_value), test, k,
        int(ref.keys.size), n_units, n_boot, int(n_boot - valid.size), alpha, note, pairs,
    )  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """One declared question's answer: the pair's statistics and its Holm-adjusted p."""

    name: str
    a: str
    b: str
    result: PairResult
    holm_p: float
    """Holm over the declared questions with a defined p-value; NaN where p is undefined."""
    family: int
    """How many questions the correction ran over."""

    @property
    def significant(self) -> bool | None:
        """holm_p < alpha; None when undefined."""
        return None if not np.isfinite(self.holm_p) else bool(self.holm_p < self.result.alpha)

    def statement(self) -> str:
        """The answer in one sentence."""
        r = self.result
        if not np.isfinite(r.diff):
            return f"Undefined: {r.note or 'the difference could not be computed'}."
        ci = f"{100 * (1 - r.alpha):g}% CI {fmt(r.lo, signed=True)} to {fmt(r.hi, signed=True)}"
        numbers = (
            f"{self.a} - {self.b} = {fmt(r.diff, signed=True)} in {r.metric} ({ci}); "
            f"{r.test}: p = {fmt_p(r.p_value)}, Holm-adjusted over {self.family} "
            f"question{'s' if self.family != 1 else ''}: p = {fmt_p(self.holm_p)}"
        )
        if self.significant is None:
            return f"{numbers}. Undefined: {r.note or 'no p-value'}."
        better = (r.diff < 0) if r.metric in LOWER_IS_BETTER else (r.diff > 0)
        if self.significant:
            verdict = (
                f"{self.a if better else self.b} is better than {self.b if better else self.a} "
                f"in {r.metric} (significant at alpha = {r.alpha:g} after Holm)"
            )
        else:
            verdict = (
                f"no evidence of a difference in {r.metric} at alpha = {r.alpha:g} after Holm "
                "(not a proof that they are equal)"
            )
        return f"{numbers}. {verdict[0].upper()}{verdict[1:]}."

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN becomes None."""
        return {
            "name": self.name,
            "a": self.a,
            "b": self.b,
            **self.result.as_dict(),
            "holm_p": _none(self.holm_p),
            "family": self.family,
            "significant": self.significant,
            "statement": self.statement(),
        }


def answer_questions(
    questions: Sequence[tuple[str, str, str, Sequence[RunRecord], Sequence[RunRecord], str]],
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[Answer]:
    """(name, a, b, runs of a, runs of b, metric) per question -> answers, Holm over them all.

    The family is the declared questions whose p-value is defined; a question without one keeps
    holm_p NaN (undefined) and does not count.
    """
    results = [
        compare_pair(ra, rb, metric, n_boot=n_boot, alpha=alpha, seed=seed)
        for _, _, _, ra, rb, metric in questions
    ]
    defined = [i for i, r in enumerate(results) if np.isfinite(r.p_value)]
    adjusted = holm([results[i].p_value for i in defined]) if defined else []
    holm_p = dict(zip(defined, adjusted, strict=True))
    return [
        Answer(name, a, b, r, float(holm_p.get(i, float("nan"))), len(defined))
        for i, ((name, a, b, *_), r) in enumerate(zip(questions, results, strict=True))
    ]


def fmt(value: float, *, signed: bool = False, digits: int = 3) -> str:
    """A number for a report: `undefined` for NaN/None, never 0."""
    if value is None or not np.isfinite(value):
        return "undefined"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(value: float) -> str:
    """A p-value for a report (`< 0.001` below it; `undefined` for NaN)."""
    if value is None or not np.isfinite(value):
        return "undefined"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
