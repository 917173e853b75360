"""The task a dataset poses, decided once: binary, multi-class or multi-label.

`Task` owns what differs between the three: how logits become probabilities, how probabilities
become decisions (a threshold per class or label, or the most probable class), the metrics of
the table and of the per-class breakdown, and the paired tests that apply. Every layer reads the
task from a `Task` (made from the labels, or read back from a store's attributes or a run's
config.json) instead of working it out again. Compare scikit-learn's `type_of_target` and
torchmetrics' `task="binary"|"multiclass"|"multilabel"`: one API, the task decided once.

This module sits at the bottom of the package (it imports only numpy, torch and
`featurestore.errors`), so every subpackage can import it downward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from featurestore.errors import XrayError

TaskKind = Literal["binary", "multiclass", "multilabel"]
TASK_KINDS: tuple[TaskKind, ...] = ("binary", "multiclass", "multilabel")
POSITIVE_CLASS = "PNEUMONIA"
"""The positive class of a binary dataset when present (the founding study's); else the last."""

LOG_LOSS_EPS = float(np.finfo(np.float64).eps)
"""Every reported log-loss clips probabilities to [eps, 1 - eps] with float64's machine epsilon
(2.2e-16), as scikit-learn's `log_loss` does on float64 input, so the loss sklearn recomputes
from predictions.csv is the one reported (`compare.log_loss_per_image`); the trainer caps each
image's cross-entropy from logits at `MAX_IMAGE_LOSS` to match."""

MAX_IMAGE_LOSS = float(-np.log(LOG_LOSS_EPS))
"""The largest loss of one prediction (or one finding) under the `LOG_LOSS_EPS` clip: 36.04 nats."""

MULTICLASS_RULE = (
    "multi-class decisions are the most probable class (argmax); a threshold policy chooses "
    "one cut-off for a two-class or a per-label decision and has no meaning here"
)
"""The one sentence on a multi-class run's decision rule: metrics.json's note and the refusal
of a threshold policy."""

# The headline metrics of the comparison table, per task, in order (each gets an interval).
_TABLE_METRICS: dict[TaskKind, tuple[str, ...]] = {
    "binary": ("loss", "accuracy", "f1_macro", "sensitivity", "specificity", "roc_auc"),
    "multiclass": ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "loss"),
    "multilabel": ("roc_auc_macro",),
}
# The metrics of the per-class (multi-class) or per-label (multi-label) breakdown.
_PER_CLASS_METRICS: dict[TaskKind, tuple[str, ...]] = {
    "binary": (),
    "multiclass": ("recall", "auc"),
    "multilabel": ("auc",),
}
# The paired tests between two runs on one test set.
_PAIRED_TESTS: dict[TaskKind, tuple[str, ...]] = {
    "binary": ("mcnemar", "delong"),
    "multiclass": ("mcnemar",),
    "multilabel": ("delong_per_label",),
}
# The metric a verdict ranks runs by.
_PRIMARY_METRIC: dict[TaskKind, str] = {
    "binary": "roc_auc",
    "multiclass": "roc_auc_macro",
    "multilabel": "roc_auc_macro",
}


