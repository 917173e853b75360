"""timm backbones (`timm:<model name>`): built with `timm.create_model`, preprocessing from
`timm.data.resolve_data_config`, weights from timm's Hugging Face / torch hub cache or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models.preprocessing import Preprocessing
from featurestore.models.provider_spec import PRETRAINED, ProviderSpec, token_poolings
from featurestore.models.tokens import TokenTrunk, pool_tokens
from featurestore.models.weights import read_state_dict, weights_path

if TYPE_CHECKING:
    from featurestore.models.provider_spec import Alias


class TimmViT(TokenTrunk):
    """A timm vision transformer: `forward_features` gives (N, T, C) after the final norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))
        self.has_cls = getattr(model, "cls_token", None) is not None

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        tokens: Tensor = self.model.forward_features(x)  # type: ignore[operator]  # (N, T, C)
        return tokens, tokens[:, 0] if self.has_cls else None

    def before_last_block(self, x: Tensor) -> tuple[Tensor, int]:
        m: Any = self.model  # timm's VisionTransformer.forward_features, less the last block
        t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for block in m.blocks[:-1]:
            t = block(t)
        return t, int(m.patch_embed.patch_size[0])

    def from_last_block(self, tokens: Tensor) -> Tensor:
        m: Any = self.model
        t = m.norm(m.blocks[-1](tokens))
        return pool_tokens(t, self.prefix, t[:, 0] if self.has_cls else None)


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def _create(model_id: str, **kwargs: Any) -> nn.Module:
    """timm.create_model without a classifier; ViTs take any input size (dynamic_img_size)."""
    try:
        try:
            return timm.create_model(model_id, num_classes=0, dynamic_img_size=True, **kwargs)
        except TypeError:  # not a ViT: a CNN's input size is free anyway
            return timm.create_model(model_id, num_classes=0, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise XrayError(
                f"timm has no model {model_id!r}: see timm.list_models() for the names"
            ) from None
        raise


def describe(name: str, model_id: str, alias: Alias | None) -> ProviderSpec:
    """Build on the meta device to read the feature size, token layout and stages."""
    with torch.device("meta"):
        model: Any = _create(model_id)
    width = int(model.num_features)
    if _is_vit(model):
        trunk = TimmViT(model)
        poolings = token_poolings(width, "cls" if trunk.has_cls else None)
        stages = tuple(f"model.blocks.{i}" for i in range(len(model.blocks)))
        family = "vit"
    else:
        poolings = {"avg": (0, width)}
        stages = tuple(str(f["module"]) for f in model.feature_info)
        family = "cnn"
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return ProviderSpec(
        name=name,
        provider="timm",
        model_id=model_id,
        family=family,
        feature_dim=max(b for _, b in poolings.values()),
        poolings=poolings,
        stages=stages,
        licence=str(cfg.get("license", "") or (alias.licence if alias else "")),
        input_size=size,
    )


def _pretrained_file(model_id: str) -> tuple[Path | None, Path]:
    """(the cached weights file or None, where it belongs) for the model's pretrained tag."""
    found_cfg: Any = timm.models.get_pretrained_cfg(model_id) or {}
    cfg: dict[str, Any] = found_cfg.to_dict() if hasattr(found_cfg, "to_dict") else dict(found_cfg)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found), Path(found).parent
        folder = Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))
        return None, folder
    url = cfg.get("url") or ""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    name = os.path.basename(urlparse(url).path) if url else f"{model_id}.pth"
    target = hub / name
    return (target if target.is_file() else None), target


def weights_location(spec: ProviderSpec) -> tuple[bool, str]:
    found, where = _pretrained_file(spec.model_id)
    return found is not None, str(found or where)


def weights_identity(spec: ProviderSpec, weights: str) -> tuple[str, str | None]:
    if weights == "none":
        return "none", None
    if weights in PRETRAINED:
        found, where = _pretrained_file(spec.model_id)
        if found is None:
            raise _offline(spec, where)
        tag = timm.models.get_pretrained_cfg(spec.model_id)
        return f"timm:{getattr(tag, 'hf_hub_id', None) or spec.model_id}", file_digest(found)
    path = weights_path(weights)
    return f"file:{path.name}", file_digest(path)


def _offline(spec: ProviderSpec, where: Path) -> XrayError:
    return XrayError(
        f"timm weights of {spec.model_id} are not on disk: download them once into {where} "
        "(timm.create_model(..., pretrained=True) with a network), or pass --weights none "
        "(random init) or --weights FILE (a state dict)"
    )


def build(spec: ProviderSpec, weights: str) -> tuple[nn.Module, str, str | None]:
    weights_id, sha = weights_identity(spec, weights)
    if weights == "none":
        model = _create(spec.model_id)
    elif weights in PRETRAINED:
        found, _ = _pretrained_file(spec.model_id)
        # timm's own loader reads the cached file (no download): pretrained_cfg_overlay=file.
        model = _create(spec.model_id, pretrained=True, pretrained_cfg_overlay={"file": str(found)})
    else:
        model = _create(spec.model_id)
        state = read_state_dict(weights_path(weights))
        head = {k for k in state if k.startswith(("head.", "fc.", "classifier."))}
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in state.items() if k not in head}, strict=False
        )
        if missing or unexpected:
            raise XrayError(
                f"{Path(weights).name} does not fit timm:{spec.model_id}: "
                f"{len(missing)} keys missing, {len(unexpected)} unexpected; "
                f"pass a {spec.model_id} state dict"
            )
    return (TimmViT(model) if spec.family == "vit" else model), weights_id, sha


def preprocessing(spec: ProviderSpec, weights: str, image_size: int) -> Preprocessing:
    """timm's resolved data config, the crop set to `image_size` and the crop ratio kept."""
    del weights  # timm's data config belongs to the architecture's pretrained tag
    with torch.device("meta"):
        model = _create(spec.model_id)
    cfg = timm.data.resolve_data_config({}, model=model)
    crop_pct = float(cfg.get("crop_pct", 1.0))
    mode = str(cfg.get("crop_mode", "center"))
    return Preprocessing(
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        resize=image_size if mode == "squash" else max(image_size, round(image_size / crop_pct)),
        crop=image_size,
        interpolation=str(cfg.get("interpolation", "bilinear")),
        squash=mode == "squash",
    )


def count_parameters(spec: ProviderSpec) -> int:
    with torch.device("meta"):
        model = _create(spec.model_id)
    return sum(p.numel() for p in model.parameters())
