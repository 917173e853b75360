"""Classification heads over backbone features: linear, MLP, scikit-learn logistic regression."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor, nn

from featurestore.config import HEAD_KINDS
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from featurestore.train import FeatureSource

HeadKind = Literal["linear", "mlp", "logreg"]
LOGREG_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse regularisation strengths tried by the logistic-regression head."""


class MLPHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear: (N, in_dim) -> (N, n_classes)."""

    def __init__(self, in_dim: int, n_classes: int, *, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Standardize(nn.Module):
    """(x - mean) / std with the train-split statistics kept as buffers (saved in best.pt)."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean.detach().clone().float())  # (D,)
        self.register_buffer("std", std.detach().clone().float())  # (D,)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def build_head(
    kind: str, in_dim: int, n_classes: int, *, hidden: int = 512, dropout: float = 0.3
) -> nn.Module:
    """A fresh head: "linear" (one Linear) or "mlp" (see MLPHead); logreg heads are linear."""
    if in_dim < 1 or n_classes < 2:
        raise ValueError(f"need in_dim >= 1 and n_classes >= 2, got {in_dim}, {n_classes}")
    if kind in ("linear", "logreg"):
        return nn.Linear(in_dim, n_classes)
    if kind == "mlp":
        if not 0.0 <= dropout < 1.0:
            raise XrayError(f"dropout must lie in [0, 1), got {dropout}")
        return MLPHead(in_dim, n_classes, hidden=hidden, dropout=dropout)
    raise XrayError(f"unknown head {kind!r}; choose one of: {', '.join(HEAD_KINDS)}")


def export_head(head: nn.Module, mean: Tensor, std: Tensor) -> nn.Module:
    """The deployable frozen-mode head: standardisation then head (`standardize.*`, `head.*`)."""
    return nn.Sequential(OrderedDict(standardize=Standardize(mean, std), head=head))


@dataclass(frozen=True)
class LogregFit:
    """A logistic-regression head and its validation sweep over C."""

    head: nn.Linear
    """(N, D) -> (N, C) logits equivalent to the fitted model: binary, two outputs with the
    negative logit fixed at 0; multi-class, the multinomial model's C logits; multi-label, one
    logit per finding (its own binary model)."""
    C: float
    """The inverse regularisation strength chosen on validation AUC."""
    history: list[dict[str, float]]
    """One row per C tried, in the history.csv layout plus a `C` column (`epoch` = index of
    the C, `lr` = NaN: there is no learning rate)."""


