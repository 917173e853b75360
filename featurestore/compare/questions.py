"""Declared questions: metric(arm a) - metric(arm b) on paired test predictions, any task.

Works from `RunRecord`s alone (`runs.load_run`) and scores every number with the one engine,
`compare.engine`: a run's metric is the engine's point estimate at its first decision rule
(`engine.decisions(task, record)[0]`: the validation-chosen threshold of a binary run, argmax
of a multi-class one, the per-finding thresholds of a multi-label one), and its resamples are
`engine.replicates` drawn from one seed over the same patients for every run of both arms, so
the differences are paired. Each arm may hold one run per seed; the statistic is the
difference of the seed means, seed s of a paired with seed s of b. The tests:

- binary ROC-AUC with one run per arm: the clustered DeLong test (Obuchowski 1997,
  `stats.clustered_delong_test`);
- everything else (other metrics, other tasks, several seeds): the paired patient-cluster
  bootstrap test of the difference (two-sided, from the share of resampled differences on the
  other side of 0).

The interval is always the paired patient-bootstrap percentile interval (Efron & Tibshirani
1993, ch. 13; whole patients drawn, Davison & Hinkley 1997, sec. 3.8). Holm's correction
(`stats.holm`) runs over the declared questions only. A number that is undefined (a metric
without both classes, runs on different test sets) stays NaN, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurestore.compare import engine
from featurestore.compare.bootstrap import paired_p_value, percentile_interval
from featurestore.compare.stats import clustered_delong_test, holm
from featurestore.errors import XrayError
from featurestore.runs import RunRecord
from featurestore.tasks import Task

# Per-class metrics of the engine, named `metric:class` in a question ("auc:Effusion").
PER_CLASS: dict[str, tuple[str, ...]] = {
    "binary": (),
    "multiclass": ("recall", "auc"),
    "multilabel": ("auc", "sensitivity", "specificity"),
}
LOWER_IS_BETTER = frozenset({"loss", "brier"})
CHANCE_AUC = frozenset({"roc_auc", "roc_auc_macro", "auc"})
"""Metrics whose chance level is 0.5 whatever the task and class balance (a constant ranks
nothing): an arm whose interval reaches it is named as no better than chance."""
# A study file names its metric before the data says the task: `roc_auc` is taken to mean
# the task's ROC-AUC, the macro one of a multi-class or multi-label task.
_ALIASES = {"roc_auc": "roc_auc_macro"}


_EXAMPLES = (
    Task("binary", ("negative", "positive"), 1),
    Task("multiclass", ("a", "b", "c"), 2),
    Task("multilabel", ("a",), 0),
)
METRIC_NAMES: tuple[str, ...] = tuple(
    sorted({m for t in _EXAMPLES for m in t.table_metrics} | set(_ALIASES))
)
"""Every headline metric a question may name, whatever its task (checked again per task when
the plan knows it: `check_metric`)."""
PER_CLASS_NAMES: tuple[str, ...] = tuple(sorted({m for ms in PER_CLASS.values() for m in ms}))


def metric_names(task: Task) -> tuple[str, ...]:
    """The metrics a question on `task` may name: its headline metrics (`Task.table_metrics`),
    then `metric:class` for each per-class (per-finding) metric of the engine."""
    per = tuple(f"{m}:{c}" for m in PER_CLASS[task.kind] for c in task.class_names)
    return (*task.table_metrics, *per)


def metric_key(task: Task, metric: str) -> engine.MetricKey:
    """The engine's key of a metric name: `roc_auc` -> ("roc_auc_macro", None) on a multi-class
    or multi-label task, `auc:Effusion` -> ("auc", "Effusion").

    Raises:
        XrayError: the task has no such metric (one line naming the ones it has).
    """
    if ":" in metric:
        name, cls = metric.split(":", 1)
        if name in PER_CLASS[task.kind] and cls in task.class_names:
            return name, cls
    else:
        name = metric if task.binary else _ALIASES.get(metric, metric)
        if name in task.table_metrics:
            return name, None
    per = (
        f"; per {task.unit_noun}: "
        + ", ".join(f"{m}:<{task.unit_noun}>" for m in PER_CLASS[task.kind])
        + f" ({task.unit_noun} one of {', '.join(task.class_names)})"
        if PER_CLASS[task.kind]
        else ""
    )
    raise XrayError(
        f"metric {metric!r} is not defined for {task.kind} runs; choose one of: "
        f"{', '.join(task.table_metrics)}{per}"
    )


def metric_label(task: Task, metric: str) -> str:
    """The name a report shows: the engine's (`roc_auc_macro`, `auc:Effusion`)."""
    name, cls = metric_key(task, metric)
    return name if cls is None else f"{name}:{cls}"


def check_metric(task: Task, metric: str) -> None:
    """Raise XrayError (one line) when `task` has no metric `metric`; see `metric_key`."""
    metric_key(task, metric)


@dataclass(frozen=True)
class _Scored:
    """One run's test rows (`engine.test_arrays`) and its kernel at its first decision rule."""

    arrays: engine.TestArrays
    kernel: engine.Kernel


def _scored(record: RunRecord, task: Task) -> _Scored:
    arrays = engine.test_arrays(record, task)
    rule = engine.decisions(task, record)[0]
    return _Scored(arrays, engine.kernel(task, arrays, rule))


