"""Every capability for every task, through the CLI as a user runs it (issue #24): binary
(Kermany layout), multi-class (Kermany-3 relabelled from file names) and multi-label (a
findings CSV with uncertain labels), each on tiny data with a random-init resnet18 at 32 px.

Each command must exit 0 (or, where a capability is undefined for the task, 2 with one line
saying why), print no traceback and never call a feature binary-only. Numbers of each
capability are checked against scikit-learn in its own tests; here the commands meet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_tiny_dataset, write_tiny_kermany3, write_tiny_multilabel
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.runs import load_run

pytest.importorskip("onnxruntime")
runner = CliRunner()
TASKS = ("binary", "multiclass", "multilabel")
EXTRACT = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0",
           "--device", "cpu", "--precision", "fp32"]  # fmt: skip
HEAD = ["--epochs", "3", "--lr", "0.05", "--device", "cpu"]


def _data(task: str, root: Path) -> tuple[Path, list[str]]:
    """The dataset of `task` and the options that read it so."""
    if task == "binary":
        return write_tiny_dataset(root / "chest_xray"), []
    if task == "multiclass":
        return write_tiny_kermany3(root / "chest_xray"), ["--labels", "kermany3"]
    return write_tiny_multilabel(root / "ml"), []


def _ok(args: list[str], *, code: int = 0) -> Any:
    result = runner.invoke(app, args)
    out = result.output
    assert result.exit_code == code, f"{' '.join(args)}\n{out}"
    assert "Traceback" not in out and "binary only" not in out.lower()
    if code:
        assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1
    return result


def _test_image(run: Path) -> str:
    """One test image of the run, as a path (predict, explain)."""
    record = load_run(run)
    test = record.split_predictions("test")
    root = Path(record.config.get("dataset_root") or record.config["store"]["dataset_root"])
    key = str(test["key"][0])
    path = root / key
    return str(path if path.exists() else root.parent / key)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_every_capability_runs_for_the_task(task: str, tmp_path: Path) -> None:
    data, read = _data(task, tmp_path)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    common = ["--cache", str(cache)]
    _ok(["extract", *EXTRACT, *read, "--data", str(data), *common])
    fit = ["fit-head", *common, *HEAD]
    # A head, a logistic regression, a sweep and a label-efficiency subset, each its own run.
    _ok([*fit, "--runs", str(runs / "head")])
    _ok([*fit, "--runs", str(runs / "logreg"), "--head", "logreg"])
    _ok([*fit, "--runs", str(runs / "sweep"), "--sweep", "lr=0.01,0.1"])
    _ok([*fit, "--runs", str(runs / "subset"), "--train-fraction", "0.5"])
    # An operating-point policy: one threshold (binary), one per finding (multi-label); a
    # multi-class decision is the argmax and a policy is refused in one line.
    policy = [*fit, "--runs", str(runs / "policy"), "--threshold", "f1"]
    _ok(policy, code=2 if task == "multiclass" else 0)
    paths = [p for sub in ("head", "logreg", "sweep", "subset") for p in (runs / sub).iterdir()
             if not p.name.startswith(".")]  # fmt: skip
    assert len(paths) == 4
    for path in paths:
        assert load_run(path).task.kind == task
    # compare: the verdict, the random-weights banner, intervals for every run and heatmaps.
    result = _ok(["compare", *map(str, paths), "--bootstrap", "100", "--out",
                  str(tmp_path / "report"), "--json", "--explain", "1"])  # fmt: skip
    doc = json.loads(result.stdout)
    assert doc["task"] == task and len(doc["pairs"]) == 6
    assert doc["verdict"] is not None and doc["verdict"]["lines"]
    assert any("RANDOM WEIGHTS" in w for w in doc["warnings"])
    for row in doc["runs"]:
        first = next(iter(row["metrics"].values()))
        assert all(iv["n_boot"] == 100 for iv in first.values())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## What the model looks at" in report and "no heatmaps" not in report
    per_run = {"binary": 2, "multiclass": 3, "multilabel": 4}[task]  # classes, or 2 x findings
    assert report.count("[png](explain/") == 4 * per_run
    # export to ONNX (checked against predictions.csv), then predict with the exported model.
    run = next((runs / "head").iterdir())
    onnx = tmp_path / "model.onnx"
    _ok(["export", "--run", str(run), "--format", "onnx", "--out", str(onnx)])
    image = _test_image(run)
    by_model = json.loads(_ok(["predict", "--model", str(onnx), image, "--json"]).stdout)
    by_run = json.loads(_ok(["predict", "--run", str(run), image, "--json"]).stdout)
    assert json.dumps(by_model, sort_keys=True).count("prob") == json.dumps(
        by_run, sort_keys=True
    ).count("prob")
    # evaluate on "another" dataset (the same files: the pipeline, not a result), recalibrated
    # on 2 local patients; the run's label scheme is applied by itself.
    _ok(["evaluate", "--run", str(run), "--data", str(data), "--bootstrap", "100",
         "--out", str(tmp_path / "evaluations")])  # fmt: skip
    _ok(["evaluate", "--run", str(run), "--data", str(data), "--bootstrap", "100",
         "--recalibrate", "2", "--out", str(tmp_path / "evaluations-recal")])  # fmt: skip
    # Grad-CAM of one image.
    _ok(["explain", "--run", str(run), image, "--out", str(tmp_path / "cam")])