def fit_logreg(
    source: FeatureSource, *, seed: int = 0, Cs: Sequence[float] = LOGREG_CS, balanced: bool = True
) -> LogregFit:
    """Fit scikit-learn logistic regressions over `Cs` on train; keep the best validation AUC.

    Binary: one logistic regression. Multi-class: the multinomial (softmax) model, selected on
    the macro one-vs-rest AUC. Multi-label: one binary model per finding over its observed
    (non-NaN) train entries, one C shared by the findings, selected on the mean AUC over the
    findings where it is defined. A validation split where the AUC is undefined: the C with the
    lowest validation loss is kept.

    Raises:
        XrayError: a class absent from train (multi-class), or no finding with both a
        positive and a negative observed train entry (multi-label).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    from featurestore.train.objectives import source_task

    if source_task(source) != "binary" or len(source.class_names) != 2:
        return _fit_logreg_multi(source, seed=seed, Cs=Cs, balanced=balanced)
    x_train, y_train = (t.numpy() for t in source.arrays("train"))
    x_val, y_val = (t.numpy() for t in source.arrays("val"))
    pos = source.positive_index
    rows: list[dict[str, float]] = []
    best: tuple[float, float, LogisticRegression] | None = None
    for i, c in enumerate(Cs, start=1):
        clf = LogisticRegression(
            C=c,
            max_iter=2000,
            class_weight="balanced" if balanced else None,
            random_state=seed,
        )
        clf.fit(x_train, y_train)
        row: dict[str, float] = {"epoch": i, "lr": float("nan"), "C": float(c)}
        for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
            proba = clf.predict_proba(x)  # (N, 2), columns in clf.classes_ order
            pred = clf.classes_[proba.argmax(1)]
            row[f"{split}_loss"] = float(log_loss(y, proba, labels=clf.classes_))
            row[f"{split}_acc"] = float(accuracy_score(y, pred))
            row[f"{split}_f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
        p_val = clf.predict_proba(x_val)[:, list(clf.classes_).index(pos)]
        auc = float(roc_auc_score(y_val == pos, p_val)) if len(np.unique(y_val)) == 2 else np.nan
        row["val_auc"] = auc
        row["seconds"] = 0.0
        rows.append(row)
        # One-class validation leaves AUC undefined: select on validation loss, never on NaN
        # (that would silently keep the first C).
        score = -row["val_loss"] if np.isnan(auc) else auc
        if best is None or score > best[0]:
            best = (score, c, clf)
    assert best is not None
    _, c_best, clf = best
    # sklearn's binary model is one logit w.x + b for classes_[1]; softmax over (0, w.x + b)
    # gives exactly sigmoid(w.x + b), so a 2-output Linear with a zero row reproduces it.
    head = nn.Linear(x_train.shape[1], 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        k = int(clf.classes_[1])
        head.weight[k] = torch.from_numpy(clf.coef_[0].astype(np.float32))
        head.bias[k] = float(clf.intercept_[0])
    return LogregFit(head=head, C=float(c_best), history=rows)


def _fit_logreg_multi(
    source: FeatureSource, *, seed: int, Cs: Sequence[float], balanced: bool
) -> LogregFit:
    """`fit_logreg` for multi-class and multi-label sources (see there). The history rows are
    the single trainer's (`train.loop` summaries of the head's own logits), so every task's
    history.csv reads alike."""
    from sklearn.linear_model import LogisticRegression

    from featurestore.tasks import Task
    from featurestore.train.loop import _summary
    from featurestore.train.objectives import source_task, summed_loss

    task = Task.from_classes(
        source.class_names,
        multilabel=source_task(source) == "multilabel",
        positive_index=source.positive_index,
    )
    x_train, y_train = (t.numpy() for t in source.arrays("train"))
    n_out, dim = task.n_outputs, x_train.shape[1]
    if task.multiclass:
        missing = [n for k, n in enumerate(task.class_names) if not (y_train == k).any()]
        if missing:
            raise XrayError(
                f"the logreg head needs train images of every class; {', '.join(missing)} has none"
            )
    else:
        observed = ~np.isnan(y_train)
        fittable = [k for k in range(n_out) if len(np.unique(y_train[observed[:, k], k])) == 2]
        if not fittable:
            raise XrayError(
                "the logreg head needs a finding with positive and negative train images; "
                "none has both"
            )
    rows: list[dict[str, float]] = []
    best: tuple[float, float, nn.Linear] | None = None
    for i, c in enumerate(Cs, start=1):
        head = nn.Linear(dim, n_out)
        weight = np.zeros((n_out, dim), dtype=np.float64)
        bias = np.zeros(n_out, dtype=np.float64)
        if task.multiclass:
            # lbfgs fits the multinomial (softmax) model for three or more classes.
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed,
                                     class_weight="balanced" if balanced else None)  # fmt: skip
            clf.fit(x_train, y_train)
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
        else:
            for k in range(n_out):
                mask = observed[:, k]
                if k not in fittable:
                    # One class only among the observed entries: a constant logit at that
                    # class's side (the finding is learnt as always absent, or present).
                    present = bool(mask.any()) and bool(y_train[mask, k].max() == 1.0)
                    bias[k] = 10.0 if present else -10.0
                    continue
                clf = LogisticRegression(C=c, max_iter=2000, random_state=seed,
                                         class_weight="balanced" if balanced else None)  # fmt: skip
                clf.fit(x_train[mask], y_train[mask, k] == 1.0)
                weight[k], bias[k] = clf.coef_[0], clf.intercept_[0]
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        row: dict[str, float] = {"epoch": i, "lr": float("nan"), "C": float(c)}
        for split in ("train", "val"):
            x, y = source.arrays(split)
            with torch.no_grad():
                logits = head(x).float()  # (N, C)
            probs = task.probabilities(logits).double().numpy()
            summary = _summary(probs, y.numpy(), source.positive_index)
            row[f"{split}_loss"] = summed_loss(logits, y, task.kind) / len(y)
            row[f"{split}_acc"], row[f"{split}_f1"] = summary["acc"], summary["f1"]
            if split == "val":
                row["val_auc"] = summary["auc"]
        row["seconds"] = 0.0
        rows.append(row)
        auc = row["val_auc"]
        score = -row["val_loss"] if np.isnan(auc) else auc  # NaN never selects (as binary)
        if best is None or score > best[0]:
            best = (score, c, head)
    assert best is not None
    return LogregFit(head=best[2], C=float(best[1]), history=rows)


class TrunkHead(nn.Module):
    """Backbone trunk then head: (N, 3, H, W) -> trunk -> (N, D) -> head -> (N, C) logits.

    Parameters are named `trunk.*` and `head.*` (the trainer gives `trunk.*` a lower lr).
    Norm layers of frozen parts stay in eval mode through `train()`, so their running
    statistics are frozen too.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.frozen_norms: list[str] = []
        """Names (in `trunk`) of norm modules kept in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))

    def train(self, mode: bool = True) -> TrunkHead:
        super().train(mode)
        for name in self.frozen_norms:
            self.trunk.get_submodule(name).eval()
        return self


FREEZE_POLICIES: tuple[str, ...] = ("none", "head-only")
"""Besides these, a stage name freezes the trunk up to and including that stage."""


def apply_freeze(model: TrunkHead, stages: Sequence[str], policy: str) -> None:
    """Freeze none, all of the trunk ("head-only"), or the trunk up to a named stage inclusive.

    A stage freeze covers everything registered before the next stage (the stem, transitions),
    or the whole named stage when it is the last one.
    """
    names = [n for n, _ in model.trunk.named_parameters()]
    if policy == "none":
        frozen: set[str] = set()
    elif policy == "head-only":
        frozen = set(names)
    elif policy in stages:
        i = list(stages).index(policy)
        if i + 1 < len(stages):
            nxt = stages[i + 1] + "."
            cut = next((k for k, n in enumerate(names) if n.startswith(nxt)), len(names))
        else:
            inside = [k for k, n in enumerate(names) if n.startswith(policy + ".")]
            cut = inside[-1] + 1 if inside else 0
        frozen = set(names[:cut])
    else:
        raise XrayError(
            f"unknown --freeze {policy!r}; choose none, head-only or a stage: {', '.join(stages)}"
        )
    for name, param in model.trunk.named_parameters():
        param.requires_grad_(name not in frozen)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    model.frozen_norms = [
        name
        for name, module in model.trunk.named_modules()
        if isinstance(module, norms)
        and any(True for _ in module.parameters())
        and all(f"{name}.{p}" in frozen for p, _ in module.named_parameters())
    ]
    model.train(model.training)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
