"""Label-efficiency subsets of train: by patient, stratified by class, seeded, nested."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurestore.errors import XrayError


@dataclass(frozen=True)
class TrainSubset:
    """Which train rows one label-efficiency run trains on."""

    fraction: float | None
    """The fraction of each class's train patients asked for (None for a shots subset)."""
    shots: int | None
    """The images per class asked for (None for a fraction subset)."""
    indices: np.ndarray
    """(n,) int64 sorted row indices into the train split."""
    patients: int
    """Patients the subset draws from."""

    @property
    def tag(self) -> str:
        """`f0.1` or `k5`: names the run and its label in compare."""
        return f"k{self.shots}" if self.shots is not None else f"f{self.fraction:g}"


def _patient_order(groups: np.ndarray, labels: np.ndarray, seed: int) -> dict[int, list[str]]:
    """Class -> its patients in a seeded random order. A patient's class is the label of most
    of their images (ties: the smaller class index), so each patient sits in one stratum."""
    patients = sorted(set(groups.tolist()))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for patient in patients:
        counts = np.bincount(labels[groups == patient])
        by_class.setdefault(int(np.argmax(counts)), []).append(patient)
    return {c: [ps[i] for i in rng.permutation(len(ps))] for c, ps in sorted(by_class.items())}


def train_subsets(
    groups: Sequence[str],
    labels: np.ndarray,
    *,
    fractions: Sequence[float] = (),
    shots: Sequence[int] = (),
    seed: int = 0,
) -> list[TrainSubset]:
    """Nested subsets of the train rows, smallest first (fractions, then shots).

    Each class's patients are shuffled once with `seed`; a fraction f takes the first
    ceil(f * n_c) patients of every class c (at least one), K shots take the first patients of
    class c until K images of c are in (the last patient's surplus images of c left out). A
    smaller subset is therefore the prefix of a larger one: nested, and a patient's images move
    together (no patient split between subset and the rest of train). Validation and test
    rows are never passed here, so subsets stay patient-disjoint from them by construction.

    Args:
        groups: (N,) patient id of each train row.
        labels: (N,) int64 class index of each train row.

    Raises:
        XrayError: a fraction outside (0, 1], shots < 1, or more shots than a class has.
    """
    groups_a = np.asarray(list(groups))
    labels_a = np.asarray(labels, dtype=np.int64)
    if len(groups_a) != len(labels_a):
        raise ValueError("groups and labels differ in length")
    order = _patient_order(groups_a, labels_a, seed)
    rows_of = {p: np.flatnonzero(groups_a == p) for ps in order.values() for p in ps}
    out: list[TrainSubset] = []
    for f in sorted(fractions):
        if not 0.0 < f <= 1.0:
            raise XrayError(f"--train-fraction takes numbers in (0, 1], got {f}")
        chosen = [p for ps in order.values() for p in ps[: max(1, math.ceil(f * len(ps)))]]
        idx = np.sort(np.concatenate([rows_of[p] for p in chosen]))
        out.append(TrainSubset(float(f), None, idx, len(chosen)))
    for k in sorted(shots):
        if k < 1:
            raise XrayError(f"--shots takes whole numbers >= 1, got {k}")
        picked: list[np.ndarray] = []
        patients: set[str] = set()
        for c in sorted(order):
            # Class c's own stratum in its seeded order: the same prefix for every K (nested).
            taken = 0
            for p in order[c]:
                rows = rows_of[p][labels_a[rows_of[p]] == c]
                if taken >= k:
                    break
                picked.append(rows[: k - taken])
                taken += len(rows[: k - taken])
                patients.add(p)
            if taken < k:
                raise XrayError(
                    f"--shots {k}: class index {c} has only {taken} train images of its "
                    "patients; ask for fewer shots"
                )
        idx = np.sort(np.concatenate(picked))
        out.append(TrainSubset(None, int(k), idx, len(patients)))
    return out
