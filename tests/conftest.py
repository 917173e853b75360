"""Shared fixtures: a tiny generated Kermany-layout dataset, the real sample, CLI runner."""

from __future__ import annotations

import os
import random
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

# Two cores shared by everything: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests draw the same examples every run (derandomize: a function of the test, not of
# the clock), so a failure repeats and the suite gives one result. HYPOTHESIS_PROFILE=explore
# searches new examples on demand.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

REALSAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "realsample"


@pytest.fixture(autouse=True)
def _seeded_global_rngs() -> None:
    """Every test starts from the same global RNG states (Python, NumPy, and torch once some
    test imported it), so an unseeded torch.randn gives the same input whatever ran before."""
    random.seed(0)
    np.random.seed(0)  # the legacy global generator, for code that still draws from it
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


@pytest.fixture(scope="session")
def realsample() -> Path:
    """The 54 real Kaggle chest X-rays beside the project; skip when absent."""
    if not (REALSAMPLE / "train").is_dir():
        pytest.skip("../shared/realsample is not present")
    return REALSAMPLE


def write_tiny_dataset(root: Path, *, seed: int = 0, size: int = 40) -> Path:
    """Write a tiny learnable Kermany-layout dataset: PNEUMONIA images carry a bright blob.

    train: 8 NORMAL (4 patients) + 12 PNEUMONIA (6 patients); val: 1 + 1; test: 4 + 4.
    File names follow the Kermany conventions so patient parsing is exercised.
    """
    rng = np.random.default_rng(seed)
    plan = {
        "train": {"NORMAL": 4, "PNEUMONIA": 6},
        "val": {"NORMAL": 1, "PNEUMONIA": 1},
        "test": {"NORMAL": 2, "PNEUMONIA": 2},
    }
    person = 1000 if seed == 0 else 1000 + 100 * seed
    for split, classes in plan.items():
        for cls, patients in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            per_patient = 1 if split == "val" else 2
            for _ in range(patients):
                person += 1
                for j in range(per_patient):
                    img = rng.normal(90, 20, (size, size))
                    if cls == "PNEUMONIA":
                        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                        yy, xx = np.mgrid[:size, :size]
                        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
                        img += 90 * np.exp(-dist2 / (2 * (size / 8) ** 2))
                        name = f"person{person}_bacteria_{j}.jpeg"
                    else:
                        name = f"IM-{person:04d}-{j + 1:04d}.jpeg"
                    pixels = np.clip(img, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels, mode="L").save(folder / name, quality=95)
    return root


def write_tiny_kermany3(root: Path, *, seed: int = 0, size: int = 40) -> Path:
    """A tiny learnable three-class Kermany-layout dataset (for `--labels kermany3`).

    PNEUMONIA file names alternate between `_bacteria_` (one bright blob) and `_virus_` (a
    bright lower half), so the file names give NORMAL / BACTERIAL / VIRAL. train: 5 NORMAL
    patients + 10 PNEUMONIA patients (5 of each kind), 2 images each; val: 2 + 2 (1 image each);
    test: 3 + 6 (2 images each).
    """
    rng = np.random.default_rng(seed)
    plan = {
        "train": {"NORMAL": 5, "PNEUMONIA": 10},
        "val": {"NORMAL": 2, "PNEUMONIA": 2},
        "test": {"NORMAL": 3, "PNEUMONIA": 6},
    }
    person = 2000
    yy, xx = np.mgrid[:size, :size]
    for split, classes in plan.items():
        for cls, patients in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for p in range(patients):
                person += 1
                for j in range(1 if split == "val" else 2):
                    img = rng.normal(90, 20, (size, size))
                    if cls == "NORMAL":
                        name = f"IM-{person:04d}-{j + 1:04d}.jpeg"
                    elif p % 2 == 0:
                        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                        img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size**2 / 32))
                        name = f"person{person}_bacteria_{j}.jpeg"
                    else:
                        img[size // 2 :] += 70
                        name = f"person{person}_virus_{j}.jpeg"
                    pixels = np.clip(img, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels, mode="L").save(folder / name, quality=95)
    return root


def write_tiny_multilabel(root: Path, *, seed: int = 0, size: int = 40) -> Path:
    """A tiny learnable multi-label CSV dataset: `root/labels.csv` + `root/img/*.png`.

    Findings `Blob` (a bright blob) and `Band` (a bright lower half) occur alone, together or
    not at all; every 7th Band label is uncertain (-1). 24 train patients, 6 val, 8 test, two
    images each. Returns the CSV's path.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lines = ["path,split,patient,Blob,Band"]
    n = 0
    for split, patients in (("train", 24), ("val", 6), ("test", 8)):
        for p in range(patients):
            blob, band = p % 2, (p // 2) % 2
            for j in range(2):
                img = rng.normal(90, 20, (size, size))
                if blob:
                    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                    img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size**2 / 32))
                if band:
                    img[size // 2 :] += 60
                name = f"img/{split}-{p}-{j}.png"
                (root / "img").mkdir(parents=True, exist_ok=True)
                pixels = np.clip(img, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / name)
                n += 1
                band_cell = "-1" if n % 7 == 0 else str(band)
                lines.append(f"{name},{split},{split}-pt{p},{blob},{band_cell}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def write_tiny_nih(root: Path, *, seed: int = 0, size: int = 40) -> Path:
    """A tiny learnable dataset in the NIH ChestX-ray14 layout: `Data_Entry_2017_v2020.csv`,
    `train_val_list.txt`, `test_list.txt` and `images_00{1,2}/images/*.png`.

    `Effusion` is a bright blob, `Cardiomegaly` a bright lower half; they occur alone, together
    (`Cardiomegaly|Effusion`) or not at all (`No Finding`). 24 train/val patients and 8 test
    patients, two images each. Returns root.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender"]
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for split, first, patients in (("train", 1, 24), ("test", 101, 8)):
        for p in range(patients):
            patient = first + p
            effusion, cardio = p % 2, (p // 2) % 2
            labels = [n for n, on in (("Cardiomegaly", cardio), ("Effusion", effusion)) if on]
            for j in range(2):
                img = rng.normal(90, 20, (size, size))
                if effusion:
                    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                    img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size**2 / 32))
                if cardio:
                    img[size // 2 :] += 60
                name = f"{patient:08d}_{j:03d}.png"
                folder = root / f"images_00{1 + j}" / "images"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(folder / name)
                entries.append(f"{name},{'|'.join(labels) or 'No Finding'},{j},{patient},40,F")
                lists[split].append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(entries) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(lists["train"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(lists["test"]) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A fresh tiny dataset in tmp_path (safe to modify)."""
    return write_tiny_dataset(tmp_path / "chest_xray")


@pytest.fixture(scope="session")
def tiny_data_ro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide tiny dataset; do not modify it."""
    return write_tiny_dataset(tmp_path_factory.mktemp("ro") / "chest_xray")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and no network: every download fails as it does offline."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def extract_tiny_store(root: Path, *, dtype: str = "float16") -> dict[str, Path]:
    """A tiny dataset under root and its resnet18 (random init, 32 px) feature store."""
    import torch

    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    data = write_tiny_dataset(root / "chest_xray")
    torch.manual_seed(0)
    result = extract_features(
        load_manifest(data), model="resnet18", weights="none", cache_dir=root / "cache",
        image_size=32, workers=0, dtype=dtype,
    )  # fmt: skip
    return {"root": root, "data": data, "cache": root / "cache", "store": result.path}
