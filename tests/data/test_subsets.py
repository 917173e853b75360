"""Label-efficiency subsets: nested, by patient, class-stratified, seeded."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featurestore.data import train_subsets
from featurestore.errors import XrayError


def cohort(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """300 patients with 1-4 images each; a third NORMAL (0), the rest PNEUMONIA (1)."""
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for p in range(300):
        label = 0 if p % 3 == 0 else 1
        for _ in range(int(rng.integers(1, 5))):
            groups.append(f"p{p}")
            labels.append(label)
    return groups, np.array(labels)


def test_fraction_subsets_are_nested_stratified_and_whole_patients() -> None:
    groups, labels = cohort()
    fractions = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    subs = train_subsets(groups, labels, fractions=fractions, seed=3)
    assert [s.fraction for s in subs] == list(fractions)
    g = np.array(groups)
    for small, large in itertools.pairwise(subs):
        assert set(small.indices) <= set(large.indices)  # nested
    for s in subs:
        inside = set(g[s.indices])
        # Whole patients: every image of a chosen patient is in, no image of another is.
        assert set(np.flatnonzero(np.isin(g, list(inside)))) == set(s.indices)
        # Stratified: each class keeps its share of patients (to one patient).
        for c, n_c in ((0, 100), (1, 200)):
            chosen = {p for p in inside if labels[g == p][0] == c}
            assert len(chosen) == max(1, int(np.ceil(s.fraction * n_c)))  # type: ignore[operator]
    assert len(subs[-1].indices) == len(groups)
    other = train_subsets(groups, labels, fractions=(0.1,), seed=4)[0]
    assert not np.array_equal(other.indices, subs[2].indices)  # the seed draws another subset
    again = train_subsets(groups, labels, fractions=(0.1,), seed=3)[0]
    assert np.array_equal(again.indices, subs[2].indices)  # ... and the same seed the same


def test_shots_take_k_images_per_class_nested() -> None:
    groups, labels = cohort()
    subs = train_subsets(groups, labels, shots=(1, 5, 20), seed=0)
    for s in subs:
        assert np.bincount(labels[s.indices]).tolist() == [s.shots, s.shots]
    assert set(subs[0].indices) <= set(subs[1].indices) <= set(subs[2].indices)
    with pytest.raises(XrayError, match="shots"):
        train_subsets(groups, labels, shots=(10_000,), seed=0)
    # The refusal names the class and the most it can take.
    with pytest.raises(XrayError, match=r"class NORMAL has only \d+ train images; ask for"):
        train_subsets(groups, labels, shots=(10_000,), seed=0, names=("NORMAL", "PNEUMONIA"))
    with pytest.raises(XrayError):
        train_subsets(groups, labels, fractions=(1.5,), seed=0)
