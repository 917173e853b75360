"""`xray evaluate` through the Typer app: the table, the folder, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import extract_tiny_store, write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.runs import is_evaluation
from featurestore.train import TrainConfig, fit_heads

runner = CliRunner()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_evaluate")
    stores = extract_tiny_store(root)
    (run,) = fit_heads(store=stores["store"], runs_dir=root / "runs", config=TrainConfig(epochs=3))
    other = write_tiny_dataset(root / "site_b" / "chest_xray", seed=1)
    return {"root": root, "run": run.path, "other": other}


def _base(env: dict[str, Path]) -> list[str]:
    out = env["root"] / "evaluations"
    return ["evaluate", "--run", str(env["run"]), "--data", str(env["other"]), "--out", str(out),
            "--stores", str(out / "stores"), "--bootstrap", "100", "--device", "cpu"]  # fmt: skip


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout
    assert "xray evaluate" in result.stdout


def test_evaluate_prints_the_table_and_writes_the_folder(env: dict[str, Path]) -> None:
    result = runner.invoke(app, _base(env))
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "evaluation folder:" in result.stdout
    assert "calibration: ECE" in result.stdout
    doc = json.loads(runner.invoke(app, [*_base(env), "--json"]).stdout)
    assert is_evaluation(Path(doc["evaluation"]))
    assert doc["threshold"]["chosen_on"] == "val"
    assert {r["metric"] for r in doc["rows"]} >= {"accuracy", "roc_auc", "brier"}


def test_local_recalibration_is_stated(env: dict[str, Path]) -> None:
    result = runner.invoke(app, [*_base(env), "--recalibrate", "2"])
    assert result.exit_code == 0, result.output
    assert "local calibration: 2 patients" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recalibrate", "4"], "leave some patients to evaluate"),
        (["--threshold", "sensitivity:2"], "threshold policy"),
        (["--split", "holdout"], "unknown --split 'holdout'"),
        (["--recalibrate", "-1"], "--recalibrate must be"),
    ],
)
def test_bad_options_are_one_line(env: dict[str, Path], args: list[str], message: str) -> None:
    result = runner.invoke(app, [*_base(env), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output


def test_a_missing_run_or_dataset_is_one_line(env: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "nope"), "--data",
                                 str(env["other"])])  # fmt: skip
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = runner.invoke(app, ["evaluate", "--run", str(env["run"]), "--data",
                                 str(tmp_path / "nothing")])  # fmt: skip
    assert result.exit_code == 2 and "error:" in result.stderr
