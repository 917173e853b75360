"""`xray compare` end to end on real runs: degenerate test splits, narrow terminals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from featurestore.cli.main import app
from PIL import Image
from typer.testing import CliRunner

runner = CliRunner()
torch.set_num_threads(1)


def write_split_dataset(root: Path, plan: dict[str, dict[str, int]], size: int = 32) -> Path:
    """A Kermany-layout dataset with `plan[split][class]` patients of one image each."""
    rng = np.random.default_rng(0)
    person = 0
    for split, classes in plan.items():
        for cls, n in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                person += 1
                img = rng.normal(90, 20, (size, size)) + (60 if cls == "PNEUMONIA" else 0)
                name = (
                    f"person{person}_bacteria_0.jpeg"
                    if cls == "PNEUMONIA"
                    else (f"IM-{person:04d}-0001.jpeg")
                )
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(folder / name)
    return root


@pytest.fixture(scope="module")
def pneumonia_only_test(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Issue 13.1's input: train 12+12, val 4+4, test 0 NORMAL + 6 PNEUMONIA; two heads."""
    root = tmp_path_factory.mktemp("onesided")
    plan = {
        "train": {"NORMAL": 12, "PNEUMONIA": 12},
        "val": {"NORMAL": 4, "PNEUMONIA": 4},
        "test": {"NORMAL": 0, "PNEUMONIA": 6},
    }
    data = write_split_dataset(root / "data", plan)
    (data / "test" / "NORMAL").rmdir()
    common = ["--data", str(data), "--cache", str(root / "cache")]
    extract = ["extract", "--model", "resnet18", "--weights", "none", "--image-size", "32"]
    result = runner.invoke(app, [*extract, *common, "--workers", "0"])
    assert result.exit_code == 0, result.output
    for head in ("linear", "logreg"):
        fit = ["fit-head", *common, "--runs", str(root / "runs"), "--head", head, "--json"]
        result = runner.invoke(app, [*fit, "--epochs", "3"])
        assert result.exit_code == 0, result.output
    return {"root": root, "runs": root / "runs"}


def test_issue_13_1_fit_head_leaves_undefined_metrics_undefined(pneumonia_only_test) -> None:  # type: ignore[no-untyped-def]
    run = next(p for p in pneumonia_only_test["runs"].iterdir() if not p.name.startswith("."))
    test = json.loads((run / "metrics.json").read_text())["test"]
    for at in ("at_0.5", "at_threshold"):
        m = test[at]
        for key in ("specificity", "recall_NORMAL", "f1_macro", "roc_auc", "pr_auc"):
            assert m[key] is None, (at, key)
        assert m["sensitivity"] is not None and m["accuracy"] is not None


def test_issue_13_2_compare_runs_on_a_one_class_test_split(  # type: ignore[no-untyped-def]
    pneumonia_only_test, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    args = ["compare", "--runs", str(pneumonia_only_test["runs"]), "--bootstrap", "200"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "PNEUMONIA images only" in out and "undefined" in out
    assert "Best on accuracy" in out  # ROC-AUC is undefined: the verdict falls back
    assert max(len(line) for line in out.splitlines()) <= 80
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    row = doc["runs"][0]["metrics"]["at_threshold"]
    assert row["specificity"]["estimate"] is None and row["roc_auc"]["estimate"] is None
    assert row["sensitivity"]["estimate"] is not None
    assert doc["pairs"][0]["tests"]["delong"]["p_value"] is None
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "n/a" in report and "RANDOM WEIGHTS: All runs use" in report
