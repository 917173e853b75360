"""Heads (linear, MLP, logreg), the trunk+head model and its freeze policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featurestore.errors import XrayError
from featurestore.models import (
    MLPHead,
    TrunkHead,
    apply_freeze,
    build_head,
    count_params,
    export_head,
)
from featurestore.train import FeatureSource, fit_logreg

torch.set_num_threads(1)


def test_linear_and_mlp_heads() -> None:
    x = torch.randn(5, 16)
    linear = build_head("linear", 16, 2)
    assert isinstance(linear, nn.Linear) and linear(x).shape == (5, 2)
    mlp = build_head("mlp", 16, 3)
    assert isinstance(mlp, MLPHead) and mlp(x).shape == (5, 3)
    kinds = [type(m) for m in mlp.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert mlp.net[0].out_features == 512 and mlp.net[3].p == 0.3
    assert build_head("mlp", 16, 2, hidden=8, dropout=0.1).net[0].out_features == 8


def test_unknown_head_and_bad_dropout_are_refused() -> None:
    with pytest.raises(XrayError, match=r"unknown head 'svm'.*linear, mlp, logreg"):
        build_head("svm", 4, 2)
    with pytest.raises(XrayError, match="dropout"):
        build_head("mlp", 4, 2, dropout=1.0)


def test_export_head_standardises_then_applies_head() -> None:
    head = nn.Linear(3, 2)
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 4.0])
    exported = export_head(head, mean, std)
    x = torch.randn(4, 3)
    assert torch.allclose(exported(x), head((x - mean) / std))
    assert {"standardize.mean", "standardize.std", "head.weight", "head.bias"} == set(
        exported.state_dict()
    )


def test_logreg_head_reproduces_sklearn_and_picks_c_on_validation() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(n, 5)).astype(np.float32) for s, n in
             (("train", 80), ("val", 40), ("test", 20))}  # fmt: skip
    labels = {s: (f[:, 0] + 0.5 * rng.normal(size=len(f)) > 0).astype(np.int64)
              for s, f in feats.items()}  # fmt: skip
    src = FeatureSource.from_arrays(feats, labels)
    fit = fit_logreg(src, Cs=(0.01, 1.0))
    assert fit.C in (0.01, 1.0) and len(fit.history) == 2
    best = max(fit.history, key=lambda r: r["val_auc"])
    assert best["C"] == fit.C and np.isnan(best["lr"])  # rows are values of C, not epochs
    x_val = src.arrays("val")[0]
    clf = LogisticRegression(C=fit.C, max_iter=2000, class_weight="balanced", random_state=0)
    clf.fit(src.arrays("train")[0].numpy(), labels["train"])
    expected = clf.predict_proba(x_val.numpy())[:, 1]
    got = fit.head(x_val).softmax(1)[:, 1].detach().numpy()
    assert np.allclose(got, expected, atol=1e-5)


class TinyTrunk(nn.Module):
    """stem (conv+bn) then two stages, like a miniature ResNet: (N,3,H,W) -> (N,8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layer2(self.layer1(self.bn1(self.conv1(x))))).flatten(1)


STAGES = ("conv1", "layer1", "layer2")


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_freeze_none_trains_everything() -> None:
    model = TrunkHead(TinyTrunk(), nn.Linear(8, 2))
    apply_freeze(model, STAGES, "none")
    trainable, total = count_params(model)
    assert trainable == total == params_of(model)
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 2)


def test_freeze_head_only_freezes_trunk_and_its_batchnorm_statistics() -> None:
    model = TrunkHead(TinyTrunk(), nn.Linear(8, 2))
    apply_freeze(model, STAGES, "head-only")
    assert count_params(model)[0] == params_of(model.head) == 18
    model.train()
    assert model.head.training
    assert not any(m.training for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d))
    before = model.trunk.bn1.running_mean.clone()
    model(torch.randn(4, 3, 12, 12) + 5)
    assert torch.equal(model.trunk.bn1.running_mean, before)


def test_freeze_up_to_a_stage_includes_the_stem() -> None:
    model = TrunkHead(TinyTrunk(), nn.Linear(8, 2))
    apply_freeze(model, STAGES, "conv1")  # conv1 + bn1 (everything before layer1)
    assert count_params(model)[0] == params_of(model.trunk.layer1) + params_of(
        model.trunk.layer2
    ) + params_of(model.head)
    apply_freeze(model, STAGES, "layer1")
    assert count_params(model)[0] == params_of(model.trunk.layer2) + params_of(model.head)
    model.train()
    assert model.trunk.layer2[1].training and not model.trunk.layer1[1].training
    apply_freeze(model, STAGES, "layer2")  # the last stage: the whole trunk
    assert count_params(model)[0] == params_of(model.head)


def test_unknown_stage_lists_the_stages() -> None:
    model = TrunkHead(TinyTrunk(), nn.Linear(8, 2))
    with pytest.raises(XrayError, match="conv1, layer1, layer2"):
        apply_freeze(model, STAGES, "layer9")


def test_freeze_on_a_real_resnet18() -> None:
    from featurestore.models import load_backbone

    loaded = load_backbone("resnet18", "none")
    model = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, 2))
    apply_freeze(model, loaded.spec.stages, "layer3")
    expected = params_of(loaded.trunk.layer4) + 512 * 2 + 2
    assert count_params(model)[0] == expected
