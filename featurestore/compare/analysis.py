"""`xray compare`: run folders of any task -> one table with bootstrap intervals, paired tests.

One pipeline for binary, multi-class and multi-label runs: the task (`featurestore.tasks.Task`)
decides the metrics, the decision rules and the paired tests; the numbers come from
`compare.engine`, so every task gets the same intervals, reliability marks, seed groups,
verdict, warnings and external section.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare import engine
from featurestore.compare.bootstrap import paired_p_value, percentile_interval
from featurestore.compare.engine import THRESHOLD_FREE, Decision, MetricKey, TestArrays
from featurestore.compare.labels import run_labels, run_settings, seed_groups
from featurestore.compare.stats import clustered_delong_test, clustered_mcnemar, holm
from featurestore.config import CompareConfig
from featurestore.errors import XrayError
from featurestore.runs import RunRecord, load_run
from featurestore.tasks import Task

if TYPE_CHECKING:
    from featurestore.compare.verdict import Verdict

# The binary table's metrics and decision rows (kept as public names for scripts and the CLI).
TABLE_METRICS: tuple[str, ...] = Task.from_classes(["0", "1"]).table_metrics
THRESHOLDS: tuple[str, ...] = ("at_threshold", "at_0.5")


@dataclass(frozen=True)
class Interval:
    """A metric's point estimate and its bootstrap interval; NaN throughout where undefined."""

    estimate: float
    lo: float
    hi: float
    n_undefined: int = 0
    """Resamples on which the metric was undefined (a class not drawn), left out."""
    n_boot: int = 0
    """Resamples drawn (0: no bootstrap, e.g. an undefined estimate)."""
    reliable: bool = True
    """False when a class the metric conditions on has fewer than
    CompareConfig.min_units_per_class units, or > 1% of resamples were undefined."""

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.estimate))

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "lo": self.lo,
            "hi": self.hi,
            "n_undefined": self.n_undefined,
            "n_boot": self.n_boot,
            "reliable": self.reliable,
        }


UNDEFINED = Interval(float("nan"), float("nan"), float("nan"), reliable=False)


def replicate_interval(
    estimate: float | None,
    replicates: np.ndarray,
    *,
    alpha: float,
    fewest_units: int | None,
    min_units: int,
) -> Interval:
    """The percentile interval of a metric from its bootstrap replicates (B,), every task.

    `replicates` holds NaN where a resample left the metric undefined (a class not drawn);
    those are counted (`n_undefined`) and left out. `fewest_units`: the fewest units (patients,
    or images) of any class the metric conditions on, None when it conditions on none. The
    interval is unreliable when that is below `min_units` or more than 1% of the resamples were
    undefined. An undefined estimate gives an undefined interval with `n_boot` kept.
    """
    values = np.asarray(replicates, dtype=np.float64)
    n_boot, n_undefined = int(values.size), int((~np.isfinite(values)).sum())
    ends = percentile_interval(values, alpha)
    if estimate is None or not np.isfinite(estimate) or ends is None:
        return Interval(float("nan"), float("nan"), float("nan"), n_undefined, n_boot, False)
    lo, hi = ends
    few = fewest_units is not None and fewest_units < min_units
    reliable = not few and n_undefined <= 0.01 * n_boot
    return Interval(float(estimate), float(lo), float(hi), n_undefined, n_boot, reliable)


