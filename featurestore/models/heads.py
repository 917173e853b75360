"""Classification heads over backbone features: linear and MLP modules, the trunk + head model
and its freeze policies (the logistic-regression head is fitted in `train.logreg`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from featurestore.config import HEAD_KINDS
from featurestore.errors import XrayError

HeadKind = Literal["linear", "mlp", "logreg"]


class MLPHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear: (N, in_dim) -> (N, n_classes)."""

    def __init__(self, in_dim: int, n_classes: int, *, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Standardize(nn.Module):
    """(x - mean) / std with the train-split statistics kept as buffers (saved in best.pt)."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean.detach().clone().float())  # (D,)
        self.register_buffer("std", std.detach().clone().float())  # (D,)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def build_head(
    kind: str, in_dim: int, n_classes: int, *, hidden: int = 512, dropout: float = 0.3
) -> nn.Module:
    """A fresh head: "linear" (one Linear) or "mlp" (see MLPHead); logreg heads are linear."""
    if in_dim < 1 or n_classes < 2:
        raise ValueError(f"need in_dim >= 1 and n_classes >= 2, got {in_dim}, {n_classes}")
    if kind in ("linear", "logreg"):
        return nn.Linear(in_dim, n_classes)
    if kind == "mlp":
        if not 0.0 <= dropout < 1.0:
            raise XrayError(f"dropout must lie in [0, 1), got {dropout}")
        return MLPHead(in_dim, n_classes, hidden=hidden, dropout=dropout)
    raise XrayError(f"unknown head {kind!r}; choose one of: {', '.join(HEAD_KINDS)}")


def export_head(head: nn.Module, mean: Tensor, std: Tensor) -> nn.Module:
    """The deployable frozen-mode head: standardisation then head (`standardize.*`, `head.*`)."""
    return nn.Sequential(OrderedDict(standardize=Standardize(mean, std), head=head))


class TrunkHead(nn.Module):
    """Backbone trunk then head: (N, 3, H, W) -> trunk -> (N, D) -> head -> (N, C) logits.

    Parameters are named `trunk.*` and `head.*` (the trainer gives `trunk.*` a lower lr).
    Norm layers of frozen parts stay in eval mode through `train()`, so their running
    statistics are frozen too.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.frozen_norms: list[str] = []
        """Names (in `trunk`) of norm modules kept in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))

    def train(self, mode: bool = True) -> TrunkHead:
        super().train(mode)
        for name in self.frozen_norms:
            self.trunk.get_submodule(name).eval()
        return self


FREEZE_POLICIES: tuple[str, ...] = ("none", "head-only")
"""Besides these, a stage name freezes the trunk up to and including that stage."""


def apply_freeze(model: TrunkHead, stages: Sequence[str], policy: str) -> None:
    """Freeze none, all of the trunk ("head-only"), or the trunk up to a named stage inclusive.

    A stage freeze covers everything registered before the next stage (the stem, transitions),
    or the whole named stage when it is the last one.
    """
    names = [n for n, _ in model.trunk.named_parameters()]
    if policy == "none":
        frozen: set[str] = set()
    elif policy == "head-only":
        frozen = set(names)
    elif policy in stages:
        i = list(stages).index(policy)
        if i + 1 < len(stages):
            nxt = stages[i + 1] + "."
            cut = next((k for k, n in enumerate(names) if n.startswith(nxt)), len(names))
        else:
            inside = [k for k, n in enumerate(names) if n.startswith(policy + ".")]
            cut = inside[-1] + 1 if inside else 0
        frozen = set(names[:cut])
    else:
        raise XrayError(
            f"unknown --freeze {policy!r}; choose none, head-only or a stage: {', '.join(stages)}"
        )
    for name, param in model.trunk.named_parameters():
        param.requires_grad_(name not in frozen)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    model.frozen_norms = [
        name
        for name, module in model.trunk.named_modules()
        if isinstance(module, norms)
        and any(True for _ in module.parameters())
        and all(f"{name}.{p}" in frozen for p, _ in module.named_parameters())
    ]
    model.train(model.training)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
