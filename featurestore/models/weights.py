"""Backbone weights: the torch hub cache, ImageNet downloads, state-dict files (weights_only)."""

from __future__ import annotations

import pickle
import re
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import XrayError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featurestore.models.backbones import BackboneSpec


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for downloaded weights (`$TORCH_HOME/hub/checkpoints`)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise XrayError(
            f"weights {weights!r} not found: pass --weights imagenet, --weights none "
            "or the path of a state dict file"
        )
    return path


def load_imagenet(spec: BackboneSpec) -> nn.Module:
    """The full torchvision model with its ImageNet weights (fetched into the cache if absent)."""
    weights = spec.default_weights
    target = hub_checkpoint_dir() / spec.weights_file
    if not target.is_file():
        download_imagenet(spec, target)
    try:
        return spec.builder(weights=weights)
    except OSError as exc:  # present but unreadable (permissions, I/O error)
        raise XrayError(
            f"cannot read the cached ImageNet weights {target} ({exc}): delete the file "
            "and run again, or pass --weights none / --weights PATH"
        ) from None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # A partial or tampered file in the cache fails torch.load or the hash check.
        raise XrayError(
            f"cached ImageNet weights {target} are corrupt ({str(exc).splitlines()[0]}): "
            "delete the file and run again"
        ) from None


def download_imagenet(spec: BackboneSpec, target: Path) -> None:
    """Fetch the ImageNet checkpoint into the hub cache; offline: one line saying what to do."""
    import torch.hub

    url = spec.default_weights.url
    # torchvision checks the sha256 prefix embedded in the file name (resnet50-11ad3fa6.pth).
    match = re.search(r"-([a-f0-9]+)\.", spec.weights_file)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError, RuntimeError):
        raise XrayError(
            f"ImageNet weights for {spec.name} are not available offline: put {spec.weights_file} "
            f"(from {url}) in {target.parent}, or pass --weights none (random init) "
            "or --weights PATH (a state dict)"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; unwrap {"state_dict"|"model": ...}; strip `module.`."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise XrayError(
            f"refusing to load {path}: it is not a plain state dict (weights_only=True: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise XrayError(f"cannot read weights file {path}: {first}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise XrayError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors, "
            "optionally under 'state_dict' or 'model')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_file(spec: BackboneSpec, path: Path) -> nn.Module:
    """The full model from a state dict file: strict, except a classifier of another shape."""
    state = read_state_dict(path)
    model = spec.builder(weights=None)
    expected = model.state_dict()
    head = spec.head + "."
    # A classifier trained for other classes (e.g. 2 instead of 1000) is dropped with the head.
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(head) and k in expected and v.shape != expected[k].shape)
    }
    wrong_shape = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} of another shape ({_some(wrong_shape)})")
    if missing:
        problems.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if problems:
        raise XrayError(
            f"{path.name} does not fit {spec.name}: keys "
            + "; ".join(problems)
            + f"; pass a {spec.name} state dict"
        )
    model.load_state_dict(state, strict=False)  # only the dropped classifier may be absent
    return model


def _some(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (", ..." if len(items) > n else "")