@dataclass(frozen=True)
class RunRow:
    """One run of the comparison: identity, cost and test metrics with intervals."""

    name: str
    label: str
    """Unique display name: `model mode[/head]`, the settings that differ, the seed."""
    config_label: str
    """The label without the seed: the configuration this run is a seed of."""
    settings: dict[str, Any]
    """The settings that decide the result (labels.run_settings), seed excluded."""
    model: str
    mode: str
    head: str
    seed: int
    weights: str
    trainable_params: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds_per_epoch: float
    extraction_seconds: float | None
    threshold: float | None
    """The validation-chosen threshold of a binary run; None for multi-class (argmax) and
    multi-label runs (one threshold per finding: `thresholds`)."""
    metrics: dict[str, dict[str, Interval]]
    """Decision rule (`at_threshold`, `at_0.5`; `argmax`) -> headline metric -> interval."""
    per_class: dict[str, dict[str, Interval]] = field(default_factory=dict)
    """Class or finding -> metric (`recall`, `auc`; `auc`, `sensitivity`, `specificity`) ->
    interval; empty for a binary run."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """A multi-label run's threshold per finding, chosen on validation."""
    confusion_matrix: list[list[int]] | None = None
    """Test, rows true, columns predicted, at the first decision rule (class order of the run;
    binary: negative class first); None for a multi-label run."""
    swept: str = "epoch"
    """What the history's rows are: "epoch", or "C" for the logreg head (one row per C)."""
    chosen: float | None = None
    """The swept value kept on validation, when not an epoch (the logreg head's C)."""

    def primary(self, metric: str) -> Interval:
        """The interval of a headline metric at the first decision rule."""
        return next(iter(self.metrics.values()))[metric]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("metrics", "per_class")}
        out["metrics"] = {
            t: {m: iv.as_dict() for m, iv in ms.items()} for t, ms in self.metrics.items()
        }
        out["per_class"] = {
            c: {m: iv.as_dict() for m, iv in ms.items()} for c, ms in self.per_class.items()
        }
        return out


@dataclass(frozen=True)
class PairedTest:
    """One paired test of two runs on the same test images."""

    name: str
    """`mcnemar` (decisions), `delong` (binary ROC-AUC), `auc_difference` (macro ROC-AUC by
    paired bootstrap), or `delong` of one finding (in `PairTest.per_finding`)."""
    metric: str
    """What it tests: `correct decisions`, `roc_auc` or `roc_auc_macro`."""
    method: str
    """The method with its source, in words."""
    p_value: float | None
    """None where the test is undefined (a class missing from the test set)."""
    difference: float | None = None
    """metric(A) - metric(B) (McNemar: the share of images only A gets right minus only B)."""
    lo: float | None = None
    hi: float | None = None
    """The interval of the difference where the test gives one (paired bootstrap)."""
    p_holm: float | None = None
    """p adjusted by Holm's method over its family (every pair's test of this name; for a
    finding, the pair's findings)."""
    result: Any = None
    """The underlying result (stats.McNemarResult, stats.DeLongResult), for its counts."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "result"}
        out["detail"] = None if self.result is None else self.result.as_dict()
        return out


@dataclass(frozen=True)
class PairTest:
    """The paired tests of two runs (the task's `paired_tests`), clustered by patient."""

    a: str
    b: str
    tests: dict[str, PairedTest]
    per_finding: dict[str, PairedTest | None] = field(default_factory=dict)
    """A multi-label pair: finding -> DeLong's test of its ROC-AUC (None where the finding has
    one class on test), Holm-adjusted over the findings."""

    def test(self, name: str) -> PairedTest | None:
        return self.tests.get(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "tests": {k: t.as_dict() for k, t in self.tests.items()},
            "per_finding": {
                f: None if t is None else t.as_dict() for f, t in self.per_finding.items()
            },
        }


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one configuration over distinct seeds: mean and spread of test metrics."""

    label: str
    seeds: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]
    runs: tuple[str, ...] = ()
    """Labels of the member runs."""


@dataclass
class Comparison:
    """Everything `xray compare` shows and writes, for runs of one task."""

    config: CompareConfig
    task: Task
    rows: list[RunRow]
    baseline: dict[str, Any]
    """The majority-class (single-label) or prevalence (multi-label) rule's test metrics:
    headline metric -> value, `per_class`, `rule` (one line)."""
    pairs: list[PairTest]
    seed_groups: list[SeedGroup]
    test_set: dict[str, Any]
    decisions: list[Decision] = field(default_factory=list)
    """The decision rules of the tables (their names key RunRow.metrics), first one first."""
    notes: list[str] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list, repr=False)
    external: list[dict[str, Any]] = field(default_factory=list)
    """Summaries of these runs' evaluations on other datasets (`xray evaluate`)."""
    tests: list[TestArrays] = field(default_factory=list, repr=False)
    """Each run's test arrays (`engine.test_arrays`), in `records` order."""
    dataset: dict[str, Any] = field(default_factory=dict)
    """name, path, fingerprint, images per split and class, synthetic (verdict.describe_dataset)."""
    warnings: list[str] = field(default_factory=list)
    """What a reader must see before any number (random weights, synthetic data)."""
    verdict: Verdict | None = None
    repeats: list[list[str]] = field(default_factory=list)
    """Labels of runs with identical settings and seed (the same command run twice), per group."""

    @property
    def metrics(self) -> tuple[str, ...]:
        """The headline metrics, in table order."""
        return self.task.table_metrics

    def arrays(self, index: int) -> TestArrays:
        """The test arrays of run `index`, in key order."""
        if self.tests:
            return self.tests[index]
        return engine.test_arrays(self.records[index], self.task)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.kind,
            "class_names": list(self.task.class_names),
            "decision_rule": self.task.decision_rule,
            "verdict": None if self.verdict is None else self.verdict.as_dict(),
            "warnings": self.warnings,
            "dataset": self.dataset,
            "config": self.config.__dict__,
            "test_set": self.test_set,
            "decisions": [d.__dict__ for d in self.decisions],
            "runs": [r.as_dict() for r in self.rows],
            "baseline": self.baseline,
            "pairs": [p.as_dict() for p in self.pairs],
            "seed_groups": [g.__dict__ for g in self.seed_groups],
            "notes": self.notes,
            "external": self.external,
        }


