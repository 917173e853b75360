"""Label-efficiency subsets of train: by patient, stratified by class (or covering every
finding of a multi-label dataset), seeded."""

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
    rule: str = "stratified by class"
    """How the subset was drawn, one sentence (config.json records it)."""
    positives: dict[str, int] | None = None
    """Multi-label only: positive images of each finding in the subset."""
    notes: tuple[str, ...] = ()
    """One line per finding the subset could not give a positive (or a negative)."""

    def task_record(self) -> dict[str, object]:
        """What config.json adds for a multi-label subset: the rule it was drawn by, the
        positive images of each finding, a line per finding left without a positive (empty
        for a single-label subset, whose config.json stays as it was)."""
        if self.positives is None:
            return {}
        return {
            "subset_rule": self.rule,
            "subset_positives": self.positives,
            "subset_notes": list(self.notes),
        }

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
    names: Sequence[str] | None = None,
) -> list[TrainSubset]:
    """Nested subsets of the train rows, smallest first (fractions, then shots).

    Each class's patients are shuffled once with `seed`; a fraction f takes the first
    ceil(f * n_c) patients of every class c (at least one), K shots take the first patients of
    class c until K images of c are in (the last patient's surplus images of c left out). A
    smaller subset is therefore the prefix of a larger one: nested, and a patient's images move
    together (no patient split between subset and the rest of train). Validation and test
    rows are never passed here, so subsets stay patient-disjoint from them by construction.

    Multi-label targets (N, L) cannot be stratified by one class: see `multilabel_subsets`,
    which `labels` of two dimensions are passed to (with `names`, the findings).

    Args:
        groups: (N,) patient id of each train row.
        labels: (N,) int64 class index of each train row, or (N, L) multi-label targets.

    Raises:
        XrayError: a fraction outside (0, 1], shots < 1, or more shots than a class has.
    """
    if np.ndim(labels) == 2:
        return multilabel_subsets(groups, labels, fractions=fractions, shots=shots, seed=seed,
                                  names=names)  # fmt: skip
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
                name = names[c] if names is not None and c < len(names) else f"index {c}"
                raise XrayError(
                    f"--shots {k}: class {name} has only {taken} train images; ask for "
                    f"{taken} shots or fewer"
                )
        idx = np.sort(np.concatenate(picked))
        out.append(TrainSubset(None, int(k), idx, len(patients)))
    return out


MULTILABEL_FRACTION_RULE = (
    "multi-label, by patient: patients in a seeded order; first, for each finding from the "
    "rarest, the first patient with a positive image of it and the first with a negative one "
    "(where train has them), then further patients in that order until the fraction of train "
    "patients is reached"
)
MULTILABEL_SHOTS_RULE = (
    "multi-label, by image: for each finding from the rarest, its positive images taken in the "
    "seeded patient order until the subset holds K of them, then K images with no positive "
    "finding (the negatives), and one negative image for any finding still without one"
)


