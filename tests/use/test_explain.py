"""explain: Grad-CAM stages per family, heat mapped back onto the original image, localisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from featurestore.models import Preprocessing, list_specs, load_backbone
from featurestore.runs import load_run
from featurestore.train import TrainConfig
from featurestore.use import (
    cam_stages,
    cam_to_image,
    explain_run,
    grad_cam,
    load_predictor,
    pick_test_images,
)

torch.set_num_threads(1)
TUNE = TrainConfig(epochs=1, lr=1e-3, batch_size=8, patience=2, device="cpu", backbone_lr_mult=0.1)
NAMES = [s.name for s in list_specs()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, fine-tuned resnet18 run at 32 px)."""
    from featurestore.train import finetune

    root = tmp_path_factory.mktemp("explain")
    data = write_tiny_dataset(root / "chest_xray")
    run = finetune(
        data=data, model="resnet18", weights="none", image_size=32, runs_dir=root / "runs",
        config=TUNE,
    )  # fmt: skip
    return data, run.path


@pytest.mark.parametrize("name", NAMES)
def test_cam_stages_reproduce_the_trunk(name: str) -> None:
    torch.manual_seed(0)
    trunk = load_backbone(name, "none").trunk.eval()
    acts, pool = cam_stages(trunk, load_backbone(name, "none").spec.family)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = acts(x)
        assert a.ndim == 4 and a.shape[0] == 2
        torch.testing.assert_close(pool(a), trunk(x), atol=1e-5, rtol=1e-5)


PROVIDER_CAMS = [
    ("timm:resnet10t", 3, 64),
    ("txv-all", 1, 64),
    ("timm:vit_tiny_patch16_224", 3, 64),
]


@pytest.mark.parametrize(("name", "channels", "size"), PROVIDER_CAMS)
def test_provider_cam_splits_reproduce_the_trunk(name: str, channels: int, size: int) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    loaded = load_backbone(name, "none")
    trunk = loaded.trunk.eval()
    acts, pool = cam_stages(trunk, loaded.spec.family)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        a = acts(x)
        assert a.ndim == 4 and a.shape[0] == 2
        torch.testing.assert_close(pool(a), trunk(x), atol=1e-5, rtol=1e-5)
    if loaded.spec.family == "vit":
        assert a.shape[-2:] == (4, 4)  # the 16-px patch grid of a 64-px image
    head = nn.Linear(loaded.spec.feature_dim, 2)
    cams, _ = grad_cam(acts, lambda t: head(pool(t)), x, target=1)
    assert cams.shape == (2, *a.shape[-2:]) and float(cams.max()) > 0


def test_dinov2_token_grid_cam_and_a_refusal_for_siglip(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from featurestore.errors import XrayError
    from featurestore.models import ALIASES, Alias, providers

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}
    monkeypatch.setattr(providers, "_RESOLVED", {})
    monkeypatch.setitem(
        ALIASES, "tiny-dino", Alias("hf:t/dino", {"model_type": "dinov2", **small, "mlp_ratio": 2})
    )
    monkeypatch.setitem(
        ALIASES,
        "tiny-siglip",
        Alias(
            "hf:t/siglip", {"model_type": "siglip_vision_model", **small, "intermediate_size": 64}
        ),
    )
    torch.manual_seed(0)
    trunk = load_backbone("tiny-dino", "none").trunk.eval()
    acts, pool = cam_stages(trunk, "vit")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = acts(x)
        torch.testing.assert_close(pool(a), trunk(x), atol=1e-5, rtol=1e-5)
    assert a.shape == (2, 32, 4, 4)
    siglip = load_backbone("tiny-siglip", "none").trunk.eval()
    acts, _ = cam_stages(siglip, "vit")
    with pytest.raises(XrayError, match="no token-grid CAM for siglip_vision_model"):
        acts(x)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
