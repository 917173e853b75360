"""`xray compare`: run folders -> one table with bootstrap intervals, paired tests, a report."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare.bootstrap import BootMetric, bootstrap_interval
from featurestore.compare.labels import run_labels, run_settings, seed_groups
from featurestore.compare.stats import (
    DeLongResult,
    McNemarResult,
    clustered_delong_test,
    clustered_mcnemar,
    holm,
    majority_baseline,
)
from featurestore.config import CompareConfig
from featurestore.errors import XrayError
from featurestore.runs import RunRecord, load_run

if TYPE_CHECKING:
    from featurestore.compare.verdict import Verdict

# The metrics of the table, in order; each gets a bootstrap interval.
TABLE_METRICS: tuple[str, ...] = (
    "loss",
    "accuracy",
    "f1_macro",
    "sensitivity",
    "specificity",
    "roc_auc",
)
# One order everywhere (terminal, report, CSV): the validation-chosen threshold first.
THRESHOLDS: tuple[str, ...] = ("at_threshold", "at_0.5")
# Metrics that do not depend on the decision threshold (computed once, shown at both).
THRESHOLD_FREE = frozenset({"loss", "roc_auc", "pr_auc", "brier"})
# The classes (1 positive, 0 negative) a metric conditions on: undefined without them, and
# unreliable with only a few patients of them.
CONDITIONS_ON: dict[str, tuple[int, ...]] = {
    "sensitivity": (1,),
    "f1_positive": (1,),
    "specificity": (0,),
    "f1_macro": (0, 1),
    "roc_auc": (0, 1),
    "pr_auc": (0, 1),
}


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
    undefined (as the binary path). An undefined estimate gives UNDEFINED with `n_boot` kept.
    """
    values = np.asarray(replicates, dtype=np.float64)
    finite = np.isfinite(values)
    n_boot, n_undefined = int(values.size), int((~finite).sum())
    if estimate is None or not np.isfinite(estimate) or not finite.any():
        return Interval(float("nan"), float("nan"), float("nan"), n_undefined, n_boot, False)
    lo, hi = np.quantile(values[finite], [alpha / 2, 1 - alpha / 2])
    few = fewest_units is not None and fewest_units < min_units
    reliable = not few and n_undefined <= 0.01 * n_boot
    return Interval(float(estimate), float(lo), float(hi), n_undefined, n_boot, reliable)


def units_per_class(labels: np.ndarray, units: np.ndarray, n_classes: int) -> list[int]:
    """Distinct units (patients or images) holding each class: labels (N,), units (N,)."""
    return [len(set(units[labels == k].tolist())) for k in range(n_classes)]


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
    threshold: float
    metrics: dict[str, dict[str, Interval]]
    """"at_0.5" / "at_threshold" -> metric -> interval."""
    swept: str = "epoch"
    """What the history's rows are: "epoch", or "C" for the logreg head (one row per C)."""
    chosen: float | None = None
    """The swept value kept on validation, when not an epoch (the logreg head's C)."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        out["metrics"] = {
            t: {m: iv.as_dict() for m, iv in ms.items()} for t, ms in self.metrics.items()
        }
        return out


@dataclass(frozen=True)
class PairTest:
    """Paired tests of two runs on the same test images, clustered by patient."""

    a: str
    b: str
    mcnemar: McNemarResult
    """On correctness at each run's validation-chosen threshold (stats.clustered_mcnemar)."""
    delong: DeLongResult | None
    """Clustered DeLong (stats.clustered_delong_test); None when the test set has one class."""
    mcnemar_p_holm: float = float("nan")
    """McNemar p adjusted by Holm over all pairs' McNemar tests."""
    delong_p_holm: float | None = None
    """DeLong p adjusted by Holm over all pairs' DeLong tests."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "mcnemar": {**self.mcnemar.as_dict(), "p_holm": self.mcnemar_p_holm},
            "delong": None
            if self.delong is None
            else {**self.delong.as_dict(), "p_holm": self.delong_p_holm},
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
    """Everything `xray compare` shows and writes."""

    config: CompareConfig
    rows: list[RunRow]
    baseline: dict[str, Any]
    pairs: list[PairTest]
    seed_groups: list[SeedGroup]
    test_set: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list, repr=False)
    external: list[dict[str, Any]] = field(default_factory=list)
    """Summaries of these runs' evaluations on other datasets (`xray evaluate`)."""
    dataset: dict[str, Any] = field(default_factory=dict)
    """name, path, fingerprint, images per split and class, synthetic (data.describe)."""
    warnings: list[str] = field(default_factory=list)
    """What a reader must see before any number (random weights, synthetic data)."""
    verdict: Verdict | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": None if self.verdict is None else self.verdict.as_dict(),
            "warnings": self.warnings,
            "dataset": self.dataset,
            "config": self.config.__dict__,
            "test_set": self.test_set,
            "runs": [r.as_dict() for r in self.rows],
            "baseline": self.baseline,
            "pairs": [p.as_dict() for p in self.pairs],
            "seed_groups": [g.__dict__ for g in self.seed_groups],
            "notes": self.notes,
            "external": self.external,
        }


