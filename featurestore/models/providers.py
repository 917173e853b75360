"""Backbone providers beyond torchvision: `timm:<model>`, `hf:<repo id>`, `txv:<weights>`, aliases.

A name resolves to a `ProviderSpec` (what to build, its pooled feature layout, its stages); the
provider modules (`timm_provider`, `hf_provider`, `txv_provider`) build it through their own
library's API. Each alias ships the architecture configuration (and, for Hugging Face, the image
processor configuration) of its model, so `--weights none` builds the real architecture offline.
Importing this module imports no torch and no provider library (fast `xray --help`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError
from featurestore.models.provider_spec import (
    Alias,
    ProviderSpec,
)

if TYPE_CHECKING:
    from torch import nn

    from featurestore.models.preprocessing import Preprocessing

PROVIDERS: tuple[str, ...] = ("timm", "hf", "txv")
"""Name prefixes (`timm:resnet10t`, `hf:microsoft/rad-dino`, `txv:densenet121-res224-all`)."""

PROVIDER_MODULES: dict[str, tuple[str, ...]] = {
    "timm": ("timm",),
    "hf": ("transformers", "safetensors", "huggingface_hub"),
    "txv": ("torchxrayvision",),
}
"""The Python modules each provider needs: the `xray[<provider>]` extra installs them."""

# ---- aliases: the architecture and processor configurations ship here -----------------------

_BIT_PROCESSOR = {  # the DINOv2 repos' preprocessor_config.json
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def _dinov2(hidden: int, heads: int, layers: int) -> dict[str, Any]:
    return {
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
    }


ALIASES: dict[str, Alias] = {
    "rad-dino": Alias(
        "hf:microsoft/rad-dino",
        _dinov2(768, 12, 12),
        {
            **_BIT_PROCESSOR,
            "size": {"shortest_edge": 518},
            "crop_size": {"height": 518, "width": 518},
            "image_mean": [0.5307, 0.5307, 0.5307],
            "image_std": [0.2583, 0.2583, 0.2583],
        },
        "MSRLA (research use)",
        "DINOv2 ViT-B/14 trained on chest radiographs",
    ),
    "medsiglip": Alias(
        "hf:google/medsiglip-448",
        {
            "model_type": "siglip_vision_model",
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
            "image_size": 448,
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu_pytorch_tanh",
        },
        {
            "image_processor_type": "SiglipImageProcessor",
            "do_resize": True,
            "size": {"height": 448, "width": 448},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
        "Health AI Developer Foundations terms (gated)",
        "SigLIP So400m vision tower trained on medical images",
    ),
    "dinov2-small": Alias(
        "hf:facebook/dinov2-small", _dinov2(384, 6, 12), _BIT_PROCESSOR, "Apache-2.0"
    ),
    "dinov2-base": Alias(
        "hf:facebook/dinov2-base", _dinov2(768, 12, 12), _BIT_PROCESSOR, "Apache-2.0"
    ),
    "dinov2-large": Alias(
        "hf:facebook/dinov2-large", _dinov2(1024, 16, 24), _BIT_PROCESSOR, "Apache-2.0"
    ),
    # timm and torchxrayvision define their architectures in code: nothing to ship.
    "vit-small": Alias("timm:vit_small_patch16_224.augreg_in21k_ft_in1k"),
    "txv-all": Alias("txv:densenet121-res224-all", licence="Apache-2.0"),
    "txv-nih": Alias("txv:densenet121-res224-nih", licence="Apache-2.0"),
    "txv-chex": Alias("txv:densenet121-res224-chex", licence="Apache-2.0"),
    "txv-rsna": Alias("txv:densenet121-res224-rsna", licence="Apache-2.0"),
    "txv-mimic": Alias("txv:densenet121-res224-mimic_ch", licence="Apache-2.0"),
}


def is_provider_name(name: str) -> bool:
    """Whether `name` is an alias or a `provider:model` name (not a torchvision name)."""
    return name in ALIASES or (name.partition(":")[0] in PROVIDERS and ":" in name)


def split_name(name: str) -> tuple[str, str, Alias | None]:
    """(provider, model id, alias or None); `hf:microsoft/rad-dino` finds its alias too."""
    alias = ALIASES.get(name)
    target = alias.target if alias else name
    provider, _, model_id = target.partition(":")
    if provider not in PROVIDERS or not model_id:
        raise XrayError(
            f"unknown backbone {name!r}: use a torchvision name, an alias "
            f"({', '.join(ALIASES)}) or timm:<model>, hf:<repo id>, txv:<weights>"
        )
    if alias is None:
        alias = next((a for a in ALIASES.values() if a.target == target), None)
    return provider, model_id, alias


def alias_name(target: str) -> str | None:
    """The alias of a `provider:model` target, if it has one."""
    return next((k for k, a in ALIASES.items() if a.target == target), None)


def installed(provider: str) -> bool:
    """Whether every module of the provider's extra can be imported (nothing imported here)."""
    return all(importlib.util.find_spec(m) is not None for m in PROVIDER_MODULES[provider])