@dataclass(frozen=True)
class Task:
    """The task of a dataset, a store or a run.

    `class_names`: the classes (binary, multi-class; output column k is class k) or the findings
    (multi-label; output column k is finding k). `positive_index`: the positive class of a binary
    task (PNEUMONIA when present, else the last class); for the other tasks it is recorded as the
    stores and run folders always have (the last class) and has no role in a decision.
    """

    kind: TaskKind
    class_names: tuple[str, ...]
    positive_index: int

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise XrayError(f"unknown task {self.kind!r}: one of {', '.join(TASK_KINDS)}")
        n = len(self.class_names)
        if self.kind == "binary" and n != 2:
            raise XrayError(
                f"a binary task has two classes, not {n} ({', '.join(self.class_names)})"
            )
        if self.kind == "multiclass" and n < 3:
            raise XrayError(f"a multi-class task has three or more classes, not {n}")
        if self.kind == "multilabel" and n < 1:
            raise XrayError("a multi-label task needs at least one finding")
        if not 0 <= self.positive_index < max(n, 1):
            raise XrayError(f"positive index {self.positive_index} is outside the {n} classes")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_classes(
        cls,
        class_names: Sequence[str],
        *,
        multilabel: bool = False,
        positive_index: int | None = None,
    ) -> Task:
        """The task labels pose: findings are multi-label; two classes binary, more multi-class.

        Raises XrayError for fewer than two classes of a single-label dataset (nothing to learn).
        """
        names = tuple(str(n) for n in class_names)
        if multilabel:
            kind: TaskKind = "multilabel"
        elif len(names) < 2:
            raise XrayError(
                f"the dataset has {len(names)} class ({', '.join(names)}): at least two are needed"
            )
        else:
            kind = "binary" if len(names) == 2 else "multiclass"
        if positive_index is None:
            positive_index = (
                names.index(POSITIVE_CLASS) if POSITIVE_CLASS in names else len(names) - 1
            )
        return cls(kind, names, int(positive_index))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Task:
        """The task a store's attributes or a run's config.json record (`task`, `class_names`,
        `positive_index`); records written before `task` was kept are binary for two classes and
        multi-class for more. Raises XrayError when the class names are missing."""
        names = record.get("class_names")
        if not names:
            raise XrayError("the record names no classes (class_names): it is not a store or run")
        kind = record.get("task")
        names = tuple(str(n) for n in names)
        pos = record.get("positive_index")
        if kind is None:
            return cls.from_classes(names, positive_index=None if pos is None else int(pos))
        return cls(cast(TaskKind, str(kind)), names, len(names) - 1 if pos is None else int(pos))

    def as_record(self) -> dict[str, Any]:
        """What a store or config.json records of the task (read back by `from_record`)."""
        return {
            "task": self.kind,
            "class_names": list(self.class_names),
            "positive_index": self.positive_index,
        }

    # -- what differs ---------------------------------------------------------------------------

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @property
    def multiclass(self) -> bool:
        return self.kind == "multiclass"

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def n_outputs(self) -> int:
        """Logits per image: one per class (binary: two, softmax) or per finding (sigmoid)."""
        return len(self.class_names)

    @property
    def positive_class(self) -> str:
        return self.class_names[self.positive_index]

    @property
    def unit_noun(self) -> str:
        """What one output column is called: `class`, or `finding` for a multi-label task."""
        return "finding" if self.multilabel else "class"

    @property
    def decision_rule(self) -> str:
        """One sentence: how probabilities become decisions."""
        if self.binary:
            return (
                f"{self.positive_class} when P({self.positive_class}) >= the threshold chosen "
                "on validation by the threshold policy"
            )
        if self.multiclass:
            return MULTICLASS_RULE
        return "each finding present when its probability >= its own threshold chosen on validation"

    @property
    def takes_threshold_policy(self) -> bool:
        """Whether an operating-point policy has a meaning (binary: one cut-off; multi-label: one
        per finding). A multi-class decision is the argmax (MULTICLASS_RULE)."""
        return not self.multiclass

    @property
    def table_metrics(self) -> tuple[str, ...]:
        """The comparison table's headline metrics, in order."""
        return _TABLE_METRICS[self.kind]

    @property
    def per_class_metrics(self) -> tuple[str, ...]:
        """The metrics of the per-class / per-finding breakdown (none for binary)."""
        return _PER_CLASS_METRICS[self.kind]

    @property
    def paired_tests(self) -> tuple[str, ...]:
        """The paired tests two runs on one test set get: McNemar on the decisions (binary,
        multi-class), DeLong on ROC-AUC (binary; per finding with Holm for multi-label)."""
        return _PAIRED_TESTS[self.kind]

    @property
    def primary_metric(self) -> str:
        """The threshold-free metric runs are ranked by: ROC-AUC (macro over classes/findings)."""
        return _PRIMARY_METRIC[self.kind]

    def probabilities(self, logits: Tensor) -> Tensor:
        """Probabilities (B, C) from logits (B, C): softmax over classes, or a sigmoid per
        finding (multi-label)."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """What a metric of this task scores: P(positive) (N,) of a binary task from (N, 2)
        probabilities (a (N,) input is taken as P(positive) already); (N, C) otherwise."""
        p = np.asarray(probabilities, dtype=np.float64)
        if self.binary and p.ndim == 2:
            return p[:, self.positive_index]
        return p

    def decide(
        self, probabilities: np.ndarray, thresholds: float | Sequence[float] | None
    ) -> np.ndarray:
        """Decisions from probabilities, by the task's rule.

        Binary: class indices (N,) from P(positive) (N,) or probabilities (N, 2), positive when
        P >= `thresholds` (one float). Multi-class: the argmax (N,) of (N, C); `thresholds` must
        be None. Multi-label: 0/1 (N, L) from (N, L), finding k present when p_k >= thresholds[k].
        Raises XrayError for thresholds the rule does not take.
        """
        p = np.asarray(probabilities, dtype=np.float64)
        if self.multiclass:
            if thresholds is not None:
                raise XrayError(MULTICLASS_RULE)
            return p.argmax(1).astype(np.int64)
        if thresholds is None:
            raise XrayError(f"a {self.kind} decision needs a threshold")
        if self.binary:
            t = float(cast(float, thresholds))
            pos = self.positive_index
            return np.where(self.scores(p) >= t, pos, 1 - pos).astype(np.int64)
        t_arr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
        return (p >= t_arr[None, :]).astype(np.int64)