def compare_runs(
    paths: Sequence[Path],
    config: CompareConfig | None = None,
    *,
    evaluations: Path | None = None,
) -> Comparison:
    """Load run folders, check they share a test set, compute intervals and paired tests.

    A test set holding one class is compared too: the metrics that need the missing class
    (specificity or sensitivity, the macro F1, the AUCs, DeLong) are undefined (NaN / None)
    and a note says why. Paired tests are clustered by patient and Holm-adjusted over pairs.
    `evaluations`: a folder of `xray evaluate` outputs; those of the compared runs are summed
    up in the report's external-validation section.
    Raises XrayError for no runs, unreadable runs or different test sets (unless allowed).
    """
    config = config or CompareConfig()
    if not paths:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    records = [load_run(Path(p)) for p in paths]
    notes: list[str] = []
    same_test = _check_same_test_set(records, allow=config.allow_different_test, notes=notes)
    labels, config_labels = run_labels([r.config for r in records], [r.name for r in records])
    rows = [
        _run_row(r, config, label, config_label)
        for r, label, config_label in zip(records, labels, config_labels, strict=True)
    ]
    ref = records[0]
    y_ref, _, groups_ref = _test_arrays(ref)
    baseline = majority_baseline(
        _train_labels(ref, notes),
        ref.split_predictions("test")["label"],
        class_names=tuple(ref.config["class_names"]),
        positive_index=_positive_index(ref),
    )
    pairs: list[PairTest] = []
    if same_test:
        unit_groups = groups_ref if config.resample == "patients" else None
        for (ra, a), (rb, b) in itertools.combinations(zip(rows, records, strict=True), 2):
            pairs.append(_pair_test(ra, a, rb, b, clustered=unit_groups is not None))
        pairs = _holm_adjusted(pairs)
    n_pat = len(set(groups_ref.tolist()))
    n_pos = int(y_ref.sum())
    test_set = {
        "images": int(y_ref.size),
        "positives": n_pos,
        "patients": n_pat,
        "positive_patients": len(set(groups_ref[y_ref == 1].tolist())),
        "negative_patients": len(set(groups_ref[y_ref == 0].tolist())),
    }
    if n_pos in (0, y_ref.size):
        names = list(ref.config["class_names"])
        present = ref.config["positive_class"] if n_pos else names[1 - _positive_index(ref)]
        lost = "sensitivity" if n_pos == 0 else "specificity"
        notes.append(
            f"The test set holds {present} images only: {lost}, F1 (macro), ROC-AUC and the "
            "DeLong test are undefined there (n/a), not 0."
        )
    groups, repeats = seed_groups([r.config for r in records])
    for members in repeats:
        notes.append(
            "Runs with identical settings and seed (repeats, not seed spread): "
            + ", ".join(rows[i].label for i in members)
        )
    from featurestore.compare.verdict import data_warnings, describe_dataset, make_verdict

    dataset = describe_dataset(records)
    cmp = Comparison(
        config,
        rows,
        baseline,
        pairs,
        _seed_groups([[rows[i] for i in g] for g in groups]),
        test_set,
        notes,
        records,
        dataset=dataset,
        warnings=data_warnings(rows, dataset),
    )
    cmp.verdict = make_verdict(cmp)
    if evaluations is not None:
        from featurestore.compare.external_report import find_evaluations

        cmp.external = find_evaluations(evaluations, {r.name: r.label for r in rows})
    return cmp


def _positive_index(record: RunRecord) -> int:
    names = list(record.config["class_names"])
    return names.index(record.config["positive_class"])


def _test_arrays(record: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y in {0,1} positive, p_pos, patient groups) of the test rows, sorted by key."""
    test = record.split_predictions("test")
    order = np.argsort(test["key"], kind="stable")
    y = (test["label"][order] == _positive_index(record)).astype(np.int64)
    return y, test["probability"][order], test["patient"][order]


def _train_labels(record: RunRecord, notes: list[str]) -> np.ndarray:
    """Train labels for the majority baseline: from the run's recorded class counts."""
    counts = record.config.get("class_counts", {}).get("train")
    names = list(record.config["class_names"])
    if counts:
        return np.concatenate([np.full(int(counts[c]), names.index(c)) for c in names])
    notes.append("train class counts not recorded: the majority class is taken from test")
    return record.split_predictions("test")["label"]


