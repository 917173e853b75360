"""Pooling of transformer tokens into one vector per image: summary token and patch mean."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pool_tokens(tokens: Tensor, prefix: int, summary: Tensor | None) -> Tensor:
    """(N, T, C) tokens -> [summary | mean of patch tokens] (N, 2C), or the mean alone (N, C).

    `prefix` tokens (class token, register tokens) lead the sequence and are left out of the
    patch mean; `summary` is the model's own summary vector (N, C) (its class token, or
    SigLIP's attention-pooling head), None when it has none.
    """
    mean = tokens[:, prefix:].mean(dim=1)  # (N, C)
    return mean if summary is None else torch.cat([summary, mean], dim=1)


class TokenTrunk(nn.Module):
    """A transformer as a trunk: images (N, 3, H, W) -> pooled features (N, 2C) or (N, C).

    Subclasses say how to run the model (`tokens`) and where its blocks are (`blocks`), so
    freezing and the token-grid CAM work the same for timm and Hugging Face models.
    """

    prefix: int
    """Leading non-patch tokens (class + register tokens)."""

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(tokens (N, T, C) after the final norm, summary (N, C) or None)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        tokens, summary = self.tokens(x)
        return pool_tokens(tokens, self.prefix, summary)
