"""Backbone registry: torchvision builders, their weights, preprocessing, feature size, stages;
names of other providers (`timm:`, `hf:`, `txv:`, aliases) are handed to `providers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models import providers
from featurestore.models.heads import count_params
from featurestore.models.preprocessing import Preprocessing
from featurestore.models.providers import ProviderSpec
from featurestore.models.weights import (
    hub_checkpoint_dir,
    load_imagenet,
    load_state_file,
    weights_path,
)

if TYPE_CHECKING:  # torch is imported where a backbone is actually built (fast CLI start)
    from torch import nn
    from torchvision.models import WeightsEnum

FAMILIES = ("resnet", "densenet", "efficientnet", "convnext")


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: everything needed to build it and feed it images."""

    name: str
    """Registry name, also the torchvision builder's name (`resnet50`)."""
    builder: Callable[..., nn.Module]
    """torchvision builder, called as `builder(weights=...)`."""
    weights_enum: type[WeightsEnum]
    """torchvision weights enum; its DEFAULT entry gives the ImageNet weights and preprocessing."""
    feature_dim: int
    """Size D of the pooled features the trunk returns, (N, 3, H, W) -> (N, D)."""
    stages: tuple[str, ...]
    """Dotted submodule paths of the trunk, shallow to deep, for partial freezing."""
    family: str
    """Architecture family (`resnet`, `densenet`, `efficientnet`, `convnext`)."""
    head: str
    """Dotted path of the classification layer that the trunk replaces by `nn.Identity`."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {self.feature_dim}")
        if not self.stages:
            raise ValueError("stages must name at least one submodule")

    @property
    def default_weights(self) -> WeightsEnum:
        """torchvision's recommended ImageNet weights for this backbone."""
        return self.weights_enum.DEFAULT

    @property
    def weights_file(self) -> str:
        """File name of the ImageNet checkpoint in the torch hub cache."""
        return os.path.basename(urlparse(self.default_weights.url).path)


@dataclass(frozen=True)
class LoadedBackbone:
    """A built trunk and the identity of the weights it holds."""

    spec: BackboneSpec | ProviderSpec
    trunk: nn.Module
    """(N, C, H, W) -> (N, D): a torchvision model with its classifier replaced by Identity, or a
    provider's trunk (for transformers every pooling side by side, see `ProviderSpec.poolings`)."""
    weights_id: str
    """`IMAGENET1K_V2`, `none`, `file:<name>`, or a provider's id (`hf:<repo>@<commit>`)."""
    weights_sha256: str | None
    """SHA-256 of the weights file; None for random init."""


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; a duplicate name is a bug and raises ValueError."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec | ProviderSpec:
    """The backbone called `name`: a torchvision registry entry, or a provider's model
    (`timm:<model>`, `hf:<repo id>`, `txv:<weights>`, an alias); XrayError listing the names."""
    if providers.is_provider_name(name):
        return providers.resolve(name)
    _register_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join([*sorted(_REGISTRY), *providers.ALIASES])
        raise XrayError(
            f"unknown backbone {name!r}: choose one of {valid}, "
            "or timm:<model>, hf:<repo id>, txv:<weights>"
        ) from None


def torchvision_spec(name: str) -> BackboneSpec:
    """The torchvision registry entry `name` (XrayError for any other backbone)."""
    spec = get_spec(name)
    if not isinstance(spec, BackboneSpec):
        raise XrayError(f"{name} is not a torchvision backbone")
    return spec


def list_specs() -> list[BackboneSpec]:
    """Every registered backbone, in registration order."""
    _register_builtins()
    return list(_REGISTRY.values())


