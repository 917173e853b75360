"""Head sweeps for every task: each member equals the same head trained alone by `fit`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from featurestore.config import SweepConfig
from featurestore.models import build_head
from featurestore.tasks import TASK_KINDS
from featurestore.train import FeatureSource, FeatureSplit, TrainConfig, fit, fit_sweep

torch.set_num_threads(1)
CFG = TrainConfig(epochs=5, lr=1e-2, batch_size=32, patience=3, device="cpu")
GRID = SweepConfig(lrs=(1e-3, 3e-2), weight_decays=(0.0, 1e-2), heads=("linear",))


def task_source(kind: str, seed: int = 0, dim: int = 8) -> FeatureSource:
    """A small separable source of `kind`: train 160, val 60, test 60 rows, patients of two
    rows; multi-label: three findings of unequal prevalence co-occurring freely, ~10% of
    entries masked (NaN)."""
    rng = np.random.default_rng(seed)
    n_out = {"binary": 2, "multiclass": 3, "multilabel": 3}[kind]
    splits = {}
    for split, n in (("train", 160), ("val", 60), ("test", 60)):
        x = rng.normal(size=(n, dim))
        if kind == "multilabel":
            # Prevalences 0.2 / 0.4 / 0.6: positive weights far from 1.
            y = (rng.random((n, n_out)) < [0.2, 0.4, 0.6]).astype(np.float32)
            x[:, :n_out] += 1.5 * y
            y[rng.random((n, n_out)) < 0.1] = np.nan
            labels, targets = np.zeros(n, np.int64), y
        else:
            labels = rng.integers(0, n_out, n)
            x[np.arange(n), labels] += 1.5
            targets = None
        splits[split] = FeatureSplit(
            x.astype(np.float32), labels, [f"{split}/{i}" for i in range(n)],
            [f"{split}-{i // 2}" for i in range(n)], targets=targets,
        )  # fmt: skip
    names = {
        "binary": ("NORMAL", "PNEUMONIA"),
        "multiclass": ("NORMAL", "BACTERIA", "VIRUS"),
        "multilabel": ("Effusion", "Mass", "Nodule"),
    }[kind]
    return FeatureSource(splits, class_names=names, positive_index=len(names) - 1, batch_size=32)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_member_and_the_winner_equal_heads_trained_alone(kind: str) -> None:
    source = task_source(kind)
    swept = fit_sweep(source, CFG, GRID)
    n_out = len(source.class_names)
    for g, (_, lr, wd) in enumerate(GRID.members()):
        torch.manual_seed(CFG.seed)
        alone = fit(build_head("linear", source.feature_dim, n_out), source,
                    replace(CFG, lr=lr, weight_decay=wd))  # fmt: skip
        row = swept.rows[g]
        assert (row["best_epoch"], row["epochs_run"]) == (alone.best_epoch, alone.epochs_run)
        best = alone.history[alone.best_epoch - 1]
        for key in ("val_loss", "val_acc", "val_f1", "val_auc"):
            assert row[key] == pytest.approx(best[key], abs=1e-5), key
        if not row["chosen"]:
            continue
        assert swept.result.task == alone.task == ("binary" if kind == "binary" else kind)
        for a, b in zip(swept.result.history, alone.history, strict=True):
            for key in ("train_loss", "train_acc", "train_f1", "val_auc"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
        # The winner is concluded as a single head: same test metrics, same decisions.
        assert _close(swept.result.test, alone.test)
        assert _close(swept.result.threshold, alone.threshold)
        for split in ("val", "test"):
            ours, theirs = swept.result.predictions[split], alone.predictions[split]
            np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)
            assert np.array_equal(ours.predictions, theirs.predictions)


def _close(a: object, b: object, tol: float = 1e-5) -> bool:
    """Nested JSON documents equal, floats within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, (float, int)):
        return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol
    return a == b


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_the_chosen_member_has_the_best_validation_monitor(kind: str) -> None:
    swept = fit_sweep(task_source(kind, seed=1), CFG, GRID)
    scores = [r["score"] for r in swept.rows]
    assert swept.rows[swept.chosen]["chosen"] and scores[swept.chosen] == max(scores)
    assert swept.rows[swept.chosen]["monitor"] == "val_auc"
    assert 0.5 < swept.rows[swept.chosen]["val_auc"] <= 1.0
