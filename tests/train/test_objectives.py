"""Multi-label objective: masked BCE, per-label positive weights, and training on targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurestore.errors import XrayError
from featurestore.models import build_head
from featurestore.train import (
    FeatureSource,
    FeatureSplit,
    MaskedBCEWithLogits,
    TrainConfig,
    fit,
    label_pos_weights,
    summed_loss,
)

NAN = float("nan")


def test_masked_entries_change_neither_loss_nor_gradient() -> None:
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, NAN], [0.0, 1.0]])
    loss = MaskedBCEWithLogits()(logits, targets)
    observed = [(0, 0), (1, 0), (1, 1)]
    expected = sum(
        F.binary_cross_entropy_with_logits(logits[i, j], targets[i, j]) for i, j in observed
    ) / len(observed)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and float(logits.grad[0, 1]) == 0.0  # masked: no gradient
    # Whatever the masked entry's target would have been, the loss is the same.
    other = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    masked = torch.tensor([[1.0, NAN], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    manual = (
        F.binary_cross_entropy_with_logits(logits, other, reduction="none") * weight
    ).sum() / 3
    torch.testing.assert_close(MaskedBCEWithLogits()(logits, masked), manual)


def test_positive_weights_scale_the_positive_term() -> None:
    logits = torch.tensor([[0.2, -0.4]])
    targets = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([3.0, 5.0])
    got = MaskedBCEWithLogits(w)(logits, targets)
    expected = (-3.0 * F.logsigmoid(logits[0, 0]) - F.logsigmoid(-logits[0, 1])) / 2
    torch.testing.assert_close(got, expected)


def test_label_pos_weights_are_negatives_over_positives_on_observed_entries() -> None:
    y = np.array([[1, 0], [0, NAN], [0, 1], [0, 0]], dtype=np.float64)
    w = label_pos_weights(y, ("a", "b"), "balanced")
    torch.testing.assert_close(w, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(label_pos_weights(y, ("a", "b"), "none"), torch.ones(2))
    # b has no positive: nothing to balance, weight 1.
    w = label_pos_weights(np.array([[1.0, 0.0], [0.0, NAN]]), ("a", "b"), "balanced")
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0]))
    with pytest.raises(XrayError, match="nothing to learn"):
        label_pos_weights(np.array([[1.0, 0.0], [1.0, NAN]]), ("a", "b"), "balanced")


def test_summed_loss_is_each_images_mean_over_its_observed_labels() -> None:
    logits = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, NAN], [0.0, 1.0]])
    first = float(F.binary_cross_entropy_with_logits(logits[0, 0], y[0, 0]))
    second = float(F.binary_cross_entropy_with_logits(logits[1], y[1]))
    assert summed_loss(logits, y, "multilabel") == pytest.approx(first + second)


def _multilabel_source(seed: int = 0, *, mass_val_negative: bool = False) -> FeatureSource:
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", 80), ("val", 40), ("test", 40)):
        y = rng.integers(0, 2, (n, 2)).astype(np.float32)  # two findings, co-occurring freely
        x = np.concatenate([y * 2.5 + rng.normal(size=(n, 2)), rng.normal(size=(n, 2))], 1)
        y[rng.random((n, 2)) < 0.1] = np.nan  # some uncertain labels, masked
        if mass_val_negative and split == "val":
            y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)  # Mass: no validation positive
        splits[split] = FeatureSplit(
            x.astype(np.float32), np.zeros(n, np.int64), [f"{split}/{i}" for i in range(n)],
            [f"{split}-{i // 2}" for i in range(n)], targets=y,
        )  # fmt: skip
    return FeatureSource(splits, class_names=("Effusion", "Mass"), positive_index=0)


def test_fit_learns_two_findings_with_per_label_thresholds() -> None:
    src = _multilabel_source()
    config = TrainConfig(epochs=30, lr=0.05, batch_size=16, patience=30, device="cpu")
    torch.manual_seed(0)
    result = fit(build_head("linear", 4, 2), src, config)
    assert result.metrics_json()["task"] == "multilabel"
    thresholds = result.threshold["per_label"]
    assert set(thresholds) == {"Effusion", "Mass"} and result.threshold["value"] is None
    test = result.test["at_label_thresholds"]
    assert test["macro_auc"] > 0.9 and test["micro_auc"] > 0.9
    for name in ("Effusion", "Mass"):
        assert test["labels"][name]["threshold"] == thresholds[name]
        assert test["labels"][name]["n"] + test["labels"][name]["n_masked"] == 40
    pred = result.predictions["test"]
    t = np.array([thresholds["Effusion"], thresholds["Mass"]])
    assert np.array_equal(pred.predictions, (pred.probabilities >= t).astype(np.int64))
    # Same seed, same result: the masked path is deterministic too.
    torch.manual_seed(0)
    again = fit(build_head("linear", 4, 2), _multilabel_source(), replace(config))
    assert again.test == result.test


def test_a_finding_without_validation_positives_says_its_threshold_fell_back() -> None:
    """Issue #28.4: a label whose validation entries hold no positive gets 0.5, said per label
    in metrics.json (`ran`, `notes`), never silently."""
    src = _multilabel_source(mass_val_negative=True)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16, device="cpu")
    torch.manual_seed(0)
    result = fit(build_head("linear", 4, 2), src, config)
    t = result.metrics_json()["threshold"]
    assert t["per_label"]["Mass"] == 0.5
    assert t["ran"] == {"Effusion": True, "Mass": False}
    assert len(t["notes"]) == 1 and "Mass" in t["notes"][0] and "no positive" in t["notes"][0]


def test_a_threshold_policy_on_a_multiclass_task_is_refused_before_training() -> None:
    """Issue #28.3: --threshold f1 on three classes was recorded as argmax with no word."""
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(30, 4)).astype(np.float32) for s in ("train", "val", "test")}
    labels = {s: np.arange(30) % 3 for s in feats}
    src = FeatureSource.from_arrays(feats, labels, batch_size=8, class_names=("A", "B", "C"))
    for policy in ("f1", "sensitivity:0.9", "specificity:0.9", "fixed:0.3"):
        with pytest.raises(XrayError, match="argmax"):
            fit(
                build_head("linear", 4, 3),
                src,
                TrainConfig(epochs=1, threshold_policy=policy, device="cpu"),
            )
    result = fit(build_head("linear", 4, 3), src, TrainConfig(epochs=1, device="cpu"))
    assert result.threshold["policy"] == "argmax" and "argmax" in result.threshold["note"]