def multilabel_subsets(
    groups: Sequence[str],
    targets: np.ndarray,
    *,
    fractions: Sequence[float] = (),
    shots: Sequence[int] = (),
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[TrainSubset]:
    """Subsets of multi-label train rows (fractions, then shots), smallest first.

    A multi-label image has several findings, so it sits in no single stratum. The rule is a
    simpler, stated cousin of iterative stratification (Sechidis et al., ECML PKDD 2011): the
    rarest findings are served first so each gets a positive and a negative where train has
    them (MULTILABEL_FRACTION_RULE, MULTILABEL_SHOTS_RULE). Fractions move whole patients and
    are nested (the covering patients are the same for every fraction, the rest a prefix of one
    order); a tiny fraction may hold more patients than asked so that every finding is covered.
    `--shots K` means K positive images per finding (fewer where train has fewer: said in
    `notes`), plus K images without any positive finding; shots subsets are not nested.

    Args:
        groups: (N,) patient id of each train row.
        targets: (N, L) float, 1 present, 0 absent, NaN masked.
        names: the L findings (for the notes); `finding k` when None.

    Raises:
        XrayError: a fraction outside (0, 1] or shots < 1.
    """
    groups_a = np.asarray(list(groups))
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim != 2 or len(groups_a) != len(y):
        raise ValueError("targets must be (N, L) with one group per row")
    n_labels = y.shape[1]
    label_names = list(names) if names is not None else [f"finding {k}" for k in range(n_labels)]
    pos, neg = y == 1.0, y == 0.0  # (N, L); NaN is neither
    uniq, inverse = np.unique(groups_a, return_inverse=True)  # sorted patients
    patients = [str(p) for p in uniq]
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    by_patient = np.argsort(inverse, kind="stable")  # rows grouped by patient, in row order
    bounds = np.searchsorted(inverse[by_patient], np.arange(len(patients) + 1))
    rows_of = {p: by_patient[bounds[i] : bounds[i + 1]] for i, p in enumerate(patients)}
    # The rarest finding first (fewest positive images, then index): it has the fewest
    # patients to cover it, so it must not be left to chance.
    rarity = sorted(range(n_labels), key=lambda k: (int(pos[:, k].sum()), k))
    out: list[TrainSubset] = []
    for f in sorted(fractions):
        if not 0.0 < f <= 1.0:
            raise XrayError(f"--train-fraction takes numbers in (0, 1], got {f}")
        chosen: dict[str, None] = {}
        for k in rarity:
            for has in (pos, neg):
                if any(has[rows_of[p], k].any() for p in chosen):
                    continue
                first = next((p for p in order if has[rows_of[p], k].any()), None)
                if first is not None:
                    chosen[first] = None
        target = max(1, math.ceil(f * len(patients)))
        for p in order:
            if len(chosen) >= target:
                break
            chosen.setdefault(p, None)
        idx = np.sort(np.concatenate([rows_of[p] for p in chosen]))
        out.append(_multilabel_subset(idx, len(chosen), y, label_names, fraction=float(f)))
    for k_shots in sorted(shots):
        if k_shots < 1:
            raise XrayError(f"--shots takes whole numbers >= 1, got {k_shots}")
        picked: dict[int, None] = {}
        in_order = np.concatenate([rows_of[p] for p in order])  # rows in seeded patient order
        for k in rarity:
            have = sum(bool(pos[i, k]) for i in picked)
            for i in in_order:
                if have >= k_shots:
                    break
                if pos[i, k] and i not in picked:
                    picked[int(i)] = None
                    have += 1
        clear = ~pos.any(1) & neg.any(1)  # (N,) images with no positive finding
        none_positive = [int(i) for i in in_order[clear[in_order]]]
        for i in none_positive[:k_shots]:
            picked[i] = None
        for k in rarity:
            if not any(neg[i, k] for i in picked):
                spare = next((int(i) for i in in_order if neg[i, k]), None)
                if spare is not None:
                    picked[spare] = None
        idx = np.sort(np.fromiter(picked, dtype=np.int64))
        n_patients = len(set(groups_a[idx].tolist()))
        out.append(_multilabel_subset(idx, n_patients, y, label_names, shots=int(k_shots)))
    return out


def _multilabel_subset(
    idx: np.ndarray,
    n_patients: int,
    y: np.ndarray,
    names: list[str],
    *,
    fraction: float | None = None,
    shots: int | None = None,
) -> TrainSubset:
    """The TrainSubset of multi-label rows `idx`, with its positives per finding and a note for
    each finding left without a positive (or negative, or short of the K shots asked)."""
    sub = y[idx]
    n_pos = (sub == 1.0).sum(0)
    n_neg = (sub == 0.0).sum(0)
    notes = []
    for k, name in enumerate(names):
        if n_pos[k] == 0:
            notes.append(
                f"{name}: no positive image in this train subset (train has "
                f"{int((y[:, k] == 1.0).sum())}); the head learns it as absent"
            )
        elif shots is not None and n_pos[k] < shots:
            notes.append(f"{name}: {int(n_pos[k])} positive images, fewer than the {shots} asked "
                         "(all train has)")  # fmt: skip
        if n_neg[k] == 0:
            notes.append(f"{name}: no negative image in this train subset")
    return TrainSubset(
        fraction,
        shots,
        idx.astype(np.int64),
        n_patients,
        rule=MULTILABEL_SHOTS_RULE if shots is not None else MULTILABEL_FRACTION_RULE,
        positives={n: int(c) for n, c in zip(names, n_pos, strict=True)},
        notes=tuple(notes),
    )