def _check_same_test_set(records: list[RunRecord], *, allow: bool, notes: list[str]) -> bool:
    """True when every run was evaluated on the same test images with the same labels."""
    ref = records[0]
    ref_test = ref.split_predictions("test")
    ref_items = dict(zip(ref_test["key"].tolist(), ref_test["label"].tolist(), strict=True))
    for other in records[1:]:
        test = other.split_predictions("test")
        items = dict(zip(test["key"].tolist(), test["label"].tolist(), strict=True))
        if items != ref_items:
            differ = len(set(items.items()) ^ set(ref_items.items()))
            msg = (
                f"{other.name} and {ref.name} were evaluated on different test sets "
                f"({differ} images differ)"
            )
            if not allow:
                raise XrayError(msg + "; pass --allow-different-test to compare them anyway")
            notes.append(msg + ": paired tests skipped")
            return False
    return True


def _interval(
    name: str, t: float, y: np.ndarray, p: np.ndarray, groups: np.ndarray, config: CompareConfig
) -> Interval:
    """The bootstrap interval of one metric, with its undefined count and reliability."""
    unit_groups = groups if config.resample == "patients" else None
    units = groups if unit_groups is not None else np.arange(y.size).astype(str)
    per_class = units_per_class(y, units, 2)
    if any(per_class[k] == 0 for k in CONDITIONS_ON.get(name, ())):
        return UNDEFINED  # e.g. specificity on a test set without negatives
    r = bootstrap_interval(
        BootMetric(name, t),
        y,
        p,
        groups=unit_groups,
        n_boot=config.n_boot,
        alpha=config.alpha,
        seed=config.seed,
    )
    few = any(per_class[k] < config.min_units_per_class for k in CONDITIONS_ON.get(name, ()))
    reliable = not few and r.n_skipped <= 0.01 * r.n_boot
    return Interval(r.estimate, r.lo, r.hi, r.n_skipped, r.n_boot, reliable)


def _run_row(record: RunRecord, config: CompareConfig, label: str, config_label: str) -> RunRow:
    cfg, met = record.config, record.metrics
    y, p, groups = _test_arrays(record)
    threshold = float(met["threshold"]["value"])
    metrics: dict[str, dict[str, Interval]] = {t: {} for t in THRESHOLDS}
    for name in TABLE_METRICS:
        for t_name, t in (("at_threshold", threshold), ("at_0.5", 0.5)):
            if name in THRESHOLD_FREE and t_name == "at_0.5":
                metrics[t_name][name] = metrics["at_threshold"][name]
                continue
            metrics[t_name][name] = _interval(name, t, y, p, groups, config)
    store = cfg.get("store") or {}
    logreg = cfg.get("head") == "logreg" and "logreg_C" in cfg
    settings = run_settings(cfg)
    return RunRow(
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
        threshold=threshold,
        metrics=metrics,
        swept="C" if logreg else "epoch",
        chosen=float(cfg["logreg_C"]) if logreg else None,
    )


def _seconds_per_epoch(record: RunRecord) -> float:
    """From timing.json, else the mean of history.csv's per-epoch seconds."""
    if "seconds_per_epoch" in record.timing:
        return float(record.timing["seconds_per_epoch"])
    seconds = record.history.get("seconds")
    return float(np.mean(seconds)) if seconds is not None and seconds.size else float("nan")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair_test(ra: RunRow, a: RunRecord, rb: RunRow, b: RunRecord, *, clustered: bool) -> PairTest:
    y, pa, groups = _test_arrays(a)
    _, pb, _ = _test_arrays(b)
    g = groups if clustered else None
    correct_a = (pa >= ra.threshold).astype(np.int64) == y
    correct_b = (pb >= rb.threshold).astype(np.int64) == y
    one_class = y.min() == y.max()
    delong = None if one_class else clustered_delong_test(y, pa, pb, g)
    return PairTest(ra.label, rb.label, clustered_mcnemar(correct_a, correct_b, g), delong)


def _holm_adjusted(pairs: list[PairTest]) -> list[PairTest]:
    """The pairs with Holm-adjusted p-values, per test, over all pairs compared."""
    p_mc = holm([p.mcnemar.p_value for p in pairs])
    with_delong = [i for i, p in enumerate(pairs) if p.delong is not None]
    p_dl = dict(
        zip(with_delong, holm([pairs[i].delong.p_value for i in with_delong]), strict=True)  # type: ignore[union-attr]
    )
    return [
        replace(p, mcnemar_p_holm=p_mc[i], delong_p_holm=p_dl.get(i)) for i, p in enumerate(pairs)
    ]


def _seed_groups(groups: list[list[RunRow]]) -> list[SeedGroup]:
    """Mean and standard deviation across distinct seeds of one configuration (NaN-aware:
    a metric undefined for a run is left out of that metric's mean)."""
    out = []
    for members in groups:
        values = {
            m: np.array([r.metrics["at_threshold"][m].estimate for r in members])
            for m in TABLE_METRICS
        }
        mean, std = {}, {}
        for m, v in values.items():
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
