"""Recalibration of P(positive): Platt scaling on the logit, fitted on validation only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from featurestore.compare.metrics import (
    PROB_EPS,
    check_choosing_split,
    expected_calibration_error,
    log_loss_per_image,
)
from featurestore.errors import XrayError
from featurestore.tasks import Task

PLATT_C = 1e4
"""Inverse L2 strength on the scale: almost unpenalised (the soft targets do the work)."""


def logit(p_pos: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of (N,) probabilities clipped to [eps, 1 - eps] (finite everywhere).

    For a two-class softmax this is z_pos - z_neg, the head's own logit difference.
    """
    p = np.clip(np.asarray(p_pos, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """p' = sigmoid(scale * logit(p) + bias): Platt scaling on a binary head's logit.

    Platt (1999), "Probabilistic outputs for support vector machines", with the logit as the
    score; temperature scaling (Guo et al. 2017, ICML) is the special case bias = 0 and
    scale = 1 / T. A fitted scale and bias that would make validation ECE worse are replaced
    by the identity (method "identity"), so recalibration never degrades the split it saw.
    """

    method: str
    """"platt", or "identity" when the fit was not kept (see `note`)."""
    scale: float
    bias: float
    fitted_on: str
    """The split it was fitted on: "val" or "calibration" (never one that is reported)."""
    n: int
    """Images it was fitted on."""
    note: str = ""

    @property
    def notes(self) -> list[str]:
        """Why the fit kept the identity, when it did (as `LabelCalibration.notes`)."""
        return [self.note] if self.note else []

    @property
    def temperature(self) -> float:
        """1 / scale: the temperature of the logit (inf when the scale is 0)."""
        return float("inf") if self.scale == 0 else 1.0 / self.scale

    def apply(self, p_pos: np.ndarray) -> np.ndarray:
        """(N,) P(positive) -> (N,) recalibrated P(positive), float64."""
        if self.method == "identity":
            return np.asarray(p_pos, dtype=np.float64)
        z = self.scale * logit(p_pos) + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["temperature"] = self.temperature
        return out


IDENTITY = Calibration("identity", 1.0, 0.0, "val", 0, "not fitted")


def fit_calibration(
    y_true: np.ndarray, p_pos: np.ndarray, *, positive_index: int = 1, split: str = "val"
) -> Calibration:
    """Fit Platt scaling (scale, bias on the logit) by maximum likelihood on one split, with
    Platt's regularised targets (so a separable split gives a finite scale).

    y_true holds class indices (N,); p_pos the uncalibrated P(positive) (N,). A split with one
    class gives the identity (nothing to fit). scikit-learn's LogisticRegression does the fit.

    Raises:
        XrayError: when `split` is not validation or a local calibration set.
    """
    from sklearn.linear_model import LogisticRegression

    check_choosing_split(split, "a recalibration")
    y = (np.asarray(y_true) == positive_index).astype(np.int64)  # (N,)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true and p_pos must be non-empty 1-D of equal length: {y.shape}")
    if not np.isfinite(p).all():
        raise XrayError("predicted probabilities contain NaN/inf; retrain with a lower --lr")
    if not 0 < int(y.sum()) < y.size:
        return Calibration("identity", 1.0, 0.0, split, int(y.size), "one class only")
    # Platt's (1999, sec. 2.2) regularised targets instead of 0/1: (N+ + 1) / (N+ + 2) for a
    # positive, 1 / (N- + 2) for a negative. On a small, separable validation set the 0/1
    # maximum-likelihood scale runs off to infinity; these targets keep it finite and honest.
    # The soft-target cross-entropy is fitted as each image twice, weighted t and 1 - t.
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # (N,)
    z = logit(p)[:, None]  # (N, 1)
    model = LogisticRegression(C=PLATT_C, max_iter=1000).fit(
        np.concatenate([z, z]),
        np.r_[np.ones(y.size, np.int64), np.zeros(y.size, np.int64)],
        sample_weight=np.r_[target, 1 - target],
    )
    scale, bias = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not scale > 0:
        # A recalibration is monotone increasing by definition: a slope <= 0 would reverse (or
        # flatten) the model's ranking and change its ROC-AUC. Refused, said, scores kept.
        note = (
            f"the Platt fit on {split} had slope {scale:.4g} <= 0 (it would invert the model's "
            "ranking): refused, the uncalibrated scores are kept"
        )
        return Calibration("identity", 1.0, 0.0, split, int(y.size), note)
    fitted = Calibration("platt", scale, bias, split, int(y.size))
    before = expected_calibration_error(y, p)
    after = expected_calibration_error(y, fitted.apply(p))
    if after > before + 1e-12:
        note = f"the fit raised {split} ECE from {before:.4f} to {after:.4f}; kept the identity"
        return Calibration("identity", 1.0, 0.0, split, int(y.size), note)
    return fitted


def calibration_report(
    calibration: Calibration,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    positive_index: int = 1,
) -> dict[str, Any]:
    """metrics.json's `calibration`: the fit plus ECE and Brier before/after on each split.

    `splits` maps a split name to (labels (N,), uncalibrated P(positive) (N,)).
    """
    out = calibration.as_dict()
    for name, (labels, p) in splits.items():
        y = (np.asarray(labels) == positive_index).astype(np.float64)
        q = calibration.apply(p)
        out[name] = {
            "ece_before": expected_calibration_error(y, p),
            "ece_after": expected_calibration_error(y, q),
            "brier_before": float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)),
            "brier_after": float(np.mean((q - y) ** 2)),
        }
    return out