def runs_task(paths: Sequence[Path]) -> Task:
    """The one task of the run folders, from their config.json (`Task.from_record`).

    Raises XrayError when the runs mix tasks or label sets (compare runs of one task at a
    time), or when a folder is not a readable run.
    """
    return records_task([load_run(Path(p)) for p in paths])


def records_task(records: Sequence[RunRecord]) -> Task:
    """The one task of loaded runs; XrayError when they mix tasks or label sets, or are none."""
    tasks = [r.task for r in records]
    if not tasks:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    kinds = sorted({t.kind for t in tasks})
    if len(kinds) > 1:
        raise XrayError(
            f"the runs mix tasks ({', '.join(kinds)}): compare runs of one task at a time"
        )
    for t, r in zip(tasks[1:], records[1:], strict=True):
        if t.class_names != tasks[0].class_names:
            raise XrayError(
                f"{r.name} has {t.unit_noun} names {', '.join(t.class_names)}, "
                f"{records[0].name} has {', '.join(tasks[0].class_names)}: compare runs "
                "of one label set"
            )
    return tasks[0]


def compare_runs(
    paths: Sequence[Path],
    config: CompareConfig | None = None,
    *,
    evaluations: Path | None = None,
) -> Comparison:
    """Load run folders of one task, check they share a test set, compute intervals and tests.

    A metric that needs a class the test set lacks is undefined (NaN), with a note. Paired
    tests are clustered by patient (unless `config.resample` is images) and Holm-adjusted over
    the pairs, per test. `evaluations`: a folder of `xray evaluate` outputs; those of the
    compared runs are summed up in the report's external-validation section.
    Raises XrayError for no runs, unreadable runs, mixed tasks or different test sets (unless
    allowed).
    """
    config = config or CompareConfig()
    if not paths:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    records = [load_run(Path(p)) for p in paths]
    task = records_task(records)
    arrays = [engine.test_arrays(r, task) for r in records]
    notes: list[str] = []
    same_test = _check_same_test_set(records, arrays, task, allow=config.allow_different_test,
                                     notes=notes)  # fmt: skip
    labels, config_labels = run_labels([r.config for r in records], [r.name for r in records])
    patients = config.resample == "patients"
    scored = [
        _run_row(r, a, task, config, label, config_label, a.groups if patients else None)
        for r, a, label, config_label in zip(records, arrays, labels, config_labels, strict=True)
    ]
    groups = arrays[0].groups if patients else None  # one test set when pairs are tested
    rows = [row for row, _ in scored]
    pairs: list[PairTest] = []
    if same_test:
        for (i, a), (j, b) in itertools.combinations(enumerate(rows), 2):
            pairs.append(
                _pair_test(task, a, b, arrays[i], arrays[j], scored[i][1], scored[j][1],
                           config=config, groups=groups)
            )  # fmt: skip
        pairs = _holm_adjusted(pairs)
    test_set = _test_set(task, arrays[0], notes)
    baseline = _baseline(task, records[0], arrays[0], notes)
    run_groups, repeats = seed_groups([r.config for r in records])
    for members in repeats:
        notes.append(
            "Runs with identical settings and seed (repeats, not seed spread): "
            + ", ".join(rows[i].label for i in members)
        )
    from featurestore.compare.verdict import data_warnings, describe_dataset, make_verdict

    dataset = describe_dataset(records)
    cmp = Comparison(
        config,
        task,
        rows,
        baseline,
        pairs,
        _seed_groups(task, [[rows[i] for i in g] for g in run_groups]),
        test_set,
        engine.decisions(task, records[0]),
        notes,
        records,
        dataset=dataset,
        warnings=data_warnings(rows, dataset),
        tests=arrays,
        repeats=[[rows[i].label for i in members] for members in repeats],
    )
    cmp.verdict = make_verdict(cmp)
    if evaluations is not None:
        from featurestore.compare.external_report import find_evaluations

        cmp.external = find_evaluations(evaluations, {r.name: r.label for r in rows})
    return cmp


