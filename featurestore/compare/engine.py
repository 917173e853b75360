"""One scoring engine for every task: a run's test predictions -> metrics and their resamples.

`xray compare`, the study report and the verdict read every number through here, whatever the
task (`featurestore.tasks.Task`): binary, multi-class or multi-label differ only in the kernel
that turns one block of resampling weights into metric values. A point estimate is the kernel
on weights of one (every image once), so the estimate and its bootstrap replicates are the same
computation, checked against scikit-learn in the tests.

The resampling is the percentile bootstrap (Efron & Tibshirani 1993, ch. 13); with patient ids
whole patients are drawn, the cluster bootstrap of Davison & Hinkley (1997, sec. 3.8). A
resample is a row of multiplicity weights, so a block of resamples is scored at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurestore.compare.bootstrap import BootMetric, _weighted_auc, weight_blocks
from featurestore.compare.metrics import log_loss_per_image
from featurestore.errors import XrayError
from featurestore.runs import RunRecord
from featurestore.tasks import Task

MetricKey = tuple[str, str | None]
"""(metric, class or finding name): ("roc_auc", None) is a headline metric, ("auc",
"Effusion") a per-finding one."""
Kernel = Callable[[np.ndarray], dict[MetricKey, np.ndarray]]
"""(B, N) multiplicity weights -> metric key -> (B,) values, NaN where undefined."""

# Binary metrics that do not depend on the decision threshold (computed once, shown at both).
THRESHOLD_FREE = frozenset({"loss", "roc_auc", "pr_auc", "brier"})
# The classes (1 positive, 0 negative) a binary metric conditions on: undefined without them,
# unreliable with only a few units of them.
BINARY_CONDITIONS: dict[str, tuple[int, ...]] = {
    "sensitivity": (1,),
    "f1_positive": (1,),
    "specificity": (0,),
    "f1_macro": (0, 1),
    "roc_auc": (0, 1),
    "pr_auc": (0, 1),
}


@dataclass(frozen=True)
class TestArrays:
    """A run's test rows from predictions.csv, sorted by image key.

    `labels`: (N,) class indices (binary: 1 for the positive class, 0 for the other;
    multi-class: 0..C-1), or (N, L) 1/0/NaN targets of a multi-label run (NaN: masked).
    `scores`: (N,) P(positive) of a binary run, (N, C) class or finding probabilities otherwise.
    """

    __test__ = False  # not a pytest class, whatever its name

    keys: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    groups: np.ndarray
    """(N,) patient ids."""

    @property
    def n(self) -> int:
        return int(self.keys.size)


def test_arrays(record: RunRecord, task: Task | None = None) -> TestArrays:
    """The test rows of a run (`runs.load_run`) as its task scores them, in key order.

    Raises XrayError when predictions.csv does not hold the columns of the run's task.
    """
    task = task or record.task
    test = record.split_predictions("test")
    order = np.argsort(test["key"], kind="stable")
    need = {"binary": "probability", "multiclass": "probabilities", "multilabel": "targets"}
    if need[task.kind] not in test:
        raise XrayError(
            f"{record.name}: predictions.csv has no {need[task.kind]} columns, but config.json "
            f"says it is a {task.kind} run; rerun the training that made it"
        )
    if task.binary:
        labels = (test["label"][order] == task.positive_index).astype(np.int64)
        scores = test["probability"][order]
    elif task.multiclass:
        labels, scores = test["label"][order], test["probabilities"][order]
    else:
        labels, scores = test["targets"][order], test["probabilities"][order]
    return TestArrays(test["key"][order], labels, scores, test["patient"][order])


@dataclass(frozen=True)
class Decision:
    """How one row of a run's table turns probabilities into decisions."""

    name: str
    """`at_threshold` (the validation-chosen threshold, per finding for multi-label), `at_0.5`
    (binary), or `argmax` (multi-class)."""
    title: str
    thresholds: float | tuple[float, ...] | None
    """Binary: one threshold; multi-label: one per finding; multi-class: None (argmax)."""


def decisions(task: Task, record: RunRecord) -> list[Decision]:
    """The decision rules a run's table rows show, the validation-chosen one first."""
    point = record.metrics.get("threshold") or {}
    if task.multiclass:
        return [Decision("argmax", "most probable class (argmax)", None)]
    if task.multilabel:
        per = point.get("per_label") or {}
        per_finding = tuple(float(per.get(name, 0.5)) for name in task.class_names)
        return [Decision("at_threshold", "per-finding validation-chosen thresholds", per_finding)]
    return [
        Decision("at_threshold", "validation-chosen threshold", float(point["value"])),
        Decision("at_0.5", "threshold 0.5", 0.5),
    ]


