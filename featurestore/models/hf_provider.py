"""Hugging Face vision encoders (`hf:<repo id>`): DINOv2 (with registers), ViT, CLIP and SigLIP
vision towers, built by transformers from a configuration (shipped with xray for the aliases, else
the snapshot's config.json) or `from_pretrained(local_files_only=True)`; preprocessing from the
repo's image processor configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models.preprocessing import Preprocessing
from featurestore.models.provider_spec import PRETRAINED, ProviderSpec, token_poolings
from featurestore.models.tokens import TokenTrunk, pool_tokens
from featurestore.models.weights import read_state_dict, weights_path

if TYPE_CHECKING:
    from featurestore.models.provider_spec import Alias

# model_type -> (config class, model class, summary pooling, needs interpolate_pos_encoding)
ARCHITECTURES: dict[str, tuple[str, str, str | None, bool]] = {
    "dinov2": ("Dinov2Config", "Dinov2Model", "cls", False),
    "dinov2_with_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersModel",
        "cls",
        False,
    ),
    "vit": ("ViTConfig", "ViTModel", "cls", True),
    "clip_vision_model": ("CLIPVisionConfig", "CLIPVisionModel", "cls", True),
    "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", "map", True),
}
# Full image-text checkpoints whose vision tower we take.
_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFEncoder(TokenTrunk):
    """A transformers vision encoder: last_hidden_state (N, T, C) and its summary vector."""

    def __init__(self, model: nn.Module, model_type: str) -> None:
        super().__init__()
        self.model = model
        self.model_type = model_type
        _, _, self.summary, self.interpolate = ARCHITECTURES[model_type]
        cfg: Any = model.config
        self.prefix = (
            0 if self.summary == "map" else 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        )

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=x, **kwargs)
        tokens = out.last_hidden_state  # (N, T, C)
        if self.summary == "map":  # SigLIP: its attention-pooling head
            return tokens, out.pooler_output
        if self.model_type == "clip_vision_model":  # CLIP normalises its class token after
            return tokens, out.pooler_output
        return tokens, tokens[:, 0]  # DINOv2 / ViT: last_hidden_state is already normed

    def before_last_block(self, x: Tensor) -> tuple[Tensor, int]:
        if not self.model_type.startswith("dinov2"):
            raise XrayError(
                f"no token-grid CAM for {self.model_type} encoders yet (DINOv2 and timm ViTs have "
                "one): explain a run on a CNN or a DINOv2-family backbone"
            )
        m: Any = self.model
        t = m.embeddings(x)  # (N, T, C): class, registers, patches
        for layer in m.encoder.layer[:-1]:
            t = _first(layer(t))
        return t, int(m.config.patch_size)

    def from_last_block(self, tokens: Tensor) -> Tensor:
        m: Any = self.model
        t = m.layernorm(_first(m.encoder.layer[-1](tokens)))
        return pool_tokens(t, self.prefix, t[:, 0])


def _first(out: Any) -> Tensor:
    """A transformers layer returns a tensor or a tuple led by one (it varies by version)."""
    return out[0] if isinstance(out, tuple) else out


def blocks_path(model: nn.Module) -> str:
    """Dotted path of the transformer's ModuleList of blocks (it moves between versions)."""
    n = int(getattr(model.config, "num_hidden_layers", 0))
    for path, module in model.named_modules():
        last = path.rpartition(".")[2]
        if isinstance(module, nn.ModuleList) and len(module) == n and last in ("layer", "layers"):
            return path
    raise XrayError(f"cannot find the transformer blocks of {type(model).__name__}")