def _check_same_test_set(
    records: list[RunRecord],
    arrays: list[TestArrays],
    task: Task,
    *,
    allow: bool,
    notes: list[str],
) -> bool:
    """True when every run was evaluated on the same test images with the same labels."""
    ref = arrays[0]
    for other, arr in zip(records[1:], arrays[1:], strict=True):
        same = np.array_equal(arr.keys, ref.keys) and np.array_equal(
            arr.labels, ref.labels, equal_nan=task.multilabel
        )
        if not same:
            a = set(zip(ref.keys.tolist(), map(repr, ref.labels.tolist()), strict=True))
            b = set(zip(arr.keys.tolist(), map(repr, arr.labels.tolist()), strict=True))
            msg = (
                f"{other.name} and {records[0].name} were evaluated on different test sets "
                f"({len(a ^ b)} images differ)"
            )
            if not allow:
                raise XrayError(msg + "; pass --allow-different-test to compare them anyway")
            notes.append(msg + ": paired tests skipped")
            return False
    return True


def _run_row(
    record: RunRecord,
    arrays: TestArrays,
    task: Task,
    config: CompareConfig,
    label: str,
    config_label: str,
    groups: np.ndarray | None,
) -> tuple[RunRow, dict[str, dict[MetricKey, np.ndarray]]]:
    """The row of one run and its replicates per decision rule (paired with every other run's:
    the same resamples)."""
    units = groups if groups is not None else np.arange(arrays.n).astype(str)
    metrics: dict[str, dict[str, Interval]] = {}
    per_class: dict[str, dict[str, Interval]] = {}
    reps_by_decision: dict[str, dict[MetricKey, np.ndarray]] = {}
    first: dict[MetricKey, Interval] = {}
    rules = engine.decisions(task, record)
    for d in rules:
        score = engine.kernel(task, arrays, d)
        point = engine.point_estimates(score, arrays.n)
        reps = engine.replicates(score, arrays.n, groups=groups, n_boot=config.n_boot,
                                 seed=config.seed)  # fmt: skip
        reps_by_decision[d.name] = reps
        intervals: dict[MetricKey, Interval] = {}
        for key in point:
            if first and key[0] in THRESHOLD_FREE and key in first:
                intervals[key] = first[key]  # threshold-free: the same interval at every rule
                continue
            intervals[key] = replicate_interval(
                point[key],
                reps[key],
                alpha=config.alpha,
                fewest_units=engine.fewest_units(task, key, arrays, units),
                min_units=config.min_units_per_class,
            )
        first = first or intervals
        metrics[d.name] = {m: iv for (m, c), iv in intervals.items() if c is None}
        if not per_class:
            for (m, c), iv in intervals.items():
                if c is not None:
                    per_class.setdefault(c, {})[m] = iv
    d0 = rules[0]
    cfg, met = record.config, record.metrics
    store = cfg.get("store") or {}
    logreg = cfg.get("head") == "logreg" and "logreg_C" in cfg
    settings = run_settings(cfg)
    row = RunRow(
        name=record.name,
        label=label,
        config_label=config_label,
        settings=settings,
        model=str(cfg["model"]),
        mode=str(cfg["mode"]),
        head=str(cfg.get("head", "")),
        seed=int(cfg.get("seed", 0)),
        weights=str(settings.get("weights") or ""),
        trainable_params=int(cfg.get("trainable_params", 0)),
        best_epoch=int(met["best_epoch"]),
        epochs_run=int(met["epochs_run"]),
        stopped_early=bool(met.get("stopped_early", False)),
        seconds_per_epoch=_seconds_per_epoch(record),
        extraction_seconds=_optional_float(
            cfg.get("extraction_seconds", store.get("extraction_seconds"))
        ),
        threshold=float(d0.thresholds) if task.binary else None,  # type: ignore[arg-type]
        metrics=metrics,
        per_class=per_class,
        thresholds=(
            dict(zip(task.class_names, d0.thresholds, strict=True))  # type: ignore[arg-type]
            if task.multilabel
            else {}
        ),
        confusion_matrix=_confusion(task, arrays, d0),
        swept="C" if logreg else "epoch",
        chosen=float(cfg["logreg_C"]) if logreg else None,
    )
    return row, reps_by_decision


