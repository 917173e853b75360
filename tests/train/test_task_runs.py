"""fit-head on a multi-label store end to end: label-efficiency subsets and a sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_multilabel

from featurestore.config import SweepConfig
from featurestore.runs import TRAIN_SUBSET_FILE, load_run
from featurestore.train import TrainConfig, fit_heads

HEAD = TrainConfig(epochs=2, batch_size=8, patience=2, device="cpu")


@pytest.fixture(scope="module")
def multilabel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    root = tmp_path_factory.mktemp("ml")
    data = write_tiny_multilabel(root / "ml")
    torch.manual_seed(0)
    result = extract_features(
        load_manifest(data), model="resnet18", weights="none", cache_dir=root / "cache",
        image_size=32, workers=0, dtype="float32",
    )  # fmt: skip
    return {"cache": root / "cache", "store": result.path}


def test_multilabel_subsets_train_and_record_what_was_drawn(multilabel_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from featurestore.store import open_store

    train = open_store(multilabel_env["store"]).split("train")
    summaries = fit_heads(cache_dir=multilabel_env["cache"], runs_dir=tmp_path, config=HEAD,
                          train_fractions=(0.25,), shots=(2,))  # fmt: skip
    tags = {}
    for s in summaries:
        cfg = load_run(s.path).config
        tags[cfg["subset_tag"]] = cfg
        assert set(cfg["subset_positives"]) == {"Blob", "Band"}
        assert all(v >= 1 for v in cfg["subset_positives"].values())
        assert cfg["subset_notes"] == [] and cfg["subset_rule"].startswith("multi-label")
        assert cfg["train_images"] < len(train.keys)
        # train_subset.csv holds each image's findings (empty where masked), not a class.
        with (s.path / TRAIN_SUBSET_FILE).open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == cfg["train_images"] and "label" not in rows[0]
        for name in ("Blob", "Band"):
            positives = sum(r[f"y_{name}"] == "1" for r in rows)
            assert positives == cfg["subset_positives"][name]
            assert {r[f"y_{name}"] for r in rows} <= {"0", "1", ""}
    assert set(tags) == {"f0.25", "k2"}
    # 24 train patients: a quarter is 6 whole patients of two images each.
    assert tags["f0.25"]["train_patients"] == 6 and tags["f0.25"]["train_images"] == 12


def test_a_multilabel_sweep_run_is_concluded_as_one_head(multilabel_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    grid = SweepConfig(lrs=(1e-3, 1e-2), weight_decays=(0.0,), heads=("linear",))
    (summary,) = fit_heads(cache_dir=multilabel_env["cache"], runs_dir=tmp_path, config=HEAD,
                           sweep=grid)  # fmt: skip
    run = load_run(summary.path)
    assert run.metrics["task"] == "multilabel" and run.config["sweep"]["members"] == 2
    assert set(run.metrics["threshold"]["per_label"]) == {"Blob", "Band"}
    assert (summary.path / "sweep.csv").is_file()


def test_finetune_draws_a_multilabel_subset_of_the_manifest(tmp_path: Path) -> None:
    from featurestore.data import load_manifest
    from featurestore.train import manifest_train_subset

    full = load_manifest(write_tiny_multilabel(tmp_path / "ml"))
    cut, info = manifest_train_subset(full, 0.25, None, seed=0)
    train = cut.split("train")
    assert info["train_images"] == len(train) == 12 and info["train_patients"] == 6
    assert info["subset_positives"] == {
        name: sum(r.targets[k] == 1.0 for r in train)  # type: ignore[index]
        for k, name in enumerate(full.class_names)
    }
    assert min(info["subset_positives"].values()) >= 1 and info["subset_notes"] == []
    # Validation and test are untouched.
    assert cut.split("val") == full.split("val") and cut.split("test") == full.split("test")
