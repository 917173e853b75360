"""Many heads as one module: G linear or MLP heads stacked along a leading member axis.

A sweep trains every member on the same batch in one forward and one backward: the G weight
matrices are one (G, D, C) tensor (as DINOv2's linear eval trains its `AllClassifiers`), so a
Kermany-sized batch costs one (B, D) x (D, G*C) matrix product instead of G small ones.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurestore.models.heads import MLPHead, build_head

StackKind = Literal["linear", "mlp"]


def _stack(tensors: list[Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach().clone().float() for t in tensors]))


class StackedHeads(nn.Module):
    """G heads of one kind: (B, D) -> (B, G, C) logits, member g being an ordinary head.

    Members are initialised exactly as `build_head(kind, D, C)` after `torch.manual_seed(seed)`,
    so member g trained here starts where the same head trained alone with that seed starts.
    Parameters carry the member axis first: linear `weight (G, D, C)`, `bias (G, C)`; mlp
    adds `w1 (G, D, H)`, `b1`, BatchNorm `gamma`/`beta`/running stats `(G, H)`, `w2 (G, H, C)`.
    """

    def __init__(
        self,
        kind: StackKind,
        in_dim: int,
        n_classes: int,
        members: int,
        *,
        seeds: list[int],
        hidden: int = 512,
        dropout: float = 0.3,
    ):
        super().__init__()
        if len(seeds) != members or members < 1:
            raise ValueError(f"need one seed per member, got {len(seeds)} for {members}")
        self.kind = kind
        self.members = members
        self.dropout = dropout
        self.eps = 1e-5  # BatchNorm1d's defaults, so exported members behave identically
        self.momentum = 0.1
        heads: list[Any] = []  # nn.Linear or MLPHead
        for seed in seeds:
            torch.manual_seed(seed)
            heads.append(build_head(kind, in_dim, n_classes, hidden=hidden, dropout=dropout))
        if kind == "linear":
            self.weight = _stack([h.weight.T for h in heads])  # (G, D, C)
            self.bias = _stack([h.bias for h in heads])  # (G, C)
            return
        nets = [h.net for h in heads]
        self.w1 = _stack([n[0].weight.T for n in nets])  # (G, D, H)
        self.b1 = _stack([n[0].bias for n in nets])  # (G, H)
        self.gamma = _stack([n[1].weight for n in nets])  # (G, H)
        self.beta = _stack([n[1].bias for n in nets])  # (G, H)
        self.running_mean: Tensor
        self.running_var: Tensor
        self.register_buffer("running_mean", torch.zeros(members, hidden))
        self.register_buffer("running_var", torch.ones(members, hidden))
        self.w2 = _stack([n[4].weight.T for n in nets])  # (G, H, C)
        self.b2 = _stack([n[4].bias for n in nets])  # (G, C)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) features -> (B, G, C) logits of every member."""
        if self.kind == "linear":
            return torch.einsum("bd,gdc->bgc", x, self.weight) + self.bias
        h = torch.einsum("bd,gdh->bgh", x, self.w1) + self.b1  # (B, G, H)
        if self.training:
            # BatchNorm1d per member: batch statistics, running stats with unbiased variance.
            mean = h.mean(0)  # (G, H)
            var = h.var(0, unbiased=False)
            with torch.no_grad():
                n = h.shape[0]
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        h = (h - mean) / torch.sqrt(var + self.eps) * self.gamma + self.beta
        h = F.dropout(F.relu(h), self.dropout, self.training)
        return torch.einsum("bgh,ghc->bgc", h, self.w2) + self.b2

    def decays(self, name: str) -> bool:
        """Whether AdamW decays this parameter: matrices yes, biases and norm weights no."""
        return name in ("weight", "w1", "w2")

    def export(self, g: int, state: dict[str, Tensor] | None = None) -> nn.Module:
        """Member g as an ordinary head (`nn.Linear` or `MLPHead`), from `state` if given."""
        s = state if state is not None else dict(self.state_dict())
        if self.kind == "linear":
            d, c = s["weight"].shape[1:]
            lin = nn.Linear(d, c)
            lin.load_state_dict({"weight": s["weight"][g].T, "bias": s["bias"][g]})
            return lin
        d, hidden = s["w1"].shape[1:]
        c = s["w2"].shape[2]
        mlp = MLPHead(d, c, hidden=hidden, dropout=self.dropout)
        norm = cast(nn.BatchNorm1d, mlp.net[1])
        mlp.load_state_dict(
            {
                "net.0.weight": s["w1"][g].T,
                "net.0.bias": s["b1"][g],
                "net.1.weight": s["gamma"][g],
                "net.1.bias": s["beta"][g],
                "net.1.running_mean": s["running_mean"][g],
                "net.1.running_var": s["running_var"][g],
                "net.1.num_batches_tracked": cast(Tensor, norm.num_batches_tracked),
                "net.4.weight": s["w2"][g].T,
                "net.4.bias": s["b2"][g],
            }
        )
        return mlp
