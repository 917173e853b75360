"""`xray compare` for multi-class runs: patient-clustered intervals, McNemar, majority baseline."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.compare.analysis import (
    Interval,
    _check_same_test_set,
    replicate_interval,
    units_per_class,
)
from featurestore.compare.bootstrap import _unit_index, _weighted_auc
from featurestore.compare.labels import run_labels
from featurestore.compare.multiclass import multiclass_metrics
from featurestore.compare.stats import McNemarResult, mcnemar
from featurestore.config import CompareConfig
from featurestore.errors import XrayError
from featurestore.runs import RunRecord, load_run

# The headline metrics of the multi-class table, in order; each gets a bootstrap interval.
MULTICLASS_TABLE_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc_macro",
    "loss",
)
# Per-class metrics with intervals (one-vs-rest AUC and recall of each class).
PER_CLASS_METRICS: tuple[str, ...] = ("recall", "auc")
_CHUNK_CELLS = 2_000_000  # resamples x images per vectorised block, as in compare.bootstrap


def runs_task(paths: Sequence[Path]) -> str:
    """The task of the runs (`binary` or `multiclass`) from their config.json; XrayError when
    they mix tasks. Unreadable folders count as binary (the binary path names what is wrong)."""
    tasks = set()
    for path in paths:
        try:
            cfg = json.loads((Path(path) / "config.json").read_text())
            names = cfg.get("class_names") or []
            tasks.add(cfg.get("task") or ("binary" if len(names) <= 2 else "multiclass"))
        except (OSError, ValueError, AttributeError):
            tasks.add("binary")
    if len(tasks) > 1:
        raise XrayError(
            f"the runs mix tasks ({', '.join(sorted(tasks))}): compare runs of one task at a time"
        )
    return tasks.pop() if tasks else "binary"


def multiclass_replicates(
    y: np.ndarray,
    probs: np.ndarray,
    *,
    groups: np.ndarray | Sequence[str] | None,
    n_boot: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates (B,) of every multi-class metric, NaN where undefined.

    y (N,) class indices, probs (N, C). Units (images, or whole patients when `groups` is given:
    the cluster bootstrap of Davison & Hinkley 1997, sec. 3.8) are drawn with replacement; a
    resample is a row of multiplicity weights, so each block of resamples is scored at once:
    weighted C x C confusion matrices give accuracy, balanced accuracy (mean recall over the
    classes present, as sklearn), macro F1 (zero_division=0, as sklearn), per-class recall; the
    weighted Mann-Whitney AUC gives each class's one-vs-rest AUC and their mean. The same seed
    and units give the same resamples, so two runs' replicates are paired.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    rng = np.random.default_rng(seed)
    unit, n_units = _unit_index(n, groups)
    pred = p.argmax(1)
    cell = np.zeros((n, k * k))
    cell[np.arange(n), y * k + pred] = 1.0  # (N, C*C): the confusion cell of each image
    onehot = (y[:, None] == np.arange(k)).astype(np.float64)  # (N, C)
    nll = -np.log(np.clip(p[np.arange(n), y], 1e-7, 1.0))  # (N,)
    names = [*MULTICLASS_TABLE_METRICS, *(f"{m}_{c}" for m in PER_CLASS_METRICS for c in range(k))]
    out = {name: np.empty(n_boot) for name in names}
    rows = max(1, _CHUNK_CELLS // max(n, n_units))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        offsets = (np.arange(b) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_units)
        w = counts.reshape(b, n_units)[:, unit].astype(np.float64)  # (b, N) multiplicities
        cm = (w @ cell).reshape(b, k, k)  # (b, C, C) rows true, columns predicted
        diag = np.diagonal(cm, axis1=1, axis2=2)  # (b, C)
        true_n, pred_n = cm.sum(2), cm.sum(1)  # (b, C) each
        recall = np.divide(diag, true_n, out=np.full(diag.shape, np.nan), where=true_n > 0)
        f1_den = true_n + pred_n
        f1 = np.divide(2 * diag, f1_den, out=np.zeros(diag.shape), where=f1_den > 0)
        aucs = np.stack([_weighted_auc(onehot[:, c], p[:, c], w) for c in range(k)], 1)
        sl = slice(start, start + b)
        out["accuracy"][sl] = diag.sum(1) / w.sum(1)
        with np.errstate(invalid="ignore"):
            present = true_n > 0
            out["balanced_accuracy"][sl] = np.nansum(recall, 1) / present.sum(1)
        out["f1_macro"][sl] = f1.mean(1)
        out["roc_auc_macro"][sl] = aucs.mean(1)  # NaN when any class's AUC is undefined
        out["loss"][sl] = (w @ nll) / w.sum(1)
        for c in range(k):
            out[f"recall_{c}"][sl] = recall[:, c]
            out[f"auc_{c}"][sl] = aucs[:, c]
    return out


@dataclass(frozen=True)
class MulticlassRow:
    """One multi-class run: identity, cost, headline and per-class test metrics with intervals."""

    name: str
    label: str
    model: str
    mode: str
    head: str
    seed: int
    weights: str
    trainable_params: int
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    metrics: dict[str, Interval]
    """Headline metric -> interval (MULTICLASS_TABLE_METRICS)."""
    per_class: dict[str, dict[str, Interval]]
    """Class name -> {"recall", "auc"} -> interval."""
    confusion_matrix: list[list[int]]
    """Test, C x C, rows true, columns predicted (argmax)."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("metrics", "per_class")}
        out["metrics"] = {m: iv.as_dict() for m, iv in self.metrics.items()}
        out["per_class"] = {
            c: {m: iv.as_dict() for m, iv in ms.items()} for c, ms in self.per_class.items()
        }
        return out