def kernel(
    task: Task, arrays: TestArrays, decision: Decision, *, binary_metrics: Sequence[str] = ()
) -> Kernel:
    """The task's metrics of one decision rule as a function of resampling weights.

    Binary: `binary_metrics` (default `task.table_metrics`; any of `compare.BOOT_METRICS`) at
    the threshold (`compare.bootstrap.BootMetric`).
    Multi-class: weighted C x C confusion matrices give accuracy, balanced accuracy (mean recall
    over the classes present, as scikit-learn), macro F1 (zero_division=0, as scikit-learn) and
    each class's recall; the weighted Mann-Whitney statistic each one-vs-rest ROC-AUC and their
    mean (undefined when any class's is); the loss is the mean cross-entropy. Multi-label: each
    finding's ROC-AUC, sensitivity and specificity over its observed entries at its threshold;
    the macro ROC-AUC is the mean over the findings whose AUC is defined on the whole test set.
    """
    if task.binary:
        threshold = float(decision.thresholds)  # type: ignore[arg-type]
        return _binary_kernel(arrays, threshold, binary_metrics or task.table_metrics)
    if task.multiclass:
        return _multiclass_kernel(task, arrays)
    t = np.asarray(decision.thresholds, dtype=np.float64)
    return _multilabel_kernel(task, arrays, t)


def _binary_kernel(arrays: TestArrays, threshold: float, names: Sequence[str]) -> Kernel:
    y = arrays.labels.astype(np.float64)
    p = arrays.scores.astype(np.float64)
    metrics = [BootMetric(m, threshold) for m in names]

    def score(w: np.ndarray) -> dict[MetricKey, np.ndarray]:
        return {(m.name, None): m.weighted(y, p, w) for m in metrics}

    return score


def _multiclass_kernel(task: Task, arrays: TestArrays) -> Kernel:
    y = np.asarray(arrays.labels, dtype=np.int64)
    p = np.asarray(arrays.scores, dtype=np.float64)
    n, k = p.shape
    pred = p.argmax(1)
    cell = np.zeros((n, k * k))
    cell[np.arange(n), y * k + pred] = 1.0  # (N, C*C): the confusion cell of each image
    onehot = (y[:, None] == np.arange(k)).astype(np.float64)  # (N, C)
    nll = log_loss_per_image("multiclass", y, p)  # (N,) sklearn's clip
    names = task.class_names

    def score(w: np.ndarray) -> dict[MetricKey, np.ndarray]:
        cm = (w @ cell).reshape(-1, k, k)  # (B, C, C) rows true, columns predicted
        diag = np.diagonal(cm, axis1=1, axis2=2)  # (B, C)
        true_n, pred_n = cm.sum(2), cm.sum(1)
        recall = np.divide(diag, true_n, out=np.full(diag.shape, np.nan), where=true_n > 0)
        f1_den = true_n + pred_n
        f1 = np.divide(2 * diag, f1_den, out=np.zeros(diag.shape), where=f1_den > 0)
        aucs = np.stack([_weighted_auc(onehot[:, c], p[:, c], w) for c in range(k)], 1)
        present = (true_n > 0).sum(1)
        out: dict[MetricKey, np.ndarray] = {
            ("accuracy", None): diag.sum(1) / w.sum(1),
            ("balanced_accuracy", None): np.nansum(recall, 1) / np.maximum(present, 1),
            ("f1_macro", None): f1.mean(1),
            ("roc_auc_macro", None): aucs.mean(1),
            ("loss", None): (w @ nll) / w.sum(1),
        }
        for c, name in enumerate(names):
            out[("recall", name)] = recall[:, c]
            out[("auc", name)] = aucs[:, c]
        return out

    return score


def _multilabel_kernel(task: Task, arrays: TestArrays, thresholds: np.ndarray) -> Kernel:
    y = np.asarray(arrays.labels, dtype=np.float64)
    p = np.asarray(arrays.scores, dtype=np.float64)
    observed = ~np.isnan(y)
    names = task.class_names
    # The macro AUC averages the findings defined on the whole test set (both classes observed).
    defined = [c for c in range(len(names)) if 0 < np.nansum(y[:, c]) < int(observed[:, c].sum())]

    def score(w: np.ndarray) -> dict[MetricKey, np.ndarray]:
        out: dict[MetricKey, np.ndarray] = {}
        aucs = np.full((w.shape[0], len(names)), np.nan)
        for c, name in enumerate(names):
            mask = observed[:, c]
            yc, pc, wc = y[mask, c], p[mask, c], w[:, mask]
            aucs[:, c] = _weighted_auc(yc, pc, wc)
            hit = (pc >= thresholds[c]).astype(np.float64)
            pos, neg = wc @ yc, wc @ (1 - yc)
            out[("auc", name)] = aucs[:, c]
            out[("sensitivity", name)] = np.divide(
                wc @ (yc * hit), pos, out=np.full(pos.shape, np.nan), where=pos > 0
            )
            out[("specificity", name)] = np.divide(
                wc @ ((1 - yc) * (1 - hit)), neg, out=np.full(neg.shape, np.nan), where=neg > 0
            )
        macro = aucs[:, defined].mean(1) if defined else np.full(w.shape[0], np.nan)
        out[("roc_auc_macro", None)] = macro
        return out

    return score


