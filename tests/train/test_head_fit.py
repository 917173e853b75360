"""Every head through one interface: fit(source, config) -> FitResult."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore.errors import XrayError
from featurestore.train import FeatureSource, TrainConfig, head_trainer


def _source() -> FeatureSource:
    rng = np.random.default_rng(0)
    feats, labels = {}, {}
    for split, n in (("train", 80), ("val", 30), ("test", 30)):
        y = rng.integers(0, 2, n)
        feats[split] = rng.normal(size=(n, 6)) + y[:, None] * 3.0
        labels[split] = y
    return FeatureSource.from_arrays(feats, labels, batch_size=16)


@pytest.mark.parametrize("kind", ["linear", "mlp", "logreg"])
def test_every_head_fits_through_the_same_interface(kind: str) -> None:
    torch.manual_seed(0)
    source = _source()
    trainer = head_trainer(kind, source.feature_dim, 2)
    result = trainer.fit(source, TrainConfig(epochs=20, device="cpu"))
    assert result.test["at_threshold"]["roc_auc"] > 0.8
    assert result.threshold["policy"] == "youden"
    # The module holds the selected weights: it reproduces the recorded test probabilities.
    x, _ = source.arrays("test")
    with torch.no_grad():
        p = trainer.module.eval()(x).softmax(1)[:, 1].double().numpy()
    assert np.allclose(p, result.predictions["test"].probabilities, atol=1e-6)
    record = trainer.record()
    assert ("logreg_C" in record) == (kind == "logreg")


def test_an_unknown_head_is_one_line() -> None:
    with pytest.raises(XrayError, match="unknown --head 'svm'; choose one of: linear, mlp"):
        head_trainer("svm", 4, 2)


def test_the_schedule_counts_steps_from_the_source() -> None:
    source = _source()  # 80 rows at batch 16: 5 steps
    assert source.steps_per_epoch() == 5 and source.train_size() == 80
    assert source.eval_positions("val") is None
    odd = FeatureSource.from_arrays(
        {s: np.zeros((n, 2)) for s, n in (("train", 17), ("val", 2), ("test", 2))},
        {s: np.arange(n) % 2 for s, n in (("train", 17), ("val", 2), ("test", 2))},
        batch_size=16,
    )
    assert odd.steps_per_epoch() == 1  # the lonely 17th row is dropped, as batches() drops it


@pytest.mark.parametrize(("policy", "low", "high"), [("balanced", 0.35, 0.65), ("none", 0.03, 0.2)])
def test_the_logreg_head_is_fitted_with_the_class_weight_asked_for(
    policy: str, low: float, high: float
) -> None:
    """Signal-free features with 10% positives: the fitted prior is 50/50 with balanced weights
    and 10% without, so the head was given the policy (not a fixed one)."""
    rng = np.random.default_rng(3)
    feats, labels = {}, {}
    for split, n in (("train", 1000), ("val", 200), ("test", 200)):
        labels[split] = (rng.random(n) < 0.1).astype(np.int64)
        feats[split] = rng.normal(size=(n, 2))
    source = FeatureSource.from_arrays(feats, labels, batch_size=64)
    trainer = head_trainer("logreg", 2, 2)
    trainer.fit(source, TrainConfig(device="cpu", class_weight=policy))  # type: ignore[arg-type]
    x, _ = source.arrays("train")
    with torch.no_grad():
        mean_p = float(trainer.module.eval()(x).softmax(1)[:, 1].mean())
    assert low < mean_p < high, mean_p