def _register_builtins() -> None:
    # Deferred so importing this module (e.g. from the CLI) does not import torchvision.
    if "resnet18" in _REGISTRY:
        return
    from torchvision import models as tvm

    resnet_stages = ("conv1", "layer1", "layer2", "layer3", "layer4")
    builtins = [
        BackboneSpec(
            "resnet18", tvm.resnet18, tvm.ResNet18_Weights, 512, resnet_stages, "resnet", "fc"
        ),
        BackboneSpec(
            "resnet50", tvm.resnet50, tvm.ResNet50_Weights, 2048, resnet_stages, "resnet", "fc"
        ),
        BackboneSpec(
            "densenet121",
            tvm.densenet121,
            tvm.DenseNet121_Weights,
            1024,
            tuple(f"features.denseblock{i}" for i in range(1, 5)),
            "densenet",
            # DenseNet.forward is features -> relu -> global avg pool -> flatten -> classifier,
            # so an Identity classifier leaves exactly the pooled (N, 1024) features.
            "classifier",
        ),
        BackboneSpec(
            "efficientnet_b0",
            tvm.efficientnet_b0,
            tvm.EfficientNet_B0_Weights,
            1280,
            tuple(f"features.{i}" for i in range(9)),
            "efficientnet",
            "classifier",  # Dropout + Linear after avgpool/flatten
        ),
        BackboneSpec(
            "convnext_tiny",
            tvm.convnext_tiny,
            tvm.ConvNeXt_Tiny_Weights,
            768,
            tuple(f"features.{i}" for i in range(8)),
            "convnext",
            "classifier.2",  # keep classifier.0 LayerNorm2d and .1 Flatten: (N, 768)
        ),
    ]
    for spec in builtins:
        if spec.name not in _REGISTRY:
            register(spec)


def imagenet_available(name: str) -> bool:
    """Whether the pretrained weights of `name` are on disk (torch hub cache, provider cache)."""
    spec = get_spec(name)
    if isinstance(spec, ProviderSpec):
        return providers.weights_location(spec)[0]
    return (hub_checkpoint_dir() / spec.weights_file).is_file()


def count_parameters(name: str) -> int:
    """Parameters of the trunk, counted on the meta device (nothing allocated or downloaded)."""
    import torch

    spec = get_spec(name)
    if isinstance(spec, ProviderSpec):
        return providers.count_parameters(spec)
    with torch.device("meta"):
        trunk = _to_trunk(spec, spec.builder(weights=None))
    return count_params(trunk)[1]


def preprocessing_for(name: str, weights: str, image_size: int) -> Preprocessing:
    """The ImageNet weights' own preprocessing, scaled so the center crop is `image_size`.

    Random init and checkpoint files use the same statistics: chest-X-ray checkpoints are
    fine-tuned from ImageNet weights with their normalization.
    """
    if image_size < 16:
        raise XrayError(f"--image-size must be at least 16 pixels, got {image_size}")
    spec = get_spec(name)
    if isinstance(spec, ProviderSpec):  # the provider library's own configuration
        return providers.preprocessing(spec, weights, image_size)
    preset = spec.default_weights.transforms()
    # Keep the weights' resize/crop ratio (e.g. 232/224 for ResNet-50 V2) at any crop size.
    ratio = preset.resize_size[0] / preset.crop_size[0]
    return Preprocessing(
        mean=tuple(float(m) for m in preset.mean),
        std=tuple(float(s) for s in preset.std),
        resize=max(image_size, round(image_size * ratio)),
        crop=image_size,
        interpolation=preset.interpolation.value,
    )


def weights_identity(name: str, weights: str) -> tuple[str, str | None]:
    """(weights_id, sha256) for a weights choice without building the model.

    ImageNet weights are identified by torchvision's versioned enum name (their hash is checked
    on download), so their sha256 is None here; a file's sha256 is always computed.
    """
    spec = get_spec(name)
    if isinstance(spec, ProviderSpec):
        return providers.weights_identity(spec, weights)
    if weights == "imagenet":
        return spec.default_weights.name, None
    if weights == "none":
        return "none", None
    path = weights_path(weights)
    return f"file:{path.name}", file_digest(path)


def weights_tag(weights_id: str, sha256: str | None) -> str:
    """Short file-name-safe tag of the weights: `imagenet`, `none`, `<stem>-<sha8>`,
    `pretrained` (a provider's published weights)."""
    if weights_id == "none":
        return "none"
    if weights_id.startswith(("file:", "dir:")):
        stem = Path(weights_id[weights_id.index(":") + 1 :]).stem.replace(" ", "_")
        return f"{stem}-{(sha256 or '')[:8]}"
    if weights_id.partition(":")[0] in providers.PROVIDERS:
        return "pretrained"
    return "imagenet" if weights_id.startswith("IMAGENET") else weights_id.lower()