def point_estimates(score: Kernel, n: int) -> dict[MetricKey, float]:
    """The metrics on the test set itself: the kernel on weights of one (N,)."""
    return {key: float(v[0]) for key, v in score(np.ones((1, n))).items()}


def replicates(
    score: Kernel,
    n: int,
    *,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> dict[MetricKey, np.ndarray]:
    """(n_boot,) bootstrap replicates of every metric of `score`, NaN where a resample leaves
    it undefined (a class not drawn). `groups`: patient ids (N,), or None to resample images."""
    out: dict[MetricKey, np.ndarray] = {}
    for sl, w in weight_blocks(n, groups, n_boot, seed):
        for key, values in score(w).items():
            if key not in out:
                out[key] = np.empty(n_boot)
            out[key][sl] = values
    return out


def fewest_units(task: Task, key: MetricKey, arrays: TestArrays, units: np.ndarray) -> int | None:
    """The fewest units (patients, or images) of any class a metric conditions on; None when it
    conditions on none (accuracy, loss). Decides whether its interval is reliable.

    Binary: `BINARY_CONDITIONS`. Multi-class: a macro metric the rarest class; a class's recall
    that class; its one-vs-rest AUC that class and the rest. Multi-label: a finding's AUC its
    positive and negative units, sensitivity its positives, specificity its negatives; the macro
    AUC the fewest of the defined findings.
    """
    metric, cls = key
    if task.binary:
        need = BINARY_CONDITIONS.get(metric, ())
        if not need:
            return None
        return min(len(set(units[arrays.labels == k].tolist())) for k in need)
    if task.multiclass:
        y = arrays.labels
        per = [len(set(units[y == k].tolist())) for k in range(task.n_outputs)]
        if cls is None:
            return None if metric in ("accuracy", "loss") else min(per)
        k = task.class_names.index(cls)
        rest = len(set(units[y != k].tolist()))
        return per[k] if metric == "recall" else min(per[k], rest)
    y = arrays.labels

    def finding(c: int) -> tuple[int, int]:
        mask = ~np.isnan(y[:, c])
        return (
            len(set(units[mask & (y[:, c] == 1)].tolist())),
            len(set(units[mask & (y[:, c] == 0)].tolist())),
        )

    if cls is None:
        sizes = [n for n in (min(finding(c)) for c in range(task.n_outputs)) if n > 0]
        return min(sizes) if sizes else 0
    pos, neg = finding(task.class_names.index(cls))
    return {"sensitivity": pos, "specificity": neg}.get(metric, min(pos, neg))


def predicted(task: Task, arrays: TestArrays, decision: Decision) -> np.ndarray | None:
    """(N,) the decided class of each test image in `arrays.labels`' coding (binary: 1 for the
    positive class; multi-class: the argmax); None for a multi-label run (one decision per
    finding, not one class)."""
    if task.multilabel:
        return None
    if task.multiclass:
        return np.asarray(arrays.scores).argmax(1)
    return (arrays.scores >= float(decision.thresholds)).astype(np.int64)  # type: ignore[arg-type]


def correct(task: Task, arrays: TestArrays, decision: Decision) -> np.ndarray | None:
    """(N,) whether each test image is classified correctly under the decision, the input of
    McNemar's test; None for a multi-label run (one image holds several decisions)."""
    pred = predicted(task, arrays, decision)
    return None if pred is None else pred == arrays.labels


def baseline_scores(task: Task, train_counts: np.ndarray, n: int) -> np.ndarray:
    """Every test image scored with train's class (or finding) prevalence: the majority-class
    rule of a single-label task, the prevalence rule of a multi-label one. A constant ranks
    nothing, so each ROC-AUC it gets is 0.5. Binary: (N,) P(positive); else (N, C).

    `train_counts`: (C,) train images per class, or positive train images per finding over
    `train_total` images for multi-label (pass prevalences directly there, in [0, 1]).
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    if task.multilabel:
        return np.tile(counts, (n, 1))
    if counts.sum() <= 0:
        raise XrayError("the training labels are empty: the majority-class baseline needs them")
    prior = counts / counts.sum()
    if task.binary:
        return np.full(n, prior[task.positive_index])
    return np.tile(prior, (n, 1))


def as_float(value: Any) -> float | None:
    """None for NaN or None, else the float (metrics shown undefined, not 0)."""
    if value is None:
        return None
    f = float(value)
    return f if np.isfinite(f) else None