@dataclass(frozen=True)
class MulticlassPair:
    """Paired tests of two multi-class runs on the same test images."""

    a: str
    b: str
    mcnemar: McNemarResult
    """On correctness of the argmax decisions."""
    macro_auc_diff: Interval
    """Macro AUC of a minus b with a paired bootstrap interval (same resamples for both)."""
    macro_auc_p: float
    """Two-sided paired-bootstrap p-value of the macro AUC difference (NaN if undefined)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "mcnemar": self.mcnemar.as_dict(),
            "macro_auc_diff": self.macro_auc_diff.as_dict(),
            "macro_auc_p": self.macro_auc_p,
        }


@dataclass
class MulticlassComparison:
    """Everything `xray compare` shows and writes for multi-class runs."""

    config: CompareConfig
    class_names: tuple[str, ...]
    rows: list[MulticlassRow]
    baseline: dict[str, Any]
    pairs: list[MulticlassPair]
    test_set: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": "multiclass",
            "config": self.config.__dict__,
            "class_names": list(self.class_names),
            "test_set": self.test_set,
            "runs": [r.as_dict() for r in self.rows],
            "baseline": self.baseline,
            "pairs": [p.as_dict() for p in self.pairs],
            "notes": self.notes,
        }


def _test_arrays(record: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (N,), probabilities (N, C), patients (N,)) of the test rows, sorted by key."""
    test = record.split_predictions("test")
    if "probabilities" not in test:
        raise XrayError(f"{record.name} is not a multi-class run (no prob_<class> columns)")
    order = np.argsort(test["key"], kind="stable")
    return test["label"][order], test["probabilities"][order], test["patient"][order]


def compare_multiclass_runs(
    paths: Sequence[Path], config: CompareConfig | None = None
) -> MulticlassComparison:
    """Load multi-class run folders, check they share a test set and classes, then compute
    intervals (bootstrap over patients by default), McNemar and paired macro-AUC tests, and the
    majority-class baseline."""
    config = config or CompareConfig()
    if not paths:
        raise XrayError("no runs to compare: train some with `xray fit-head` or `xray finetune`")
    records = [load_run(Path(p)) for p in paths]
    names = tuple(records[0].config["class_names"])
    for r in records[1:]:
        if tuple(r.config["class_names"]) != names:
            raise XrayError(
                f"{r.name} has classes {', '.join(r.config['class_names'])}, {records[0].name} "
                f"has {', '.join(names)}: compare runs of one label set"
            )
    notes: list[str] = []
    same_test = _check_same_test_set(records, allow=config.allow_different_test, notes=notes)
    labels, _ = run_labels([r.config for r in records], [r.name for r in records])
    rows, reps = [], []
    for record, label in zip(records, labels, strict=True):
        row, rep = _row(record, names, config, label=label)
        rows.append(row)
        reps.append(rep)
    pairs: list[MulticlassPair] = []
    if same_test:
        for (ra, a, rep_a), (rb, b, rep_b) in itertools.combinations(
            zip(rows, records, reps, strict=True), 2
        ):
            pairs.append(_pair(ra, a, rep_a, rb, b, rep_b, config.alpha))
    y, _, groups = _test_arrays(records[0])
    baseline = majority_baseline_multiclass(_train_counts(records[0], names, notes), y, names)
    test_set = {
        "images": int(y.size),
        "patients": len(set(groups.tolist())),
        "per_class": {c: int(np.sum(y == k)) for k, c in enumerate(names)},
    }
    if any(r.weights == "none" for r in rows):
        notes.append(
            "Some runs use randomly initialised backbones (--weights none): "
            "a pipeline check, not a result about pretrained transfer."
        )
    return MulticlassComparison(config, names, rows, baseline, pairs, test_set, notes, records)


