"""Provider backbones (timm:, hf:, txv:, aliases): names, shipped configs, preprocessing from each
library's own config, pooled token features, offline errors, a missing extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore.errors import XrayError
from featurestore.models import (
    ALIASES,
    Alias,
    ProviderSpec,
    count_parameters,
    get_spec,
    load_backbone,
    preprocessing_for,
    providers,
    weights_identity,
    weights_tag,
)

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("torchxrayvision")

TINY_DINO = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 8,
    "image_size": 32,
}
TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
}


@pytest.fixture
def tiny_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tiny Hugging Face aliases, shipped like the real ones (config + processor)."""
    bit, siglip = ALIASES["dinov2-small"].processor, ALIASES["medsiglip"].processor
    monkeypatch.setitem(ALIASES, "tiny-dino", Alias("hf:xray-tests/tiny-dino", TINY_DINO, bit))
    monkeypatch.setitem(
        ALIASES, "tiny-siglip", Alias("hf:xray-tests/tiny-siglip", TINY_SIGLIP, siglip)
    )
    monkeypatch.setattr(providers, "_RESOLVED", {})


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_resolves_offline_to_its_real_architecture(alias: str) -> None:
    spec = get_spec(alias)
    assert isinstance(spec, ProviderSpec) and spec.name == alias
    assert get_spec(ALIASES[alias].target) == spec  # the long name files under the alias
    assert spec.feature_dim == max(stop for _, stop in spec.poolings.values())
    assert spec.stages and count_parameters(alias) > 1_000_000  # meta device: no allocation
    if spec.family == "vit":
        width = spec.poolings["mean"][1] - spec.poolings["mean"][0]
        assert spec.feature_dim == 2 * width  # summary token | patch mean
        if spec.provider == "hf":
            assert spec.config is not None and int(spec.config["hidden_size"]) == width
    pre = preprocessing_for(alias, "none", 64)
    assert pre.crop == 64 and pre.channels == (1 if spec.provider == "txv" else 3)


def test_alias_sizes_match_the_published_models() -> None:
    assert get_spec("rad-dino").feature_dim == 2 * 768
    assert get_spec("dinov2-small").feature_dim == 2 * 384
    assert list(get_spec("medsiglip").poolings) == ["map", "mean"]
    assert get_spec("medsiglip").input_size == 448
    assert get_spec("txv-all").feature_dim == 1024
    assert 420e6 < count_parameters("medsiglip") < 440e6  # SigLIP So400m vision tower


def test_preprocessing_comes_from_each_librarys_config() -> None:
    import timm

    # HF: the DINOv2 processor resizes the short side to 256 and crops 224 (bicubic).
    dino = preprocessing_for("dinov2-small", "none", 224)
    assert (dino.resize, dino.crop, dino.interpolation) == (256, 224, "bicubic")
    assert dino.mean == pytest.approx((0.485, 0.456, 0.406))
    rad = preprocessing_for("rad-dino", "none", 518)
    assert (rad.resize, rad.crop, rad.mean[0]) == (518, 518, pytest.approx(0.5307))
    sig = preprocessing_for("medsiglip", "none", 448)
    assert sig.squash and (sig.resize, sig.crop, sig.mean) == (448, 448, (0.5, 0.5, 0.5))
    # timm: resolve_data_config, crop_pct kept at any size.
    vit = preprocessing_for("timm:vit_tiny_patch16_224", "none", 224)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("vit_tiny_patch16_224"))
    assert vit.mean == tuple(cfg["mean"]) and vit.resize == round(224 / cfg["crop_pct"])
    # torchxrayvision: one channel, 8-bit grey mapped to [-1024, 1024] as xrv normalises.
    txv = preprocessing_for("txv-all", "none", 32)
    black, white = (Image.new("RGB", (40, 48), (v, v, v)) for v in (0, 255))
    assert txv(black).shape == (1, 32, 32)
    assert txv(black).min().item() == pytest.approx(-1024)
    assert txv(white).max().item() == pytest.approx(1024)
    assert txv.as_dict()["channels"] == 1


@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [("timm:resnet10t", 32, 512), ("timm:vit_tiny_patch16_224", 32, 384), ("txv-all", 32, 1024)],
)
def test_trunks_build_random_init_and_pool(name: str, size: int, dim: int) -> None:
    torch.manual_seed(0)
    loaded = load_backbone(name, "none")
    spec = loaded.spec
    channels = preprocessing_for(name, "none", size).channels
    with torch.no_grad():
        out = loaded.trunk.eval()(torch.randn(2, channels, size, size))
    assert out.shape == (2, dim) == (2, spec.feature_dim)
    assert loaded.weights_id == "none" and loaded.weights_sha256 is None
    for stage in spec.stages:
        loaded.trunk.get_submodule(stage)


