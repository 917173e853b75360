"""Statistics of external validation: local calibration patients, patient-bootstrap
intervals, and the difference between an external and the internal test result."""

from __future__ import annotations

from typing import Any

import numpy as np

from featurestore.compare.bootstrap import percentile_interval
from featurestore.errors import XrayError


def calibration_patients(
    groups: np.ndarray | list[str],
    n: int,
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) bool mask of the images of `n` patients drawn at random (seeded) from `groups`.

    Whole patients move: no patient has images on both sides, so the evaluated images never
    share a patient with the images the recalibration and threshold were chosen on. With
    `labels` (N,) the draw is stratified by each patient's most frequent label: classes get
    seats in proportion to their patients (largest remainder), at least one each when `n`
    allows, so a small calibration set still holds both classes.

    Raises:
        XrayError: when `n` < 1 or the split does not have more than `n` patients.
    """
    g = np.asarray(groups).astype(str)
    patients, inverse = np.unique(g, return_inverse=True)  # sorted: independent of file order
    if n < 1:
        raise XrayError(f"--recalibrate takes at least 1 patient, got {n}")
    if n >= patients.size:
        raise XrayError(
            f"--recalibrate {n} would take every patient of the split ({patients.size}): "
            "leave some patients to evaluate"
        )
    rng = np.random.default_rng(seed)
    if labels is None:
        chosen = rng.choice(patients.size, size=n, replace=False)
        return np.isin(inverse, chosen)
    y = np.asarray(labels).astype(np.int64)
    counts = np.zeros((patients.size, int(y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (inverse, y), 1)
    patient_class = counts.argmax(1)  # (P,)
    classes, members = np.unique(patient_class, return_counts=True)
    quota = n * members / members.sum()
    seats = np.floor(quota).astype(np.int64)
    if n >= classes.size:
        seats = np.maximum(seats, 1)
    while seats.sum() > n:  # the minimum of one seat overshot: take from the largest
        seats[np.argmax(seats)] -= 1
    for k in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if seats.sum() >= n:
            break
        seats[k] += 1
    seats = np.minimum(seats, members)
    chosen_list: list[int] = []
    for c, k in zip(classes, seats, strict=True):
        pool = np.flatnonzero(patient_class == c)
        chosen_list.extend(rng.choice(pool, size=int(k), replace=False).tolist())
    return np.isin(inverse, np.array(chosen_list, dtype=np.int64))


def replicate_difference(
    external: tuple[float | None, np.ndarray],
    internal: tuple[float | None, np.ndarray],
    *,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """external - internal from each side's (estimate, replicates (B,)) drawn by two
    independent patient bootstraps (Efron & Tibshirani 1993, sec. 8.3; the test sets share no
    image, so the difference is unpaired): percentile interval of the pairwise replicate
    differences.
    Returns {external, internal, difference, lo, hi}, None where undefined."""
    est_e, rep_e = external
    est_i, rep_i = internal
    defined_e = est_e is not None and bool(np.isfinite(est_e))
    defined_i = est_i is not None and bool(np.isfinite(est_i))
    out: dict[str, Any] = {
        "external": float(est_e) if defined_e and est_e is not None else None,
        "internal": float(est_i) if defined_i and est_i is not None else None,
        "difference": None,
        "lo": None,
        "hi": None,
    }
    if out["external"] is None or out["internal"] is None:
        return out
    out["difference"] = out["external"] - out["internal"]
    d = np.asarray(rep_e, dtype=np.float64) - np.asarray(rep_i, dtype=np.float64)
    out["lo"], out["hi"] = percentile_interval(d, alpha) or (None, None)
    return out