def _row(
    record: RunRecord, names: tuple[str, ...], config: CompareConfig, *, label: str
) -> tuple[MulticlassRow, dict[str, np.ndarray]]:
    y, p, groups = _test_arrays(record)
    point = multiclass_metrics(y, p, class_names=names)  # scikit-learn, from predictions.csv
    rep = multiclass_replicates(
        y,
        p,
        groups=groups if config.resample == "patients" else None,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    units = groups if config.resample == "patients" else np.arange(y.size).astype(str)
    per_unit = units_per_class(y, units, len(names))  # (C,) patients (or images) per class
    every = min(per_unit)

    def interval(estimate: float | None, values: np.ndarray, fewest: int | None) -> Interval:
        return replicate_interval(estimate, values, alpha=config.alpha, fewest_units=fewest,
                                  min_units=config.min_units_per_class)  # fmt: skip

    # Accuracy and the loss condition on no class; the macro metrics average over every class,
    # so the rarest class decides their reliability; a class's own metrics condition on it
    # (its one-vs-rest AUC on the rest too).
    conditions = {"accuracy": None, "loss": None}
    metrics = {
        m: interval(point[m], rep[m], conditions.get(m, every)) for m in MULTICLASS_TABLE_METRICS
    }
    rest = [sum(per_unit) - n for n in per_unit]
    per_class = {
        c: {
            "recall": interval(point[f"recall_{c}"], rep[f"recall_{k}"], per_unit[k]),
            "auc": interval(point[f"auc_{c}"], rep[f"auc_{k}"], min(per_unit[k], rest[k])),
        }
        for k, c in enumerate(names)
    }
    cfg, met = record.config, record.metrics
    store = cfg.get("store") or {}
    seconds = record.timing.get("seconds_per_epoch")
    if seconds is None:
        hist = record.history.get("seconds")
        seconds = float(np.mean(hist)) if hist is not None and hist.size else float("nan")
    row = MulticlassRow(
        name=record.name,
        label=label,
        model=str(cfg["model"]),
        mode=str(cfg["mode"]),
        head=str(cfg.get("head", "")),
        seed=int(cfg.get("seed", 0)),
        weights=str(cfg.get("weights_id") or store.get("weights_id") or cfg.get("weights", "")),
        trainable_params=int(cfg.get("trainable_params", 0)),
        best_epoch=int(met["best_epoch"]),
        epochs_run=int(met["epochs_run"]),
        seconds_per_epoch=float(seconds),
        metrics=metrics,
        per_class=per_class,
        confusion_matrix=point["confusion_matrix"],
    )
    return row, rep


def _pair(
    ra: MulticlassRow,
    a: RunRecord,
    rep_a: dict[str, np.ndarray],
    rb: MulticlassRow,
    b: RunRecord,
    rep_b: dict[str, np.ndarray],
    alpha: float,
) -> MulticlassPair:
    y, pa, _ = _test_arrays(a)
    _, pb, _ = _test_arrays(b)
    test = mcnemar(pa.argmax(1) == y, pb.argmax(1) == y)
    est_a, est_b = ra.metrics["roc_auc_macro"].estimate, rb.metrics["roc_auc_macro"].estimate
    d = rep_a["roc_auc_macro"] - rep_b["roc_auc_macro"]  # same resamples: paired
    d = d[np.isfinite(d)]
    if not (np.isfinite(est_a) and np.isfinite(est_b)) or d.size == 0:
        diff, p_value = Interval(float("nan"), float("nan"), float("nan")), float("nan")
    else:
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        n_boot = int(rep_a["roc_auc_macro"].size)
        both = ra.metrics["roc_auc_macro"].reliable and rb.metrics["roc_auc_macro"].reliable
        diff = Interval(est_a - est_b, float(lo), float(hi), n_boot - int(d.size), n_boot, both)
        # Davison & Hinkley (1997, eq. 4.11): +1 so the p-value is never exactly 0.
        tail = min(np.sum(d <= 0), np.sum(d >= 0)) + 1
        p_value = min(1.0, 2 * float(tail) / (d.size + 1))
    return MulticlassPair(ra.label, rb.label, test, diff, p_value)


def _train_counts(record: RunRecord, names: tuple[str, ...], notes: list[str]) -> np.ndarray:
    """(C,) train images per class from config.json's class_counts (else test's, noted)."""
    counts = record.config.get("class_counts", {}).get("train")
    if counts:
        return np.array([int(counts[c]) for c in names], dtype=np.float64)
    notes.append("train class counts not recorded: the majority class is taken from test")
    y = record.split_predictions("test")["label"]
    return np.bincount(y, minlength=len(names)).astype(np.float64)


def majority_baseline_multiclass(
    train_counts: np.ndarray, test_labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Test metrics of always predicting train's majority class (multiclass_metrics keys).

    Every image is scored with train's class priors (C,), so the decision is the majority class
    (ties: the first), each one-vs-rest AUC is 0.5 (a constant ranks nothing; None for a class
    absent from test) and the loss is the prior's cross-entropy. Adds `majority_class`, `priors`.
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise XrayError("the training labels are empty: the majority-class baseline needs them")
    prior = counts / counts.sum()
    y = np.asarray(test_labels, dtype=np.int64)
    out = multiclass_metrics(y, np.tile(prior, (y.size, 1)), class_names=class_names)
    out["majority_class"] = list(class_names)[int(prior.argmax())]
    out["priors"] = {c: float(q) for c, q in zip(class_names, prior, strict=True)}
    return out
