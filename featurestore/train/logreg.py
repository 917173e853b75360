"""The logistic-regression head on cached features (scikit-learn), for every task: fitted over
a grid of C on train, C kept on validation AUC, returned as an equivalent `nn.Linear`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featurestore.errors import XrayError
from featurestore.train.sources import FeatureSource

LOGREG_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse regularisation strengths tried by the logistic-regression head."""


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
    from featurestore.train.objectives import scored_images, source_task, summed_loss

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
            row[f"{split}_loss"] = summed_loss(logits, y, task.kind) / scored_images(y, task.kind)
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