def _confusion(task: Task, arrays: TestArrays, decision: Decision) -> list[list[int]] | None:
    """Rows true, columns predicted (binary: negative class first); None for multi-label."""
    pred = engine.predicted(task, arrays, decision)
    if pred is None:
        return None
    y, k = arrays.labels, 2 if task.binary else task.n_outputs
    return [[int(np.sum((y == t) & (pred == q))) for q in range(k)] for t in range(k)]


def _seconds_per_epoch(record: RunRecord) -> float:
    """From timing.json, else the mean of history.csv's per-epoch seconds."""
    if "seconds_per_epoch" in record.timing:
        return float(record.timing["seconds_per_epoch"])
    seconds = record.history.get("seconds")
    return float(np.mean(seconds)) if seconds is not None and seconds.size else float("nan")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair_test(
    task: Task,
    ra: RunRow,
    rb: RunRow,
    a: TestArrays,
    b: TestArrays,
    reps_a: dict[str, dict[MetricKey, np.ndarray]],
    reps_b: dict[str, dict[MetricKey, np.ndarray]],
    *,
    config: CompareConfig,
    groups: np.ndarray | None,
) -> PairTest:
    """The task's paired tests of two runs (`Task.paired_tests`)."""
    clustered = groups is not None
    tests: dict[str, PairedTest] = {}
    d0 = next(iter(reps_a))
    if "mcnemar" in task.paired_tests:
        decision = Decision(d0, d0, ra.threshold)
        ca = engine.correct(task, a, decision)
        cb = engine.correct(task, b, replace(decision, thresholds=rb.threshold))
        assert ca is not None and cb is not None
        r = clustered_mcnemar(ca, cb, groups)
        tests["mcnemar"] = PairedTest(
            "mcnemar",
            "correct decisions",
            "McNemar on correctness"
            + (
                ", clustered by patient (Durkalski et al. 2003)" if clustered else " (McNemar 1947)"
            ),
            r.p_value,
            difference=(r.b - r.c) / a.n,
            result=r,
        )
    if "delong" in task.paired_tests:
        one_class = a.labels.min() == a.labels.max()
        dl = None if one_class else clustered_delong_test(a.labels, a.scores, b.scores, groups)
        tests["delong"] = PairedTest(
            "delong",
            "roc_auc",
            "DeLong's test of two correlated ROC-AUCs"
            + (
                ", clustered by patient (Obuchowski 1997)" if clustered else " (DeLong et al. 1988)"
            ),
            None if dl is None else dl.p_value,
            difference=None if dl is None else dl.diff,
            result=dl,
        )
    if not task.binary:
        tests["auc_difference"] = _auc_difference(
            ra, rb, reps_a[d0][("roc_auc_macro", None)], reps_b[d0][("roc_auc_macro", None)],
            config.alpha,
        )  # fmt: skip
    per_finding: dict[str, PairedTest | None] = {}
    if task.multilabel:
        per_finding = _per_finding_delong(task, a, b, groups)
    return PairTest(ra.label, rb.label, tests, per_finding)


