"""Pooling of transformer tokens into one vector per image (summary token and patch mean), and
the split at the last block that a token-grid Grad-CAM needs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from featurestore.errors import XrayError


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

    def before_last_block(self, x: Tensor) -> tuple[Tensor, int]:
        """(tokens (N, T, C) entering the last block, patch size in pixels)."""
        raise XrayError(f"no token-grid CAM for {type(self).__name__} models yet")

    def from_last_block(self, tokens: Tensor) -> Tensor:
        """Tokens entering the last block (N, T, C) -> the pooled features, as `forward`."""
        raise XrayError(f"no token-grid CAM for {type(self).__name__} models yet")

    def cam_split(self) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """(x -> A, A -> pooled features) with A (N, C, h, w) the patch tokens entering the
        last block laid out on their grid; the prefix tokens ride along unchanged.

        Grad-CAM on A weighs the last block's input by the gradient of the class logit, the
        token analogue of the last convolutional map (the class token's output does not depend
        on the patch tokens after the last block, so A sits before it).
        """
        held: dict[str, Tensor] = {}

        def acts(x: Tensor) -> Tensor:
            tokens, patch = self.before_last_block(x)
            h, w = x.shape[-2] // patch, x.shape[-1] // patch
            held["prefix"] = tokens[:, : self.prefix]
            grid = tokens[:, self.prefix :]  # (N, h * w, C)
            if grid.shape[1] != h * w:
                raise XrayError(f"{grid.shape[1]} patch tokens do not form a {h}x{w} grid")
            return grid.transpose(1, 2).reshape(grid.shape[0], -1, h, w)  # (N, C, h, w)

        def pool(a: Tensor) -> Tensor:
            patches = a.flatten(2).transpose(1, 2)  # (N, h * w, C)
            return self.from_last_block(torch.cat([held["prefix"], patches], dim=1))

        return acts, pool
