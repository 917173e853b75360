"""`xray compare`: run folders -> one table with bootstrap intervals, paired tests, a report."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.compare.bootstrap import BootMetric, bootstrap_interval
from featurestore.compare.stats import (
    DeLongResult,
    McNemarResult,
    delong_roc_test,
    majority_baseline,
    mcnemar,
)
from featurestore.config import CompareConfig
from featurestore.errors import XrayError
from featurestore.runs import RunRecord, load_run

# The metrics of the table, in order; each gets a bootstrap interval.
TABLE_METRICS: tuple[str, ...] = (
    "loss",
    "accuracy",
    "f1_macro",
    "sensitivity",
    "specificity",
    "roc_auc",
)
THRESHOLDS: tuple[str, ...] = ("at_0.5", "at_threshold")
# Metrics that do not depend on the decision threshold (computed once, shown at both).
THRESHOLD_FREE = frozenset({"loss", "roc_auc", "pr_auc", "brier"})


@dataclass(frozen=True)
class Interval:
    """A metric's point estimate and its bootstrap interval."""

    estimate: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi}


@dataclass(frozen=True)
class RunRow:
    """One run of the comparison: identity, cost and test metrics with intervals."""

    name: str
    label: str
    """Short display name: `model mode[/head] [sN]`."""
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

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        out["metrics"] = {
            t: {m: iv.as_dict() for m, iv in ms.items()} for t, ms in self.metrics.items()
        }
        return out


@dataclass(frozen=True)
class PairTest:
    """Paired tests of two runs on the same test images."""

    a: str
    b: str
    mcnemar: McNemarResult
    """On correctness at each run's validation-chosen threshold."""
    delong: DeLongResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "mcnemar": self.mcnemar.as_dict(),
            "delong": self.delong.as_dict(),
        }


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one configuration over several seeds: mean and spread of test metrics."""

    label: str
    seeds: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]


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

    def as_dict(self) -> dict[str, Any]:
        return {
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

    `evaluations`: a folder of `xray evaluate` outputs; those of the compared runs are summed
    up in the report's external-validation section.
    """
    config = config or CompareConfig()
    if not paths:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    records = [load_run(Path(p)) for p in paths]
    notes: list[str] = []
    same_test = _check_same_test_set(records, allow=config.allow_different_test, notes=notes)
    seeds = {int(r.config.get("seed", 0)) for r in records}
    rows = [_run_row(r, config, with_seed=len(seeds) > 1) for r in records]
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
        for (ra, a), (rb, b) in itertools.combinations(zip(rows, records, strict=True), 2):
            pairs.append(_pair_test(ra, a, rb, b))
    n_pat = len(set(groups_ref.tolist()))
    test_set = {"images": int(y_ref.size), "positives": int(y_ref.sum()), "patients": n_pat}
    if any(r.weights == "none" for r in rows):
        notes.append(
            "Some runs use randomly initialised backbones (--weights none): "
            "a pipeline check, not a result about pretrained transfer."
        )
    cmp = Comparison(config, rows, baseline, pairs, _seed_groups(rows), test_set, notes, records)
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


def _run_label(config: dict[str, Any], *, with_seed: bool) -> str:
    """`resnet50 frozen/linear`, `densenet121 finetune/freeze=layer2`, `+ s1` with seeds."""
    mode = config["mode"]
    extra = f"/{config['head']}" if mode == "frozen" else ""
    if mode == "finetune" and config.get("freeze", "none") != "none":
        extra = f"/freeze={config['freeze']}"
    seed = f" s{config.get('seed', 0)}" if with_seed else ""
    evaluation = config.get("evaluation")  # an evaluation folder: say which dataset it scored
    where = f" on {evaluation['dataset']}" if isinstance(evaluation, dict) else ""
    return f"{config['model']} {mode}{extra}{where}{seed}"


def _run_row(record: RunRecord, config: CompareConfig, *, with_seed: bool) -> RunRow:
    cfg, met = record.config, record.metrics
    y, p, groups = _test_arrays(record)
    threshold = float(met["threshold"]["value"])
    unit_groups = groups if config.resample == "patients" else None
    metrics: dict[str, dict[str, Interval]] = {t: {} for t in THRESHOLDS}
    for name in TABLE_METRICS:
        for t_name, t in (("at_0.5", 0.5), ("at_threshold", threshold)):
            if name in THRESHOLD_FREE and t_name == "at_threshold":
                metrics[t_name][name] = metrics["at_0.5"][name]
                continue
            try:
                r = bootstrap_interval(
                    BootMetric(name, t),
                    y,
                    p,
                    groups=unit_groups,
                    n_boot=config.n_boot,
                    alpha=config.alpha,
                    seed=config.seed,
                )
                metrics[t_name][name] = Interval(r.estimate, r.lo, r.hi)
            except XrayError:  # undefined on this test set (one class only)
                metrics[t_name][name] = Interval(float("nan"), float("nan"), float("nan"))
    store = cfg.get("store") or {}
    return RunRow(
        name=record.name,
        label=_run_label(cfg, with_seed=with_seed),
        model=str(cfg["model"]),
        mode=str(cfg["mode"]),
        head=str(cfg.get("head", "")),
        seed=int(cfg.get("seed", 0)),
        weights=str(cfg.get("weights_id") or store.get("weights_id") or cfg.get("weights", "")),
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
    )


def _seconds_per_epoch(record: RunRecord) -> float:
    """From timing.json, else the mean of history.csv's per-epoch seconds."""
    if "seconds_per_epoch" in record.timing:
        return float(record.timing["seconds_per_epoch"])
    seconds = record.history.get("seconds")
    return float(np.mean(seconds)) if seconds is not None and seconds.size else float("nan")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair_test(ra: RunRow, a: RunRecord, rb: RunRow, b: RunRecord) -> PairTest:
    y, pa, _ = _test_arrays(a)
    _, pb, _ = _test_arrays(b)
    correct_a = (pa >= ra.threshold).astype(np.int64) == y
    correct_b = (pb >= rb.threshold).astype(np.int64) == y
    return PairTest(ra.label, rb.label, mcnemar(correct_a, correct_b), delong_roc_test(y, pa, pb))


def _seed_groups(rows: list[RunRow]) -> list[SeedGroup]:
    """Mean and standard deviation across seeds for configurations run more than once."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        groups.setdefault(row.label.rsplit(" s", 1)[0], []).append(row)  # label less seed
    out = []
    for label, members in groups.items():
        if len(members) < 2:
            continue
        values = {
            m: np.array([r.metrics["at_threshold"][m].estimate for r in members])
            for m in TABLE_METRICS
        }
        out.append(
            SeedGroup(
                label,
                tuple(r.seed for r in members),
                {m: float(np.mean(v)) for m, v in values.items()},
                {m: float(np.std(v, ddof=1)) for m, v in values.items()},
            )
        )
    return out