def _auc_difference(
    ra: RunRow, rb: RunRow, rep_a: np.ndarray, rep_b: np.ndarray, alpha: float
) -> PairedTest:
    """Macro ROC-AUC of A minus B with the paired bootstrap percentile interval (both runs on
    the same resamples) and its two-sided p-value, Davison & Hinkley (1997, eq. 4.11): the
    share of resampled differences on the far side of 0, +1 so p is never exactly 0."""
    method = "paired bootstrap of the macro ROC-AUC difference (Davison & Hinkley 1997)"
    est_a, est_b = ra.primary("roc_auc_macro").estimate, rb.primary("roc_auc_macro").estimate
    ends = percentile_interval(rep_a - rep_b, alpha)
    if not (np.isfinite(est_a) and np.isfinite(est_b)) or ends is None:
        return PairedTest("auc_difference", "roc_auc_macro", method, None)
    p = paired_p_value(rep_a - rep_b)
    return PairedTest("auc_difference", "roc_auc_macro", method, p, est_a - est_b, *ends)


def _per_finding_delong(
    task: Task, a: TestArrays, b: TestArrays, groups: np.ndarray | None
) -> dict[str, PairedTest | None]:
    """DeLong's test per finding over its observed entries (clustered by patient when asked),
    Holm-adjusted over the findings tested."""
    out: dict[str, PairedTest | None] = {}
    for k, name in enumerate(task.class_names):
        mask = ~np.isnan(a.labels[:, k])
        yk = a.labels[mask, k].astype(np.int64)
        if not 0 < yk.sum() < yk.size:
            out[name] = None
            continue
        g = None if groups is None else groups[mask]
        r = clustered_delong_test(yk, a.scores[mask, k], b.scores[mask, k], g)
        out[name] = PairedTest("delong", "roc_auc", "DeLong per finding", r.p_value, r.diff,
                               result=r)  # fmt: skip
    tested = {f: t for f, t in out.items() if t is not None and t.p_value is not None}
    adjusted = holm([float(t.p_value) for t in tested.values()]) if tested else []  # type: ignore[arg-type]
    for (f, t), p in zip(tested.items(), adjusted, strict=True):
        out[f] = replace(t, p_holm=float(p))
    return out


def _holm_adjusted(pairs: list[PairTest]) -> list[PairTest]:
    """The pairs with Holm-adjusted p-values, per test name, over all pairs compared."""
    names = {n for p in pairs for n in p.tests}
    adjusted: dict[tuple[int, str], float] = {}
    for name in names:
        having = [
            i for i, p in enumerate(pairs) if name in p.tests and p.tests[name].p_value is not None
        ]
        ps = holm([pairs[i].tests[name].p_value for i in having])  # type: ignore[misc]
        adjusted.update({(i, name): float(q) for i, q in zip(having, ps, strict=True)})
    return [
        replace(
            p,
            tests={n: replace(t, p_holm=adjusted.get((i, n))) for n, t in p.tests.items()},
        )
        for i, p in enumerate(pairs)
    ]


