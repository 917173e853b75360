"""What a provider backbone is (`ProviderSpec`, `Alias`) and its pooled feature layout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featurestore.errors import XrayError

PRETRAINED = ("pretrained", "imagenet")
"""--weights values meaning "the model's own published weights" (`imagenet` is the CLI default)."""


@dataclass(frozen=True)
class ProviderSpec:
    """A backbone built by timm, transformers or torchxrayvision.

    The trunk built from it maps images (N, C, H, W) -> (N, feature_dim): for token models
    (ViTs) every pooling side by side, so one extraction serves all of them (`poolings`).
    """

    name: str
    """The name stores and runs record: the alias when there is one (`rad-dino`)."""
    provider: str
    """`timm`, `hf` or `txv`."""
    model_id: str
    """timm model name, Hugging Face repo id or torchxrayvision weights name."""
    family: str
    """`vit` (token model), `cnn` (timm CNN) or `txv-densenet`."""
    feature_dim: int
    """D of the vector the trunk returns (all poolings concatenated)."""
    poolings: Mapping[str, tuple[int, int]]
    """Pooling name -> (start, stop) columns of the trunk output; the first is the default."""
    stages: tuple[str, ...]
    """Dotted submodule paths of the trunk, shallow to deep, for `--freeze STAGE`."""
    config: Mapping[str, Any] | None = None
    """Architecture configuration shipped with xray (HF config kwargs), None: from the library."""
    processor: Mapping[str, Any] | None = None
    """Image processor configuration shipped with xray (HF preprocessor_config.json fields)."""
    licence: str = ""
    """Licence of the published weights (what the model card says)."""
    input_size: int = 224
    """Input side the weights were trained at, in pixels (`--image-size` to match)."""

    @property
    def pooling(self) -> str:
        """What the stored vector holds: every pooling, e.g. `cls+mean` (or `avg` for a CNN)."""
        return "+".join(self.poolings) if len(self.poolings) > 1 else next(iter(self.poolings))

    def columns(self, pooling: str | None) -> tuple[int, int]:
        """(start, stop) of `pooling` in the stored vector; None: all of it."""
        return pooling_columns(self.poolings, pooling, self.name)


def pooling_columns(poolings: Mapping[str, Any], pooling: str | None, what: str) -> tuple[int, int]:
    """(start, stop) columns of `pooling` among `poolings` (all of them when None or `all`)."""
    spans = {k: (int(v[0]), int(v[1])) for k, v in poolings.items()}
    whole = (min(a for a, _ in spans.values()), max(b for _, b in spans.values()))
    if pooling in (None, "all", "+".join(spans)):
        return whole
    if pooling not in spans:
        raise XrayError(
            f"{what} has no pooling {pooling!r}: choose one of {', '.join(spans)} or all"
        )
    return spans[pooling]


def token_poolings(width: int, summary: str | None) -> dict[str, tuple[int, int]]:
    """Column layout of a token model's output: [summary token | mean of patch tokens]."""
    if summary is None:
        return {"mean": (0, width)}
    return {summary: (0, width), "mean": (width, 2 * width)}


@dataclass(frozen=True)
class Alias:
    """A short name for a provider model, with what xray ships for it."""

    target: str
    """`provider:model id`."""
    config: Mapping[str, Any] | None = None
    processor: Mapping[str, Any] | None = None
    licence: str = ""
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
