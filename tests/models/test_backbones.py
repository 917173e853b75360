"""Backbone registry: trunks, stages, preprocessing, weights imagenet (offline) / none / PATH."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from featurestore.errors import XrayError
from featurestore.models import (
    BackboneSpec,
    backbones,
    get_spec,
    list_specs,
    load_backbone,
    preprocessing_for,
    weights_identity,
    weights_tag,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_trunk_returns_pooled_features_and_stages_resolve(spec: BackboneSpec) -> None:
    torch.manual_seed(0)
    loaded = load_backbone(spec.name, "none")
    assert loaded.weights_id == "none" and loaded.weights_sha256 is None
    trunk = loaded.trunk.eval()
    with torch.inference_mode():
        out = trunk(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, spec.feature_dim)
    for stage in spec.stages:
        trunk.get_submodule(stage)  # raises AttributeError when a stage path is wrong
    # The classifier is gone: the trunk has exactly the 1000-class Linear fewer parameters.
    assert backbones.count_parameters(spec.name) == sum(p.numel() for p in trunk.parameters())
    meta = spec.default_weights.meta["num_params"]
    assert meta - backbones.count_parameters(spec.name) == spec.feature_dim * 1000 + 1000


def test_registry_names_and_errors() -> None:
    names = [s.name for s in list_specs()]
    assert names == ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"]
    with pytest.raises(XrayError, match=r"unknown backbone 'vgg16'.*densenet121.*resnet50"):
        get_spec("vgg16")
    with pytest.raises(ValueError, match="already registered"):
        backbones.register(get_spec("resnet18"))


def test_spec_validation() -> None:
    spec = get_spec("resnet18")
    with pytest.raises(ValueError, match="family"):
        BackboneSpec("x", spec.builder, spec.weights_enum, 512, ("conv1",), "vgg", "fc")
    with pytest.raises(ValueError, match="feature_dim"):
        BackboneSpec("x", spec.builder, spec.weights_enum, 0, ("conv1",), "resnet", "fc")


def test_preprocessing_comes_from_the_weights() -> None:
    r50 = preprocessing_for("resnet50", "imagenet", 224)
    preset = get_spec("resnet50").default_weights.transforms()
    assert (r50.resize, r50.crop) == (preset.resize_size[0], preset.crop_size[0]) == (232, 224)
    assert list(r50.mean) == list(preset.mean) and list(r50.std) == list(preset.std)
    eff = preprocessing_for("efficientnet_b0", "none", 64)
    assert eff.interpolation == "bicubic" and (eff.resize, eff.crop) == (73, 64)  # 256/224 ratio
    image = Image.new("RGB", (90, 60), (128, 64, 32))
    x = eff(image)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    expected_red = (128 / 255 - eff.mean[0]) / eff.std[0]
    assert torch.allclose(x[0], torch.full((64, 64), expected_red), atol=1e-4)
    assert eff.as_dict()["resize"] == 73
    with pytest.raises(XrayError, match="image-size"):
        preprocessing_for("resnet18", "none", 8)


def test_imagenet_offline_says_which_file_where(offline_hub: Path) -> None:
    with pytest.raises(XrayError) as info:
        load_backbone("densenet121", "imagenet")
    msg = str(info.value)
    assert "\n" not in msg
    assert "densenet121-a639ec97.pth" in msg and str(offline_hub) in msg
    assert "--weights none" in msg and "--weights PATH" in msg
    assert not backbones.imagenet_available("densenet121")


def test_imagenet_loads_from_the_hub_cache(offline_hub: Path) -> None:
    # A checkpoint put in the cache by hand is used without any download.
    torch.manual_seed(3)
    reference = get_spec("resnet18").builder(weights=None)
    offline_hub.mkdir(parents=True)
    target = offline_hub / get_spec("resnet18").weights_file
    torch.save(reference.state_dict(), target)
    assert backbones.imagenet_available("resnet18")
    loaded = load_backbone("resnet18", "imagenet")
    assert loaded.weights_id == "IMAGENET1K_V1"
    assert loaded.weights_sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    torch.testing.assert_close(loaded.trunk.state_dict()["conv1.weight"], reference.conv1.weight)


def test_imagenet_corrupt_cache_file_is_reported(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    (offline_hub / get_spec("resnet18").weights_file).write_bytes(b"not a checkpoint")
    with pytest.raises(XrayError, match=r"corrupt.*delete the file"):
        load_backbone("resnet18", "imagenet")


def _trunk_out(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return trunk.eval()(x)


def test_weights_path_roundtrip_wrapped_and_prefixed(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = get_spec("resnet18").builder(weights=None)
    model.fc = torch.nn.Linear(512, 2)  # a chest-X-ray checkpoint: 2-class classifier is dropped
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "cxr resnet18.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = load_backbone("resnet18", str(path))
    assert loaded.weights_id == "file:cxr resnet18.pt"
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    model.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_trunk_out(loaded.trunk, x), _trunk_out(model, x))
    assert weights_identity("resnet18", str(path)) == (loaded.weights_id, loaded.weights_sha256)
    assert weights_tag(loaded.weights_id, loaded.weights_sha256).startswith("cxr_resnet18-")


def test_weights_path_accepts_a_trunk_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trunk = load_backbone("convnext_tiny", "none").trunk  # no classifier.2 keys
    path = tmp_path / "trunk.pt"
    torch.save({"model": trunk.state_dict()}, path)
    again = load_backbone("convnext_tiny", str(path)).trunk
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_trunk_out(again, x), _trunk_out(trunk, x))


def test_weights_path_mismatched_keys_are_listed(tmp_path: Path) -> None:
    state = get_spec("resnet18").builder(weights=None).state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer2.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(XrayError) as info:
        load_backbone("resnet18", str(path))
    msg = str(info.value)
    assert "\n" not in msg
    assert "1 of another shape (layer2.0.conv1.weight (1, 1, 3, 3)" in msg
    assert "1 missing (layer1.0.conv1.weight)" in msg and "1 unexpected (extra.weight)" in msg
    # A whole other architecture: everything missing and unexpected, reported compactly.
    torch.save(get_spec("densenet121").builder(weights=None).state_dict(), path)
    with pytest.raises(XrayError, match=r"does not fit resnet18: keys .* missing .*\.\.\."):
        load_backbone("resnet18", str(path))


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned-by-checkpoint",))


def test_weights_path_refuses_pickled_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": _Exploit()}, path)
    with pytest.raises(XrayError, match=r"refusing to load .*not a plain state dict"):
        load_backbone("resnet18", str(path))
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_weights_path_bad_files(tmp_path: Path) -> None:
    with pytest.raises(XrayError, match=r"not found.*--weights none"):
        load_backbone("resnet18", str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(XrayError, match=r"cannot read weights file|refusing to load"):
        load_backbone("resnet18", str(garbage))
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(XrayError, match="does not hold a state dict"):
        load_backbone("resnet18", str(not_a_dict))


def test_weights_tags() -> None:
    assert weights_tag("IMAGENET1K_V2", None) == "imagenet"
    assert weights_tag("none", None) == "none"
    assert weights_tag("file:x.pth", "abcdef0123456789") == "x-abcdef01"
    assert weights_identity("resnet50", "imagenet") == ("IMAGENET1K_V2", None)
