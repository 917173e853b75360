"""Backbone registry: torchvision builders, their weights, preprocessing, feature size, stages."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models.heads import count_params
from featurestore.models.weights import (
    hub_checkpoint_dir,
    load_imagenet,
    load_state_file,
    weights_path,
)

if TYPE_CHECKING:  # torch is imported where a backbone is actually built (fast CLI start)
    import torch
    from PIL import Image
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

    spec: BackboneSpec
    trunk: nn.Module
    """(N, 3, H, W) -> (N, D); the torchvision model with its classifier replaced by Identity."""
    weights_id: str
    """`IMAGENET1K_V2`, `none` or `file:<name>`."""
    weights_sha256: str | None
    """SHA-256 of the weights file; None for random init."""


@dataclass(frozen=True)
class Preprocessing:
    """The resize / center-crop / normalize the weights were trained with, scaled to a size."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    """Shorter side after resizing, in pixels."""
    crop: int
    """Side of the square center crop fed to the network, in pixels."""
    interpolation: str
    """torchvision InterpolationMode value (`bilinear`, `bicubic`)."""

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 channels")

    @cached_property
    def _transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation)),
                T.CenterCrop(self.crop),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalized float tensor (3, crop, crop)."""
        return self._transform(image)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in stores and runs).

        `intensity` names the decoder's intensity rule (`featurestore.data.INTENSITY_RULE`):
        a store made under another rule has other preprocessing, so `extract` rebuilds it.
        """
        from featurestore.data import INTENSITY_RULE

        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "intensity": INTENSITY_RULE,
        }


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; a duplicate name is a bug and raises ValueError."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone called `name` (XrayError listing the valid names otherwise)."""
    _register_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise XrayError(f"unknown backbone {name!r}: choose one of {valid}") from None


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
    """Whether the ImageNet weights file of `name` is already in the torch hub cache."""
    return (hub_checkpoint_dir() / get_spec(name).weights_file).is_file()


def count_parameters(name: str) -> int:
    """Parameters of the trunk, counted on the meta device (nothing allocated or downloaded)."""
    import torch

    spec = get_spec(name)
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
    del weights  # same preprocessing for every weights choice (see above)
    preset = get_spec(name).default_weights.transforms()
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
    if weights == "imagenet":
        return spec.default_weights.name, None
    if weights == "none":
        return "none", None
    path = weights_path(weights)
    return f"file:{path.name}", file_digest(path)


def weights_tag(weights_id: str, sha256: str | None) -> str:
    """Short file-name-safe tag of the weights: `imagenet`, `none`, `<stem>-<sha8>`."""
    if weights_id == "none":
        return "none"
    if weights_id.startswith("file:"):
        stem = Path(weights_id[5:]).stem.replace(" ", "_")
        return f"{stem}-{(sha256 or '')[:8]}"
    return "imagenet" if weights_id.startswith("IMAGENET") else weights_id.lower()


def load_backbone(name: str, weights: str = "imagenet") -> LoadedBackbone:
    """Build the trunk of `name`: ImageNet weights, random init ("none") or a state dict file."""
    spec = get_spec(name)
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
    """One row of `xray models`."""

    name: str
    family: str
    feature_dim: int
    parameters: int
    weights_id: str
    weights_file: str
    offline: bool
    stages: list[str] = field(default_factory=list)


def describe_models() -> list[ModelInfo]:
    """Registry rows for `xray models`: feature size, parameters, weights, offline availability."""
    return [
        ModelInfo(
            name=s.name,
            family=s.family,
            feature_dim=s.feature_dim,
            parameters=count_parameters(s.name),
            weights_id=s.default_weights.name,
            weights_file=s.weights_file,
            offline=imagenet_available(s.name),
            stages=list(s.stages),
        )
        for s in list_specs()
    ]