def calibration_from_dict(doc: Any) -> Calibration:
    """A Calibration read back from metrics.json; the identity when absent (older runs)."""
    if not isinstance(doc, dict):
        return IDENTITY
    try:
        return Calibration(
            str(doc["method"]),
            float(doc["scale"]),
            float(doc["bias"]),
            str(doc.get("fitted_on", "val")),
            int(doc.get("n", 0)),
            str(doc.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise XrayError(f"malformed calibration in metrics.json ({exc})") from None


TEMPERATURE_BOUNDS = (1e-2, 1e2)
"""The search interval of a fitted temperature (T = 1 lies inside, so the fit never raises NLL)."""


def _log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log p of (N, C) softmax outputs: the logits up to a per-row shift. Only an exact 0 (a
    float32 softmax underflows past a logit gap of ~100) is lifted, to the smallest normal
    float64, so small probabilities keep their own logits (a 1e-7 clip would distort them)."""
    tiny = np.finfo(np.float64).tiny
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), tiny, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(1, keepdims=True))


def top_label(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct (N,) 0/1, confidence (N,)): the top-label view of multi-class probabilities
    (N, C) whose ECE is Guo et al.'s (2017, sec. 2)."""
    return (probs.argmax(1) == y).astype(np.float64), probs.max(1)


def multiclass_nll(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices y (N,) under probabilities (N, C), in nats:
    sklearn's `log_loss` (`log_loss_per_image`)."""
    return float(np.mean(log_loss_per_image("multiclass", y_true, probs)))


@dataclass(frozen=True)
class Temperature:
    """p' = softmax(log p / T): temperature scaling of a multi-class softmax.

    Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural networks", ICML,
    sec. 4.2: one T > 0 divides every logit. log p differs from the logits by a constant per
    image, which the softmax removes, so scaling log p is scaling the logits. Dividing by T > 0
    keeps the order of each image's classes (its argmax never changes); the order of one class's
    probability across images can change when C > 2, so a class's one-vs-rest ROC-AUC may move.
    """

    method: str
    """"temperature", or "identity" when nothing was fitted (see `note`)."""
    temperature: float
    fitted_on: str
    """The split it was fitted on: "val" or "calibration" (never one that is reported)."""
    n: int
    """Images it was fitted on."""
    note: str = ""

    @property
    def notes(self) -> list[str]:
        """Why nothing was fitted, when nothing was (as `LabelCalibration.notes`)."""
        return [self.note] if self.note else []

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> (N, C) recalibrated probabilities, float64."""
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "identity":
            return p
        return _softmax(_log_probabilities(p) / self.temperature)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, *, split: str = "val") -> Temperature:
    """Fit one temperature by minimum NLL (Guo et al. 2017) on one split's class indices (N,)
    and softmax probabilities (N, C); bounded search over log T in `TEMPERATURE_BOUNDS`.

    Raises:
        XrayError: when `split` is not validation or a local calibration set, or the
            probabilities are not finite.
    """
    from scipy.optimize import minimize_scalar

    check_choosing_split(split, "a recalibration")
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or y.size == 0:
        raise ValueError(f"need y_true (N,) and probs (N, C), got {y.shape}, {p.shape}")
    if not np.isfinite(p).all():
        raise XrayError("predicted probabilities contain NaN/inf; retrain with a lower --lr")
    right = p.argmax(1) == y
    if right.all() or not right.any():
        # Every image right (or every one wrong): the NLL falls without end as T -> 0 (or
        # T -> inf), so no temperature is the maximum-likelihood one; nothing is fitted.
        how = "right" if right.all() else "wrong"
        note = (
            f"every {split} image is classified {how}, so the NLL has no minimum over T: "
            "the model's own softmax is kept"
        )
        return Temperature("identity", 1.0, split, int(y.size), note)
    z = _log_probabilities(p)  # (N, C)

    def nll(log_t: float) -> float:
        return multiclass_nll(y, _softmax(z / np.exp(log_t)))

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    best = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    log_t = float(best.x)
    if nll(log_t) > nll(0.0):  # the bounded search missed T = 1's basin: keep the model's own
        return Temperature("identity", 1.0, split, int(y.size), "the fit did not lower NLL")
    if min(log_t - lo, hi - log_t) < 0.05:
        note = (
            f"the NLL fit ran to the search bound (T = {np.exp(log_t):.3g}): {split} has too "
            "few errors to fix a temperature; the model's own softmax is kept"
        )
        return Temperature("identity", 1.0, split, int(y.size), note)
    note = ""
    return Temperature("temperature", float(np.exp(log_t)), split, int(y.size), note)


@dataclass(frozen=True)
class LabelCalibration:
    """Platt scaling per finding of a multi-label head (each sigmoid output on its own)."""

    per_label: dict[str, Calibration]
    """Finding -> its Platt fit (or the identity, with the reason in its note)."""

    @property
    def method(self) -> str:
        """ "platt per finding" when any finding was fitted, else "identity"."""
        fitted = any(c.method == "platt" for c in self.per_label.values())
        return "platt per finding" if fitted else "identity"

    @property
    def notes(self) -> list[str]:
        """`<finding>: <why it kept the identity>` for each finding not recalibrated."""
        return [f"{name}: {c.note}" for name, c in self.per_label.items() if c.note]

    def apply(
        self, probs: np.ndarray, names: list[str] | tuple[str, ...] | None = None
    ) -> np.ndarray:
        """(N, L) probabilities of the findings `names` (default: `per_label`'s, in order) ->
        (N, L) recalibrated, float64."""
        p = np.asarray(probs, dtype=np.float64)
        out = p.copy()
        for k, name in enumerate(self.per_label if names is None else names):
            out[:, k] = self.per_label.get(name, IDENTITY).apply(p[:, k])
        return out

    @property
    def fitted_on(self) -> str:
        """The split the per-finding fits were made on ("val" when there are none)."""
        return next((c.fitted_on for c in self.per_label.values()), "val")

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fitted_on": self.fitted_on,
            "per_label": {n: c.as_dict() for n, c in self.per_label.items()},
            "notes": self.notes,
        }


def fit_label_calibration(
    targets: np.ndarray, probs: np.ndarray, names: list[str] | tuple[str, ...], *, split: str
) -> LabelCalibration:
    """`fit_calibration` per finding over its observed entries: targets (N, L) of 1/0/NaN
    (masked), probabilities (N, L). A finding whose fit has slope <= 0 or raises ECE keeps the
    identity and says so (`LabelCalibration.notes`)."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    per_label: dict[str, Calibration] = {}
    for k, name in enumerate(names):
        mask = ~np.isnan(y[:, k])
        if not mask.any():
            per_label[name] = Calibration("identity", 1.0, 0.0, split, 0, "no observed label")
            continue
        per_label[name] = fit_calibration(
            y[mask, k].astype(np.int64), p[mask, k], positive_index=1, split=split
        )
    return LabelCalibration(per_label)


Recalibration = Calibration | Temperature | LabelCalibration
"""A task's recalibration: Platt scaling of P(positive) (binary), one temperature
(multi-class), Platt scaling per finding (multi-label). Each `apply` maps the task's scores
(`Task.scores`: (N,) P(positive), or (N, C)) to recalibrated scores of the same shape."""


def fit_recalibration(
    task: Task, y: np.ndarray, scores: np.ndarray, *, split: str
) -> Recalibration:
    """The task's recalibration fitted on one split (validation, or a local calibration set).

    y: (N,) class indices, or (N, L) 1/0/NaN targets; scores: `Task.scores` of the split's
    probabilities ((N,) P(positive) for binary, (N, C) otherwise).

    Raises:
        XrayError: when `split` is not validation or a local calibration set, or the scores are
            not finite.
    """
    if task.binary:
        return fit_calibration(y, scores, positive_index=task.positive_index, split=split)
    if task.multiclass:
        return fit_temperature(y, scores, split=split)
    return fit_label_calibration(y, scores, task.class_names, split=split)


def recalibration_from_record(task: Task, doc: Any) -> Recalibration:
    """The recalibration a run's metrics.json records (`calibration`), for the task's classes or
    findings; the identity where absent (older runs) or for a finding it does not name.

    Raises:
        XrayError: a malformed record.
    """
    if task.binary:
        return calibration_from_dict(doc)
    if not isinstance(doc, dict):
        doc = {}
    if task.multiclass:
        if doc.get("method") != "temperature":
            return Temperature("identity", 1.0, "val", 0, str(doc.get("note", "not fitted")))
        try:
            return Temperature("temperature", float(doc["temperature"]),
                               str(doc.get("fitted_on", "val")), int(doc.get("n", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise XrayError(f"malformed calibration in metrics.json ({exc})") from None
    per = doc.get("per_label") or {}
    return LabelCalibration({n: calibration_from_dict(per.get(n)) for n in task.class_names})


def _finding_eces(y: np.ndarray, p: np.ndarray) -> list[float | None]:
    """Each finding's ECE over its observed entries (None with none); y (N, L) 1/0/NaN."""
    out: list[float | None] = []
    for k in range(y.shape[1]):
        mask = ~np.isnan(y[:, k])
        out.append(expected_calibration_error(y[mask, k], p[mask, k]) if mask.any() else None)
    return out


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def recalibration_report(
    task: Task, fitted: Recalibration, scored: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """metrics.json's `calibration`: the fit, and its effect on each split of `scored`
    (split -> (labels (N,) or targets (N, L), uncalibrated `Task.scores`)).

    Binary: ECE and Brier of P(positive) before/after (`calibration_report`). Multi-class: the
    top-label ECE (Guo et al. 2017) and the NLL before/after. Multi-label: the mean over findings
    of each finding's ECE over its observed entries before/after, and each finding's own.
    """
    if isinstance(fitted, Calibration):
        return calibration_report(fitted, scored, positive_index=task.positive_index)
    out = fitted.as_dict()
    for split, (y, p) in scored.items():
        q = fitted.apply(p)
        if isinstance(fitted, Temperature):
            out[split] = {
                "ece_before": expected_calibration_error(*top_label(y, p)),
                "ece_after": expected_calibration_error(*top_label(y, q)),
                "nll_before": multiclass_nll(y, p),
                "nll_after": multiclass_nll(y, q),
            }
            continue
        before, after = _finding_eces(y, p), _finding_eces(y, q)
        out[split] = {
            "ece_before": _mean(before),
            "ece_after": _mean(after),
            "per_finding": {
                n: None if b is None else {"ece_before": b, "ece_after": a}
                for n, b, a in zip(task.class_names, before, after, strict=True)
            },
        }
    out["ece_of"] = ECE_OF[task.kind]
    return out


ECE_OF: dict[str, str] = {
    "binary": "P(positive)",
    "multiclass": "the top-label confidence (Guo et al. 2017)",
    "multilabel": "each finding's ECE over its observed labels, averaged over findings",
}
"""What a task's ECE is computed on."""


def reported_calibration(task: Task, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """ECE and Brier score of the probabilities a result reports, for every task.

    y: (N,) class indices or (N, L) 1/0/NaN targets; scores: `Task.scores` ((N,) or (N, C)).
    Binary: of P(positive). Multi-class: ECE of the top-label confidence (Guo et al. 2017); the
    Brier score summed over classes (Brier 1950), averaged over images. Multi-label: the mean
    over findings of each finding's ECE, the Brier score over the observed entries.
    Returns {"ece", "ece_of", "brier", "brier_of"}, None where undefined.
    """
    p = np.asarray(scores, dtype=np.float64)
    ece: float | None
    brier: float | None
    if task.binary:
        y_pos = (np.asarray(y) == task.positive_index).astype(np.float64)
        ece, brier = expected_calibration_error(y_pos, p), float(np.mean((p - y_pos) ** 2))
        brier_of = "(P(positive) - [y = positive])^2, averaged over images"
    elif task.multiclass:
        onehot = (np.asarray(y)[:, None] == np.arange(p.shape[1])).astype(np.float64)
        ece = expected_calibration_error(*top_label(np.asarray(y), p))
        brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
        brier_of = "the sum over classes of (p_k - [y = k])^2, averaged over images"
    else:
        t = np.asarray(y, dtype=np.float64)
        observed = ~np.isnan(t)
        ece = _mean(_finding_eces(t, p))
        brier = float(np.mean((p[observed] - t[observed]) ** 2)) if observed.any() else None
        brier_of = "(p - y)^2 over the observed (image, finding) labels"
    return {"ece": ece, "ece_of": ECE_OF[task.kind], "brier": brier, "brier_of": brier_of}