def require(provider: str) -> None:
    """XrayError naming the extra to install when a provider's library is missing."""
    if not installed(provider):
        missing = [m for m in PROVIDER_MODULES[provider] if importlib.util.find_spec(m) is None]
        raise XrayError(
            f"the {provider}: backbones need {', '.join(missing)}: "
            f"pip install -e '.[{provider}]' in the xray folder"
        )


def _module(provider: str) -> Any:
    require(provider)
    if provider == "timm":
        from featurestore.models import timm_provider

        return timm_provider
    if provider == "hf":
        from featurestore.models import hf_provider

        return hf_provider
    from featurestore.models import txv_provider

    return txv_provider


_RESOLVED: dict[str, ProviderSpec] = {}


def resolve(name: str) -> ProviderSpec:
    """The ProviderSpec of an alias or `provider:model` name (XrayError when it cannot be).

    Resolution may build the model on the meta device (nothing allocated, nothing downloaded)
    to read its feature size and stages.
    """
    if name in _RESOLVED:
        return _RESOLVED[name]
    provider, model_id, alias = split_name(name)
    target = f"{provider}:{model_id}"
    shown = alias_name(target) or target
    spec = _module(provider).describe(shown, model_id, alias)
    # A library's short name (`txv:all`) may canonicalise to an aliased model.
    canonical = alias_name(f"{provider}:{spec.model_id}")
    if canonical is not None and canonical != spec.name:
        spec = replace(spec, name=canonical)
    _RESOLVED[name] = spec
    return spec


def build_trunk(spec: ProviderSpec, weights: str) -> tuple[nn.Module, str, str | None]:
    """(trunk (N, C, H, W) -> (N, feature_dim), weights id, sha256 or None)."""
    return _module(spec.provider).build(spec, weights)


def preprocessing(spec: ProviderSpec, weights: str, image_size: int) -> Preprocessing:
    """The model's own preprocessing (its library's config), with the crop at `image_size`."""
    return _module(spec.provider).preprocessing(spec, weights, image_size)


def weights_identity(spec: ProviderSpec, weights: str) -> tuple[str, str | None]:
    """(weights id, sha256 or None) without building the model."""
    return _module(spec.provider).weights_identity(spec, weights)


def weights_location(spec: ProviderSpec) -> tuple[bool, str]:
    """(whether the published weights are on disk, the file or snapshot and its folder)."""
    return _module(spec.provider).weights_location(spec)


def count_parameters(spec: ProviderSpec) -> int:
    """Parameters of the trunk, counted on the meta device."""
    return _module(spec.provider).count_parameters(spec)


def file_stem(name: str) -> str:
    """A backbone name made file-safe: `hf:microsoft/rad-dino` -> `hf_microsoft--rad-dino`."""
    return name.replace(":", "_").replace("/", "--")
