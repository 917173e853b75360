"""torchxrayvision chest-X-ray DenseNet-121s (`txv:<weights name>`): built with
`xrv.models.DenseNet`, one grayscale channel normalised to torchxrayvision's [-1024, 1024] range.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import torchxrayvision as xrv
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models.preprocessing import Preprocessing
from featurestore.models.provider_spec import PRETRAINED, ProviderSpec
from featurestore.models.weights import read_state_dict, weights_path

if TYPE_CHECKING:
    from featurestore.models.provider_spec import Alias

FEATURES = 1024
"""DenseNet-121's pooled feature size."""


class TxvTrunk(nn.Module):
    """(N, 1, H, W) in [-1024, 1024] -> (N, 1024): torchxrayvision's `features2` (the pooled
    post-ReLU features its classifier reads), without its resize-to-224 so `--image-size` holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activations(x))

    def activations(self, x: Tensor) -> Tensor:
        """The last dense block's post-ReLU map (N, 1024, h, w) (Grad-CAM's layer)."""
        features: Any = self.model.features
        return F.relu(features(x))

    @staticmethod
    def pool(a: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(a, (1, 1)), 1)

    def cam_split(self) -> tuple[Any, Any]:
        """(x -> A (N, 1024, h, w), A -> pooled features) for Grad-CAM."""
        return self.activations, self.pool


def _canonical(model_id: str) -> str:
    urls = xrv.models.model_urls
    if model_id not in urls:
        names = ", ".join(k for k in urls if k.startswith("densenet121"))
        raise XrayError(f"torchxrayvision has no weights {model_id!r}: choose one of {names}")
    if not model_id.startswith("densenet121"):  # short names (`all`) of the same files
        url = urls[model_id]["weights_url"]
        model_id = next(
            k for k, v in urls.items() if k.startswith("densenet") and v["weights_url"] == url
        )
    return model_id


def describe(name: str, model_id: str, alias: Alias | None) -> ProviderSpec:
    canonical = _canonical(model_id)
    meta = xrv.models.model_urls[canonical]
    return ProviderSpec(
        name=name,
        provider="txv",
        model_id=canonical,
        family="txv-densenet",
        feature_dim=FEATURES,
        poolings={"avg": (0, FEATURES)},
        stages=tuple(f"model.features.denseblock{i}" for i in range(1, 5)),
        licence=alias.licence if alias else "Apache-2.0",
        input_size=int(meta.get("input_resolution", 224)),
    )


def _cache_file(spec: ProviderSpec) -> Path:
    url = xrv.models.model_urls[spec.model_id]["weights_url"]
    return Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)


def weights_location(spec: ProviderSpec) -> tuple[bool, str]:
    path = _cache_file(spec)
    return path.is_file(), str(path)


def weights_identity(spec: ProviderSpec, weights: str) -> tuple[str, str | None]:
    if weights == "none":
        return "none", None
    if weights in PRETRAINED:
        path = _cache_file(spec)
        if not path.is_file():
            url = xrv.models.model_urls[spec.model_id]["weights_url"]
            raise XrayError(
                f"torchxrayvision weights {spec.model_id} are not on disk: put {path.name} "
                f"(from {url}) in {path.parent}, or pass --weights none or --weights FILE"
            )
        return f"txv:{spec.model_id}", file_digest(path)
    path = weights_path(weights)
    return f"file:{path.name}", file_digest(path)


def build(spec: ProviderSpec, weights: str) -> tuple[nn.Module, str, str | None]:
    weights_id, sha = weights_identity(spec, weights)
    if weights in PRETRAINED:
        # torchxrayvision's own loader reads its cached release file (checked present above,
        # so nothing is downloaded); it unpickles that file, as the library always does.
        model = xrv.models.DenseNet(weights=spec.model_id)
    else:
        model = xrv.models.DenseNet(weights=None)
        if weights != "none":
            state = read_state_dict(weights_path(weights))
            state = {
                k: v
                for k, v in state.items()
                if not k.startswith("classifier.") and k != "op_threshs"
            }
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("classifier.") and k != "op_threshs"]
            if missing or unexpected:
                raise XrayError(
                    f"{Path(weights).name} does not fit a torchxrayvision DenseNet-121: "
                    f"{len(missing)} keys missing, {len(unexpected)} unexpected"
                )
    return TxvTrunk(model.eval()), weights_id, sha


def preprocessing(spec: ProviderSpec, weights: str, image_size: int) -> Preprocessing:
    """One channel, 8-bit grey mapped by `xrv.datasets.normalize` (to [-1024, 1024]).

    `normalize(v, 255)` is affine in v, so it equals Normalize(mean, std) after ToTensor's
    v/255: mean and std are read off the library's function at 0 and 255, not copied.
    torchxrayvision crops the centre square and resizes it: the same as resizing the shorter
    side to `image_size` and centre-cropping.
    """
    del spec, weights
    lo, hi = (float(v) for v in xrv.datasets.normalize(np.array([0.0, 255.0]), 255))
    std = 1.0 / (hi - lo)
    return Preprocessing(
        mean=(-lo * std,), std=(std,), resize=image_size, crop=image_size,
        interpolation="bilinear", channels=1,
    )  # fmt: skip


def count_parameters(spec: ProviderSpec) -> int:
    del spec
    with torch.device("meta"):
        model = xrv.models.DenseNet(weights=None)
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier."))
