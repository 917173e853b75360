"""A feature store whose features carry nothing (every value 0) is said at fit-head, not
trained on in silence: its results can only be near chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.models import backbones

runner = CliRunner()


def test_fit_head_warns_about_a_store_of_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = backbones.load_backbone

    def zeroed(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded = real(*args, **kwargs)
        with torch.no_grad():
            for p in loaded.trunk.parameters():
                p.zero_()  # conv and norm weights 0: every pooled feature is 0
        return loaded

    monkeypatch.setattr(backbones, "load_backbone", zeroed)
    data = write_tiny_dataset(tmp_path / "chest_xray")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    extract = runner.invoke(app, ["extract", "--model", "resnet18", "--weights", "none",
                                  "--image-size", "32", "--workers", "0", "--device", "cpu",
                                  "--data", str(data), "--cache", str(cache)])  # fmt: skip
    assert extract.exit_code == 0, extract.output
    fit = runner.invoke(app, ["fit-head", "--cache", str(cache), "--runs", str(runs),
                              "--epochs", "2", "--data", str(data)])  # fmt: skip
    assert fit.exit_code == 0, fit.output
    said = " ".join(fit.output.split())
    assert "every train feature is 0, so the head can learn the class balance alone" in said


def test_fit_head_says_nothing_about_features_that_vary(tmp_path: Path) -> None:
    from conftest import extract_tiny_store

    env = extract_tiny_store(tmp_path)
    fit = runner.invoke(app, ["fit-head", "--store", str(env["store"]), "--runs",
                              str(tmp_path / "runs"), "--epochs", "2"])  # fmt: skip
    assert fit.exit_code == 0, fit.output
    assert "class balance alone" not in fit.output