def score(record: RunRecord, metric: str) -> float:
    """metric on the run's whole test set: the engine's point estimate (NaN where undefined).

    Raises:
        XrayError: the metric is not defined for the run's task.
    """
    task = record.task
    key = metric_key(task, metric)
    s = _scored(record, task)
    with np.errstate(invalid="ignore", divide="ignore"):
        return engine.point_estimates(s.kernel, s.arrays.n)[key]


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
    interval_a: tuple[float, float] = (float("nan"), float("nan"))
    """a's own percentile interval (of its seed mean) from the same patient resamples."""
    interval_b: tuple[float, float] = (float("nan"), float("nan"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN becomes None (undefined)."""
        return {k: _none(v) for k, v in asdict(self).items()}

    def at_chance(self, a: str, b: str) -> list[str]:
        """`name (ROC-AUC interval 0.31 to 0.55 includes 0.5)` for each side whose ROC-AUC
        interval reaches 0.5 or below: a model that ranks no better than chance. [] for other
        metrics, whose chance level depends on the class balance."""
        if self.metric.split(":")[0] not in CHANCE_AUC:
            return []
        out = []
        for name, (lo, hi) in ((a, self.interval_a), (b, self.interval_b)):
            if np.isfinite(lo) and lo <= 0.5:
                where = "includes 0.5" if hi >= 0.5 else "lies below 0.5"
                out.append(f"{name} ({self.metric} interval {fmt(lo)} to {fmt(hi)} {where})")
        return out


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
    `n_boot` resamples, `engine.weight_blocks` drawn from `seed`, for every run), the metric is
    averaged over each arm's runs per resample, and the percentile interval of the difference
    is taken. An undefined estimate (or a difference undefined on every resample) gives NaN
    numbers and a `note` saying why, not an exception. `metric`: a name of `metric_names`.

    Raises:
        XrayError: no runs, unequal numbers of runs, runs of different tasks, or a metric the
            task does not have.
    """
    if not runs_a or len(runs_a) != len(runs_b):
        raise XrayError(
            f"a paired comparison needs the same number of runs on each side, got "
            f"{len(runs_a)} and {len(runs_b)}"
        )
    runs = (*runs_a, *runs_b)
    kinds = {r.task.kind for r in runs}
    if len(kinds) != 1:
        raise XrayError(f"the runs compared are of different tasks ({', '.join(sorted(kinds))})")
    task = runs_a[0].task
    key = metric_key(task, metric)
    label = metric_label(task, metric)
    scored = [_scored(r, task) for r in runs]
    ref = scored[0].arrays
    k = len(runs_a)
    for r, s in zip(runs, scored, strict=True):
        arr = s.arrays
        same = np.array_equal(arr.keys, ref.keys) and np.array_equal(arr.groups, ref.groups)
        if not same or not np.array_equal(arr.labels, ref.labels, equal_nan=True):
            return _undefined(
                label, task.kind, f"{r.name} was tested on other images than {runs_a[0].name}: "
                "paired statistics are undefined", k, alpha,
            )  # fmt: skip
    n = ref.n
    with np.errstate(invalid="ignore", divide="ignore"):
        per_run = [engine.point_estimates(s.kernel, n)[key] for s in scored]
    est_a, est_b = float(np.mean(per_run[:k])), float(np.mean(per_run[k:]))
    pairs = list(zip(per_run[:k], per_run[k:], strict=True))
    n_units = int(np.unique(ref.groups).size)
    if not (np.isfinite(est_a) and np.isfinite(est_b)):
        out = _undefined(label, task.kind, f"{label} is undefined on this test set", k, alpha)
        return PairResult(**{**asdict(out), "estimate_a": est_a, "estimate_b": est_b,
                             "n_images": n, "n_patients": n_units, "per_run": pairs})  # fmt: skip
    # The same seed and patients for every run: resample b of each run is the same draw.
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.stack(
            [
                engine.replicates(s.kernel, n, groups=ref.groups, n_boot=n_boot, seed=seed)[key]
                for s in scored
            ]
        )  # (2k, n_boot)
    diffs = reps[:k].mean(0) - reps[k:].mean(0)  # (n_boot,), NaN where a run's is undefined
    # Each arm's own interval from the same resamples (to name an arm no better than chance).
    sides = [
        percentile_interval(reps[:k].mean(0), alpha),
        percentile_interval(reps[k:].mean(0), alpha),
    ]
    nan2 = (float("nan"), float("nan"))
    n_valid = int(np.isfinite(diffs).sum())
    diff = est_a - est_b
    ends, p_boot = percentile_interval(diffs, alpha), paired_p_value(diffs)
    lo, hi = ends or (float("nan"), float("nan"))
    undefined = "the difference was undefined on every bootstrap resample (too few patients)"
    note = "" if ends else undefined
    if task.binary and key == ("roc_auc", None) and k == 1:
        a, b = scored[0].arrays.scores, scored[1].arrays.scores
        delong = clustered_delong_test(ref.labels, a, b, groups=ref.groups)
        p_value, test = delong.p_value, "clustered DeLong test (Obuchowski 1997)"
    else:
        p_value = p_boot
        test = "paired patient-cluster bootstrap test" + (
            f" of the difference of {k}-seed means" if k > 1 else ""
        )
    return PairResult(
        label, task.kind, est_a, est_b, diff, lo, hi, float(p_value), test, k,
        n, n_units, n_boot, n_boot - n_valid, alpha, note, pairs,
        sides[0] or nan2, sides[1] or nan2,
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
        chance = r.at_chance(self.a, self.b)
        if chance:
            verdict += f"; no better than chance: {'; '.join(chance)}"
            if self.significant:
                verdict += (
                    ", so the difference says that a model failed to learn, not which approach "
                    "is better"
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