def _cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def _snapshot_folder(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _config_dict(model_id: str, alias: Alias | None) -> dict[str, Any]:
    """The architecture configuration: shipped with the alias, else the cached config.json."""
    if alias is not None and alias.config is not None:
        return dict(alias.config)
    path = _cached(model_id, "config.json")
    if path is None:
        raise XrayError(
            f"hf:{model_id} is not an xray alias, so its config.json must be on disk: "
            f"`hf download {model_id}` (into {_snapshot_folder(model_id)})"
        )
    doc = json.loads(path.read_text())
    kind = str(doc.get("model_type", ""))
    if kind in _TOWERS:
        doc = {**doc.get("vision_config", {}), "model_type": _TOWERS[kind]}
    return doc


def _config(doc: Mapping[str, Any]) -> Any:
    kind = str(doc.get("model_type", ""))
    if kind not in ARCHITECTURES:
        raise XrayError(
            f"xray does not know the {kind!r} architecture: hf: takes "
            f"{', '.join(ARCHITECTURES)} (or the vision tower of clip / siglip)"
        )
    config_cls = getattr(transformers, ARCHITECTURES[kind][0])
    return config_cls(**{k: v for k, v in doc.items() if k != "model_type"})


def describe(name: str, model_id: str, alias: Alias | None) -> ProviderSpec:
    doc = _config_dict(model_id, alias)
    config = _config(doc)
    kind = str(doc["model_type"])
    width = int(config.hidden_size)
    poolings = token_poolings(width, ARCHITECTURES[kind][2])
    with torch.device("meta"):
        prefix = "model." + blocks_path(_new_model(kind, config))
    return ProviderSpec(
        name=name,
        provider="hf",
        model_id=model_id,
        family="vit",
        feature_dim=max(b for _, b in poolings.values()),
        poolings=poolings,
        stages=tuple(f"{prefix}.{i}" for i in range(int(config.num_hidden_layers))),
        config=doc,
        processor=alias.processor if alias else None,
        licence=alias.licence if alias else "see the model card",
        input_size=int(getattr(config, "image_size", 224)),
    )


def _model_class(spec: ProviderSpec) -> Any:
    return getattr(transformers, ARCHITECTURES[str(spec.config["model_type"])][1])  # type: ignore[index]


def _new_model(kind: str, config: Any) -> nn.Module:
    """A randomly initialised encoder of `config` (ViT without its tanh pooler)."""
    cls = getattr(transformers, ARCHITECTURES[kind][1])
    model: nn.Module = cls(config, add_pooling_layer=False) if kind == "vit" else cls(config)
    return model


def _weights_file(folder_or_repo: str | Path, *, local: bool) -> Path | None:
    for filename in _WEIGHT_FILES:
        if local:
            path = Path(folder_or_repo) / filename
            if path.is_file():
                return path
        else:
            found = _cached(str(folder_or_repo), filename)
            if found is not None:
                return found
    return None


def weights_location(spec: ProviderSpec) -> tuple[bool, str]:
    found = _weights_file(spec.model_id, local=False)
    return found is not None, str(found or _snapshot_folder(spec.model_id))


def _offline(spec: ProviderSpec) -> XrayError:
    return XrayError(
        f"weights of hf:{spec.model_id} are not on disk: `hf download "
        f"{spec.model_id}` (into {_snapshot_folder(spec.model_id)}) or pass --weights DIR "
        "(a folder with config.json and model.safetensors), --weights FILE or --weights none"
    )


def weights_identity(spec: ProviderSpec, weights: str) -> tuple[str, str | None]:
    if weights == "none":
        return "none", None
    if weights in PRETRAINED:
        found = _weights_file(spec.model_id, local=False)
        if found is None:
            raise _offline(spec)
        # .../snapshots/<commit>/model.safetensors: the commit pins the revision.
        return f"hf:{spec.model_id}@{found.parent.name[:12]}", file_digest(found)
    path = Path(weights).expanduser()
    if path.is_dir():
        found = _weights_file(path, local=True)
        if found is None:
            raise XrayError(f"--weights {path} holds no {' or '.join(_WEIGHT_FILES)}")
        return f"dir:{path.name}", file_digest(found)
    path = weights_path(weights)
    return f"file:{path.name}", file_digest(path)


def build(spec: ProviderSpec, weights: str) -> tuple[nn.Module, str, str | None]:
    weights_id, sha = weights_identity(spec, weights)
    cls = _model_class(spec)
    kind = str(spec.config["model_type"])  # type: ignore[index]
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if kind == "vit" else {}
    source: str | Path | None = None
    if weights in PRETRAINED:
        source = spec.model_id
    elif weights != "none" and Path(weights).expanduser().is_dir():
        source = Path(weights).expanduser()
    if source is not None:
        try:
            model = cls.from_pretrained(str(source), local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise XrayError(f"cannot load hf:{spec.model_id} from {source}: {first}") from None
    else:
        model = _new_model(kind, _config(spec.config or {}))
        if weights != "none":
            path = weights_path(weights)
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = read_state_dict(path)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise XrayError(
                    f"{path.name} does not fit hf:{spec.model_id} ({first}); pass its state dict"
                ) from None
    return HFEncoder(model.eval(), kind), weights_id, sha


def _processor(spec: ProviderSpec, weights: str) -> Any:
    """The repo's image processor: the snapshot's (or --weights DIR's) preprocessor_config.json
    when on disk, else the copy shipped with the alias; built by transformers either way."""
    folder: Path | None = None
    cached = _cached(spec.model_id, "preprocessor_config.json")
    if weights not in ("none", *PRETRAINED) and Path(weights).expanduser().is_dir():
        folder = Path(weights).expanduser()  # --weights DIR brings its own
    elif cached is not None and (weights in PRETRAINED or spec.processor is None):
        folder = cached.parent  # the snapshot's; the shipped copy serves random init offline
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        doc = json.loads((folder / "preprocessor_config.json").read_text())
    elif spec.processor is not None:
        doc = dict(spec.processor)
    else:
        raise XrayError(
            f"no image processor configuration for hf:{spec.model_id}: put the repo's "
            f"preprocessor_config.json in {_snapshot_folder(spec.model_id)} "
            f"(`hf download {spec.model_id}`)"
        )
    kind = str(doc.get("image_processor_type", "")).removesuffix("Fast")
    cls = getattr(transformers, kind, None)
    if cls is None:
        raise XrayError(f"transformers has no image processor {kind!r} (hf:{spec.model_id})")
    fields = {k: v for k, v in doc.items() if k not in ("image_processor_type", "processor_class")}
    return cls(**fields)


def _size(value: Any, key: str) -> int | None:
    got = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
    return int(got) if got else None


def preprocessing(spec: ProviderSpec, weights: str, image_size: int) -> Preprocessing:
    """The processor's resize / crop / mean / std, with the crop at `image_size`.

    A `shortest_edge` resize then centre crop keeps its ratio (256/224 for DINOv2); a
    `height x width` resize (SigLIP) squashes the image to a square, as the processor does.
    """
    proc = _processor(spec, weights)
    if getattr(proc, "do_rescale", True) and abs(float(proc.rescale_factor) - 1 / 255) > 1e-9:
        raise XrayError(f"hf:{spec.model_id}: a rescale factor other than 1/255 is not supported")
    shortest = _size(proc.size, "shortest_edge")
    crop = _size(getattr(proc, "crop_size", None), "height") if proc.do_center_crop else None
    mean = tuple(float(m) for m in proc.image_mean)
    std = tuple(float(s) for s in proc.image_std)
    interpolation = _RESAMPLE.get(int(proc.resample), "bilinear")
    if shortest is not None:
        ratio = shortest / crop if crop else 1.0
        return Preprocessing(
            mean, std, max(image_size, round(image_size * ratio)), image_size, interpolation
        )
    return Preprocessing(mean, std, image_size, image_size, interpolation, squash=True)


def count_parameters(spec: ProviderSpec) -> int:
    with torch.device("meta"):
        model = _new_model(str(spec.config["model_type"]), _config(spec.config or {}))  # type: ignore[index]
    return sum(p.numel() for p in model.parameters())