def test_vit_columns_are_the_class_token_and_the_patch_mean() -> None:
    torch.manual_seed(0)
    trunk: Any = load_backbone("timm:vit_tiny_patch16_224", "none").trunk.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = trunk(x)
        tokens = trunk.model.forward_features(x)  # (2, 1 + 4, 192)
    assert torch.allclose(out[:, :192], tokens[:, 0])
    assert torch.allclose(out[:, 192:], tokens[:, 1:].mean(1))


def test_hf_alias_folder_and_file_weights(tiny_aliases: None, tmp_path: Path) -> None:
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**{
        k: v for k, v in TINY_DINO.items() if k != "model_type"
    })).eval()  # fmt: skip
    model.save_pretrained(tmp_path / "dino")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
        from_dir = load_backbone("tiny-dino", str(tmp_path / "dino"))
        out = from_dir.trunk.eval()(x)
    assert torch.allclose(out, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), atol=1e-5)
    assert from_dir.weights_id == "dir:dino" and from_dir.weights_sha256
    save_file(model.state_dict(), str(tmp_path / "dino.safetensors"))
    from_file = load_backbone("tiny-dino", str(tmp_path / "dino.safetensors"))
    with torch.no_grad():
        assert torch.allclose(from_file.trunk.eval()(x), out, atol=1e-5)
    assert weights_tag(*weights_identity("tiny-dino", str(tmp_path / "dino.safetensors")))
    with pytest.raises(XrayError, match="does not fit hf:xray-tests/tiny-dino"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pt")
        load_backbone("tiny-dino", str(tmp_path / "bad.pt"))


def test_siglip_tower_pools_its_attention_head_and_patch_mean(tiny_aliases: None) -> None:
    torch.manual_seed(0)
    loaded = load_backbone("tiny-siglip", "none")
    trunk: Any = loaded.trunk.eval()
    x = torch.randn(2, 3, 48, 48)  # another size: position embeddings interpolated
    with torch.no_grad():
        out = trunk(x)
        ref = trunk.model(pixel_values=x, interpolate_pos_encoding=True)
    assert out.shape == (2, 64) and list(loaded.spec.poolings) == ["map", "mean"]
    assert torch.allclose(out[:, :32], ref.pooler_output)
    assert torch.allclose(out[:, 32:], ref.last_hidden_state.mean(1))


def test_missing_weights_are_one_line_naming_where_to_put_them(
    tiny_aliases: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchxrayvision as xrv

    with pytest.raises(XrayError, match=r"hf download xray-tests/tiny-dino.*models--"):
        load_backbone("tiny-dino", "pretrained")
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "xrv"))
    with pytest.raises(XrayError, match=r"put nih-pc-chex.*\.pt \(from https://.*\) in .*xrv"):
        load_backbone("txv-all", "imagenet")
    assert not providers.weights_location(get_spec("txv-all"))[0]


def test_unknown_names_and_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(XrayError, match="timm has no model"):
        get_spec("timm:no_such_net")
    with pytest.raises(XrayError, match="torchxrayvision has no weights"):
        get_spec("txv:nope")
    with pytest.raises(XrayError, match="unknown backbone"):
        get_spec("vgg16")
    with pytest.raises(XrayError, match=r"config\.json must be on disk"):
        get_spec("hf:xray-tests/not-cached")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a)
    )
    monkeypatch.setattr(providers, "_RESOLVED", {})
    with pytest.raises(XrayError, match=r"pip install -e '\.\[timm\]'"):
        get_spec("timm:resnet10t")


def test_describe_models_lists_aliases_and_schemes() -> None:
    from featurestore.models import describe_models

    rows = {r.name: r for r in describe_models()}
    assert {"resnet50", "rad-dino", "medsiglip", "txv-all", "timm:<model>"} <= set(rows)
    assert rows["rad-dino"].target == "hf:microsoft/rad-dino" and rows["rad-dino"].installed
    assert rows["rad-dino"].offline in (True, False)
    assert "models--microsoft--rad-dino" in rows["rad-dino"].weights_file


def test_processor_json_on_disk_is_preferred(tiny_aliases: None, tmp_path: Path) -> None:
    folder = tmp_path / "dino"
    folder.mkdir()
    doc = {**ALIASES["dinov2-small"].processor, "image_mean": [0.1, 0.2, 0.3]}  # type: ignore[dict-item]
    (folder / "preprocessor_config.json").write_text(json.dumps(doc))
    pre = preprocessing_for("tiny-dino", str(folder), 32)
    assert pre.mean == pytest.approx((0.1, 0.2, 0.3))
    assert np.isclose(pre.std[0], 0.229)