def _test_set(task: Task, arrays: TestArrays, notes: list[str]) -> dict[str, Any]:
    """Images, patients and images per class (positives per finding) of the test set, with a
    note for every metric a missing class leaves undefined."""
    g = arrays.groups
    out: dict[str, Any] = {"images": arrays.n, "patients": len(set(g.tolist()))}
    if task.multilabel:
        y = arrays.labels
        out["positives"] = {f: int(np.sum(y[:, k] == 1)) for k, f in enumerate(task.class_names)}
        out["masked"] = {f: int(np.sum(np.isnan(y[:, k]))) for k, f in enumerate(task.class_names)}
        observed = (~np.isnan(y)).sum(0)
        one = [f for k, f in enumerate(task.class_names)
               if out["positives"][f] in (0, int(observed[k]))]  # fmt: skip
        if one:
            notes.append(
                f"Findings with one class on the test set ({', '.join(one)}): their ROC-AUC, "
                "sensitivity or specificity and DeLong test are undefined there (n/a), not 0; "
                "the macro ROC-AUC averages the other findings."
            )
        return out
    y = arrays.labels
    if task.binary:
        n_pos = int(y.sum())
        out.update(
            positives=n_pos,
            positive_patients=len(set(g[y == 1].tolist())),
            negative_patients=len(set(g[y == 0].tolist())),
        )
        if n_pos in (0, y.size):
            neg = task.class_names[1 - task.positive_index]
            present = task.positive_class if n_pos else neg
            lost = "sensitivity" if n_pos == 0 else "specificity"
            notes.append(
                f"The test set holds {present} images only: {lost}, F1 (macro), ROC-AUC and the "
                "DeLong test are undefined there (n/a), not 0."
            )
        return out
    out["per_class"] = {c: int(np.sum(y == k)) for k, c in enumerate(task.class_names)}
    absent = [c for c, n in out["per_class"].items() if n == 0]
    if absent:
        notes.append(
            f"The test set has no {', '.join(absent)} images: their recall and one-vs-rest "
            "ROC-AUC, the macro ROC-AUC and balanced accuracy over them are undefined (n/a)."
        )
    return out


def _baseline(
    task: Task, record: RunRecord, arrays: TestArrays, notes: list[str]
) -> dict[str, Any]:
    """The majority-class rule (single-label) or the prevalence rule (multi-label) scored
    through the same engine: headline metrics, `per_class`, `rule`, and for a single-label task
    `majority_class`. Train counts come from config.json's class_counts (else test's, noted)."""
    counts = (record.config.get("class_counts") or {}).get("train")
    names = task.class_names
    if task.multilabel:
        # Each finding is scored absent (the majority of every finding below half prevalence).
        scores = engine.baseline_scores(task, np.zeros(len(names)), arrays.n)
        thresholds: Any = tuple(0.5 for _ in names)
        rule = "prevalence rule: every finding scored as a constant (absent)"
        majority = None
    else:
        if counts:
            train = np.array([int(counts[c]) for c in names], dtype=np.float64)
        else:
            notes.append("train class counts not recorded: the majority class is taken from test")
            y_idx = (
                arrays.labels
                if task.multiclass
                else np.where(arrays.labels == 1, task.positive_index, 1 - task.positive_index)
            )
            train = np.bincount(y_idx, minlength=len(names)).astype(np.float64)
        scores = engine.baseline_scores(task, train, arrays.n)
        prior = train / train.sum()
        if task.binary:
            majority = (
                names[task.positive_index]
                if prior[task.positive_index] >= 0.5
                else (names[1 - task.positive_index])
            )
        else:
            majority = names[int(prior.argmax())]
        thresholds = 0.5 if task.binary else None
        rule = f"majority class: always {majority}"
    constant = TestArrays(arrays.keys, arrays.labels, scores, arrays.groups)
    d = Decision("baseline", rule, thresholds)
    point = engine.point_estimates(engine.kernel(task, constant, d), arrays.n)
    out: dict[str, Any] = {m: engine.as_float(v) for (m, c), v in point.items() if c is None}
    out["per_class"] = {}
    for (m, c), v in point.items():
        if c is not None:
            out["per_class"].setdefault(c, {})[m] = engine.as_float(v)
    out["rule"] = rule
    out["majority_class"] = majority
    return out


def _seed_groups(task: Task, groups: list[list[RunRow]]) -> list[SeedGroup]:
    """Mean and standard deviation across distinct seeds of one configuration (NaN-aware:
    a metric undefined for a run is left out of that metric's mean)."""
    out = []
    for members in groups:
        mean, std = {}, {}
        for m in task.table_metrics:
            v = np.array([r.primary(m).estimate for r in members])
            v = v[np.isfinite(v)]
            mean[m] = float(np.mean(v)) if v.size else float("nan")
            std[m] = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
        out.append(
            SeedGroup(
                members[0].config_label,
                tuple(r.seed for r in members),
                mean,
                std,
                tuple(r.label for r in members),
            )
        )
    return out
