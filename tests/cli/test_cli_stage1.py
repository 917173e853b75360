"""`xray models` and `xray extract` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from featurestore.cli.main import app
from typer.testing import CliRunner

torch.set_num_threads(1)
runner = CliRunner()

EXTRACT = ["extract", "--model", "resnet18", "--weights", "none", "--image-size", "32"]


def test_models_json_lists_the_registry(offline_hub: Path) -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {r["name"]: r for r in doc["rows"]}
    torchvision = {n for n, r in rows.items() if r["provider"] == "torchvision"}
    assert torchvision == {
        "resnet18",
        "resnet50",
        "densenet121",
        "efficientnet_b0",
        "convnext_tiny",
    }
    assert rows["resnet50"]["features"] == 2048 and rows["resnet50"]["weights"] == "IMAGENET1K_V2"
    assert rows["densenet121"]["parameters"] == 6953856  # trunk only, counted without download
    assert all(rows[n]["offline"] is False for n in torchvision)
    assert doc["hub"] == str(offline_hub)
    # Providers: every alias with what it stands for, and each scheme with its install state.
    assert rows["rad-dino"]["target"] == "hf:microsoft/rad-dino"
    assert rows["medsiglip"]["poolings"] == ["map", "mean"]
    assert rows["txv-all"]["features"] == 1024 and rows["txv-all"]["licence"]
    for scheme, provider in (
        ("timm:<model>", "timm"),
        ("hf:<repo id>", "hf"),
        ("txv:<weights>", "txv"),
    ):
        assert rows[scheme]["provider"] == provider and rows[scheme]["installed"] is True


def test_models_table_shows_offline_weights(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    (offline_hub / "resnet18-f37072fd.pth").write_bytes(b"x")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if "resnet18" in ln)
    assert "11.2M" in line and "yes" in line


def test_extract_builds_then_reuses(tiny_data_ro: Path, tmp_path: Path) -> None:
    args = [*EXTRACT, "--data", str(tiny_data_ro), "--cache", str(tmp_path), "--workers", "0",
            "--precision", "fp32"]  # fmt: skip
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    row = doc["rows"][0]
    assert row["status"] == "built" and row["backbone"] == "resnet18" and row["D"] == 512
    from featurestore.store import dataset_folder

    folder = dataset_folder("chest_xray", tiny_data_ro)
    assert row["store"] == str(tmp_path / folder / "resnet18-none-32px.h5")
    assert row["precision"] == "fp32"
    assert row["train rows"] + row["val rows"] + row["test rows"] == 30
    assert doc["reason"] == "no store yet" and doc["skipped_keys"] == []
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reusing up-to-date store" in second.stderr
    table = second.stdout
    assert "reused" in table and "train rows" in table and "512" in table
    # --rehash hashes every image again and still finds the store up to date.
    third = runner.invoke(app, [*args, "--rehash"])
    assert third.exit_code == 0 and "reusing up-to-date store" in third.stderr
    # Another precision is another store, built beside it.
    half = runner.invoke(app, [*args[:-2], "--precision", "bf16", "--json"])
    assert half.exit_code == 0, half.output
    assert json.loads(half.stdout)["rows"][0]["store"].endswith("resnet18-none-32px-bf16.h5")


def test_extract_offline_imagenet_is_one_line_exit_2(
    offline_hub: Path, tiny_data_ro: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "extract",
            "--model",
            "densenet121",
            "--image-size",
            "32",
            "--workers",
            "0",
            "--data",
            str(tiny_data_ro),
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "densenet121-a639ec97.pth" in errors[0] and "--weights none" in errors[0]
    # Rich may wrap the path on narrow terminals: compare without whitespace.
    assert str(offline_hub) in "".join(result.stderr.split())
    # Nothing is left behind: no half-started extraction (it held only its provenance.json).
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if ".partial" in str(p)], leftovers


def test_extract_user_errors(tiny_data_ro: Path, tmp_path: Path) -> None:
    common = ["--data", str(tiny_data_ro), "--cache", str(tmp_path), "--workers", "0"]
    unknown = runner.invoke(app, ["extract", "--model", "vgg16", *common])
    assert unknown.exit_code == 2 and "resnet18" in unknown.stderr
    dtype = runner.invoke(app, [*EXTRACT, *common, "--dtype", "int8"])
    assert dtype.exit_code == 2 and "--dtype" in dtype.stderr
    missing = runner.invoke(app, [*EXTRACT, "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_extract_help_has_an_example() -> None:
    result = runner.invoke(app, ["extract", "--help"])
    assert result.exit_code == 0 and "xray extract --model" in result.stdout


def test_unknown_model_fails_before_generating_default_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XRAY_DATA", raising=False)
    result = runner.invoke(app, ["extract", "--model", "vgg16"])
    assert result.exit_code == 2 and "unknown backbone 'vgg16'" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing written for a command that cannot run
