"""Label-efficiency subsets for every task: binary, multi-class and multi-label."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featurestore.data import MULTILABEL_FRACTION_RULE, train_subsets
from featurestore.tasks import TASK_KINDS

NAMES = ("Effusion", "Mass", "Hernia")


def cohort(kind: str, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """200 patients of 1-3 images. Single-label: class index per image (2 or 3 classes).
    Multi-label: (N, 3) targets, prevalences 0.3 / 0.1 and a rare finding on 2 images, ~10%
    of the entries masked (NaN)."""
    rng = np.random.default_rng(seed)
    groups: list[str] = []
    for p in range(200):
        groups += [f"p{p}"] * int(rng.integers(1, 4))
    n = len(groups)
    if kind != "multilabel":
        return groups, rng.integers(0, 2 if kind == "binary" else 3, n)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.0]).astype(np.float64)
    y[rng.random((n, 3)) < 0.1] = np.nan
    y[[n // 2, n - 1], 2] = 1.0  # Hernia: two positive images, of two patients far apart
    return groups, y


def _positives(labels: np.ndarray, idx: np.ndarray, k: int) -> int:
    sub = labels[idx]
    return int((sub[:, k] == 1.0).sum()) if sub.ndim == 2 else int((sub == k).sum())


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_fractions_are_nested_whole_patients_with_every_class_or_finding(kind: str) -> None:
    groups, labels = cohort(kind)
    g = np.array(groups)
    subs = train_subsets(groups, labels, fractions=(0.02, 0.1, 0.5, 1.0), seed=4, names=NAMES)
    for small, large in itertools.pairwise(subs):
        assert set(small.indices) <= set(large.indices)
    n_out = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    for s in subs:
        inside = set(g[s.indices])
        assert set(np.flatnonzero(np.isin(g, list(inside)))) == set(s.indices)
        assert s.patients == len(inside)
        assert s.patients >= np.ceil(s.fraction * 200)  # type: ignore[operator]
        for k in range(n_out):  # a positive (and, multi-label, a negative) of every output
            assert _positives(labels, s.indices, k) > 0
            if labels.ndim == 2:
                assert (labels[s.indices, k] == 0.0).any()
    assert len(subs[-1].indices) == len(groups)
    if kind == "multilabel":
        assert subs[0].rule == MULTILABEL_FRACTION_RULE and not subs[0].notes
        assert subs[0].positives == {
            n: _positives(labels, subs[0].indices, k) for k, n in enumerate(NAMES)
        }
        assert set(subs[0].task_record()) == {"subset_rule", "subset_positives", "subset_notes"}
    else:
        assert subs[0].positives is None and subs[0].task_record() == {}


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_shots_take_k_positive_images_per_class_or_finding(kind: str) -> None:
    groups, labels = cohort(kind, seed=1)
    (s,) = train_subsets(groups, labels, shots=(5,), seed=2, names=NAMES)
    if kind != "multilabel":
        for c in range(int(labels.max()) + 1):
            assert _positives(labels, s.indices, c) == 5
        return
    # At least K positives of each finding that has them (co-occurrence may add some), K
    # images without any positive, and a line for the finding short of K.
    assert _positives(labels, s.indices, 0) >= 5 and _positives(labels, s.indices, 1) >= 5
    assert _positives(labels, s.indices, 2) == 2
    sub = labels[s.indices]
    assert int((~(sub == 1.0).any(1)).sum()) >= 5
    assert len(s.notes) == 1 and s.notes[0].startswith("Hernia: 2 positive images")
    assert s.positives["Hernia"] == 2  # type: ignore[index]


def test_a_finding_without_a_train_positive_is_said_in_one_line() -> None:
    groups, labels = cohort("multilabel")
    labels[:, 2] = np.where(np.isnan(labels[:, 2]), np.nan, 0.0)
    (s,) = train_subsets(groups, labels, fractions=(0.1,), seed=0, names=NAMES)
    assert s.notes == ("Hernia: no positive image in this train subset (train has 0); the head "
                       "learns it as absent",)  # fmt: skip


def test_the_same_seed_draws_the_same_multilabel_subset() -> None:
    groups, labels = cohort("multilabel")
    a = train_subsets(groups, labels, fractions=(0.1,), shots=(3,), seed=7, names=NAMES)
    b = train_subsets(groups, labels, fractions=(0.1,), shots=(3,), seed=7, names=NAMES)
    c = train_subsets(groups, labels, fractions=(0.1,), seed=8, names=NAMES)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].indices, c[0].indices)