def load_backbone(name: str, weights: str = "imagenet") -> LoadedBackbone:
    """Build the trunk of `name`: ImageNet weights, random init ("none") or a state dict file.

    Provider backbones take `pretrained` (or `imagenet`, the CLI default) for their published
    weights, read from their library's cache; `none`; or a file (a Hugging Face folder too).
    """
    spec = get_spec(name)
    if isinstance(spec, ProviderSpec):
        trunk, weights_id, sha = providers.build_trunk(spec, weights)
        return LoadedBackbone(spec, trunk, weights_id, sha)
    if weights == "imagenet":
        model = load_imagenet(spec)
        sha = file_digest(hub_checkpoint_dir() / spec.weights_file)
        return LoadedBackbone(spec, _to_trunk(spec, model), spec.default_weights.name, sha)
    if weights == "none":
        # Random init: the caller seeds torch so "none" is reproducible.
        return LoadedBackbone(spec, _to_trunk(spec, spec.builder(weights=None)), "none", None)
    path = weights_path(weights)
    trunk = _to_trunk(spec, load_state_file(spec, path))
    return LoadedBackbone(spec, trunk, f"file:{path.name}", file_digest(path))


def _to_trunk(spec: BackboneSpec, model: nn.Module) -> nn.Module:
    """Replace the classification layer by Identity: the model then returns pooled (N, D)."""
    from torch import nn

    parent_path, _, child = spec.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, nn.Identity())
    return model


@dataclass(frozen=True)
class ModelInfo:
    """One row of `xray models` (None: unknown until the provider's extra is installed)."""

    name: str
    family: str
    feature_dim: int | None
    parameters: int | None
    weights_id: str
    weights_file: str
    """The weights file or snapshot folder the offline check looks for."""
    offline: bool | None
    stages: list[str] = field(default_factory=list)
    provider: str = "torchvision"
    installed: bool = True
    """Whether the provider's library is importable (`pip install -e '.[<provider>]'`)."""
    target: str = ""
    """What an alias stands for (`hf:microsoft/rad-dino`); the name itself otherwise."""
    poolings: list[str] = field(default_factory=list)
    licence: str = ""


def describe_models() -> list[ModelInfo]:
    """Rows for `xray models`: the torchvision registry, every alias, each provider's scheme."""
    rows = [
        ModelInfo(
            name=s.name,
            family=s.family,
            feature_dim=s.feature_dim,
            parameters=count_parameters(s.name),
            weights_id=s.default_weights.name,
            weights_file=s.weights_file,
            offline=imagenet_available(s.name),
            stages=list(s.stages),
            target=s.name,
            poolings=["avg"],
            licence="BSD-3-Clause (torchvision)",
        )
        for s in list_specs()
    ]
    for alias, entry in providers.ALIASES.items():
        provider = entry.target.partition(":")[0]
        if not providers.installed(provider):
            rows.append(
                ModelInfo(alias, "", None, None, "pretrained", "", None, provider=provider,
                          installed=False, target=entry.target, licence=entry.licence)
            )  # fmt: skip
            continue
        spec = providers.resolve(alias)
        offline, where = providers.weights_location(spec)
        rows.append(
            ModelInfo(
                name=alias,
                family=spec.family,
                feature_dim=spec.feature_dim,
                parameters=providers.count_parameters(spec),
                weights_id="pretrained",
                weights_file=where,
                offline=offline,
                stages=list(spec.stages),
                provider=provider,
                target=entry.target,
                poolings=list(spec.poolings),
                licence=spec.licence,
            )
        )
    for provider, scheme in zip(
        providers.PROVIDERS, ("timm:<model>", "hf:<repo id>", "txv:<weights>"), strict=True
    ):
        rows.append(
            ModelInfo(scheme, "", None, None, "pretrained", "", None, provider=provider,
                      installed=providers.installed(provider), target=scheme)
        )  # fmt: skip
    return rows