def test_grad_cam_equals_the_closed_form_for_a_linear_head(name: str) -> None:
    # With global average pooling and a linear head, d logit_1 / d A_k = w_1k / (h w), so
    # Grad-CAM is ReLU(sum_k w_1k A_k) / (h w). DenseNet's in-place ReLU would break this if
    # the gradient were taken on the tensor it overwrites.
    torch.manual_seed(0)
    loaded = load_backbone(name, "none")
    trunk = loaded.trunk.eval()
    head = nn.Linear(loaded.spec.feature_dim, 2)
    acts, pool = cam_stages(trunk, loaded.spec.family)
    x = torch.randn(2, 3, 64, 64)
    cams, logits = grad_cam(acts, lambda a: head(pool(a)), x, target=1)
    with torch.no_grad():
        a = acts(x)  # (N, C, h, w)
        expected = torch.relu(torch.einsum("c,nchw->nhw", head.weight[1], a)) / a[0, 0].numel()
        torch.testing.assert_close(logits, head(trunk(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cams, expected, atol=1e-6, rtol=1e-4)
    assert float(cams.max()) > 0


def test_cam_to_image_undoes_resize_and_center_crop() -> None:
    pre = Preprocessing((0.5,) * 3, (0.5,) * 3, resize=36, crop=32, interpolation="bilinear")
    # A wide image: resized to 108 x 36, cropped to columns 38..70 and rows 2..34.
    heat = cam_to_image(np.ones((4, 4)), pre, decoded=(300, 100), original=(600, 200))
    assert heat.shape == (200, 600)
    assert heat[100, 300] == pytest.approx(1.0)
    assert heat[100, :150].max() == 0 and heat[100, 460:].max() == 0  # cropped-away margins
    cols = np.flatnonzero(heat[100] > 0.5)
    assert cols.min() == pytest.approx(38 / 108 * 600, abs=4)
    assert cols.max() == pytest.approx(70 / 108 * 600, abs=4)
    # A hot left edge of the crop lands at the crop's left edge in the original.
    cam = np.zeros((4, 4))
    cam[:, 0] = 1.0
    peak_col = int(np.argmax(cam_to_image(cam, pre, (300, 100), (300, 100))[50]))
    assert 38 / 108 * 300 <= peak_col < (38 + 8) / 108 * 300
    assert cam_to_image(np.zeros((2, 2)), pre, (300, 100), (300, 100)).max() == 0


def test_explain_writes_overlays_of_each_image_size(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run = tiny_run
    rng = np.random.default_rng(0)
    wide, tall = tmp_path / "wide.png", tmp_path / "in" / "tall.jpeg"
    tall.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (45, 70), dtype=np.uint8)).save(wide)
    Image.fromarray(rng.integers(0, 255, (90, 33, 3), dtype=np.uint8)).save(tall)
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8 truncated")
    paths = [wide, bad, tall]
    result = explain_run(run, paths, tmp_path / "out", device="cpu", batch_size=2)
    assert [r.path for r in result.rows] == [str(p) for p in paths]
    assert result.rows[1].heatmap is None and "bad.jpeg" in (result.rows[1].error or "")
    for row, size in ((result.rows[0], (70, 45)), (result.rows[2], (33, 90))):
        assert row.heatmap is not None and Image.open(row.heatmap).size == size
        if row.peak is not None:  # None only when nothing raises the positive logit
            assert 0 <= row.peak[0] < size[0] and 0 <= row.peak[1] < size[1]
    assert result.contact_sheet is not None and result.contact_sheet.is_file()
    # Grad-CAM runs the same model as predict: same probabilities.
    rows = load_predictor(run, device="cpu").predict([wide, tall])
    assert result.rows[0].probability == pytest.approx(rows[0].probability, abs=1e-6)
    assert result.rows[2].probability == pytest.approx(rows[1].probability, abs=1e-6)


@pytest.mark.slow
def test_explain_real_radiographs_at_full_size(
    tiny_run: tuple[Path, Path], realsample: Path, tmp_path: Path
) -> None:
    # Large JPEGs are decoded at 1/8 scale for the model; the heatmap still has the file's size.
    _, run = tiny_run
    paths = sorted((realsample / "test" / "NORMAL").iterdir())[:2]
    result = explain_run(run, paths, tmp_path, device="cpu")
    for path, row in zip(paths, result.rows, strict=True):
        assert row.heatmap is not None
        assert Image.open(row.heatmap).size == Image.open(path).size


def test_frozen_run_is_explained_as_backbone_plus_head(tmp_path: Path) -> None:
    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    data = write_tiny_dataset(tmp_path / "chest_xray")
    extract_features(
        load_manifest(data), model="resnet18", weights="none", cache_dir=tmp_path / "cache",
        image_size=32, workers=0,
    )  # fmt: skip
    head = TrainConfig(epochs=2, lr=0.05, batch_size=16, patience=2, device="cpu")
    (summary,) = fit_heads(data=data, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                           config=head)  # fmt: skip
    test = load_run(summary.path).split_predictions("test")
    paths = [data / k for k in test["key"][:3]]
    result = explain_run(summary.path, paths, tmp_path / "out", device="cpu")
    got = [r.probability for r in result.rows]
    np.testing.assert_allclose(got, test["probability"][:3], atol=1e-5)
    assert all(Image.open(r.heatmap or "").size == (40, 40) for r in result.rows)


def test_cli_explain(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny_run
    runner = CliRunner()
    folder = data / "test" / "PNEUMONIA"
    result = runner.invoke(
        app, ["explain", "--run", str(run), str(folder), "--out", str(tmp_path), "--json",
              "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["rows"]) == 4 and Path(doc["contact_sheet"]).is_file()
    assert all(Path(r["heatmap"]).is_file() for r in doc["rows"])
    # Issue 14.3: a random-weights run says so on stderr and in --json.
    assert doc["warnings"] and doc["warnings"][0].startswith("RANDOM WEIGHTS")
    assert "warning: RANDOM WEIGHTS" in result.stderr
    result = runner.invoke(app, ["explain", "--run", str(run), str(tmp_path / "nothing.png"),
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 1 and "could not be read" in result.output
    result = runner.invoke(app, ["explain", "--run", str(tmp_path), str(folder), "--out", "x"])
    assert result.exit_code == 2


def test_pick_test_images_mixes_correct_and_wrong(tiny_run: tuple[Path, Path]) -> None:
    _, run = tiny_run
    record = load_run(run)
    test = record.split_predictions("test")
    picked = pick_test_images(record, 2)
    for label in (0, 1):
        mine = [p for p in picked if p[1] == label]
        assert len(mine) == 2
        right = int(((test["label"] == label) & (test["prediction"] == label)).sum())
        wrong = int(((test["label"] == label) & (test["prediction"] != label)).sum())
        if right and wrong:
            assert {p[2] == label for p in mine} == {True, False}


class TinyCNN(nn.Module):
    """Three conv blocks to a (N, 32, 16, 16) map, global average pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32, 2)

    def classify(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


@pytest.mark.slow
def test_heat_lands_on_the_opacity_more_often_than_chance() -> None:
    # A small CNN trained on phantom radiographs whose pneumonia is a clear lobar opacity; its
    # Grad-CAM peak (through the same grad_cam and cam_to_image) must fall inside the opacity
    # mask for most sick test images, where a random pixel would hit it about 5% of the time.
    from sklearn.metrics import roc_auc_score

    from featurestore.data import render_radiograph

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    size = 64

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        images, labels, masks = [], [], []
        for i in range(n):
            img, mask = render_radiograph(
                rng, size, size, pneumonia=i % 2 == 1, opacity_kind="lobar", opacity_strength=0.6
            )
            images.append(img)
            labels.append(i % 2)
            masks.append(mask)
        x = torch.from_numpy(np.stack(images)).float().div(255).sub(0.5).unsqueeze(1)
        return x, torch.tensor(labels), np.stack(masks)  # (N, 1, S, S), (N,), (N, S, S)

    x_train, y_train, _ = draw(240)
    model = TinyCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(12):
        for idx in torch.randperm(len(y_train)).split(32):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    x_test, y_test, masks = draw(80)
    cams, logits = grad_cam(model.features, model.classify, x_test, target=1)
    assert (
        roc_auc_score(y_test.numpy(), logits.softmax(1)[:, 1].numpy()) > 0.65
    )  # it learned something
    identity = Preprocessing(
        (0.5,) * 3, (0.5,) * 3, resize=size, crop=size, interpolation="bilinear"
    )
    sick = (y_test == 1).numpy()
    hits = []
    for cam, mask in zip(cams.numpy()[sick], masks[sick], strict=True):
        heat = cam_to_image(cam, identity, (size, size), (size, size))
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits.append(bool(mask[y, x]))
    chance = float(masks[sick].mean())  # a random pixel's chance to lie in the opacity
    assert np.mean(hits) > 0.5 and np.mean(hits) > chance + 0.2, (np.mean(hits), chance)


def test_compare_explain_adds_what_the_model_looks_at(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    import re
    import shutil

    _, run = tiny_run
    moved = tmp_path / "runs" / "moved-data"
    shutil.copytree(run, moved)
    doc = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**doc, "dataset_root": str(tmp_path / "gone")}))
    runner = CliRunner()
    args = ["compare", str(run), str(moved), "--bootstrap", "100"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    assert result.exit_code == 0, result.output
    assert "What the model looks at" not in (tmp_path / "plain" / "report.md").read_text()

    result = runner.invoke(app, [*args, "--explain", "1", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## What the model looks at" in report
    assert f"Test images not found under `{tmp_path / 'gone'}`" in report
    links = re.findall(r"\]\((explain/[^)]+\.png)\)", report)
    assert len(links) == 1 + 2  # the contact sheet and one image per class
    assert all((tmp_path / "rep" / link).is_file() for link in links)
    assert runner.invoke(app, [*args, "--explain", "-1"]).exit_code == 2


def test_grad_cam_without_a_target_explains_each_predicted_class() -> None:
    torch.manual_seed(0)
    loaded = load_backbone("resnet18", "none")
    trunk = loaded.trunk.eval()
    head = nn.Linear(loaded.spec.feature_dim, 3)
    acts, pool = cam_stages(trunk, loaded.spec.family)
    x = torch.randn(4, 3, 64, 64)
    cams, logits = grad_cam(acts, lambda a: head(pool(a)), x, target=None)
    for i, k in enumerate(logits.argmax(1).tolist()):
        one, _ = grad_cam(acts, lambda a: head(pool(a)), x[i : i + 1], target=k)
        torch.testing.assert_close(cams[i : i + 1], one, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_multilabel_explain_maps_each_positive_finding(tmp_path: Path) -> None:
    """One overlay per image and finding at or above its threshold (else the most probable
    finding); `--class` picks one finding for every image."""
    from conftest import write_tiny_multilabel

    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads
    from featurestore.use import load_predictor

    labels_csv = write_tiny_multilabel(tmp_path / "ml")
    extract_features(
        load_manifest(labels_csv), model="resnet18", weights="none",
        cache_dir=tmp_path / "cache", image_size=32, workers=0,
    )  # fmt: skip
    config = TrainConfig(epochs=5, lr=0.01, batch_size=16, patience=5, device="cpu")
    (summary,) = fit_heads(cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs", config=config)
    images = sorted((labels_csv.parent / "img").glob("test-*.png"))[:6]
    predicted = load_predictor(summary.path, device="cpu").predict(images)
    result = CliRunner().invoke(
        app, ["explain", "--run", str(summary.path), "--out", str(tmp_path / "heat"),
              "--device", "cpu", "--json", *map(str, images)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    for image, pred in zip(images, predicted, strict=True):
        mine = [r["prediction"] for r in rows if r["path"] == str(image)]
        probs = pred.probabilities or {}
        expected = (
            pred.prediction.split("|")
            if pred.prediction != "No Finding"
            else [max(probs, key=lambda c: probs[c])]
        )
        assert mine == expected
        for r in rows:
            if r["path"] == str(image):
                assert Path(r["heatmap"]).name == f"{image.stem}-{r['prediction']}.png"
    result = CliRunner().invoke(
        app, ["explain", "--run", str(summary.path), "--out", str(tmp_path / "band"),
              "--device", "cpu", "--class", "Band", "--json", *map(str, images)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["prediction"] for r in json.loads(result.stdout)["rows"]] == ["Band"] * len(images)
