"""The demo study end to end on tiny data: runs, report, random-init banner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.errors import XrayError
from featurestore.study import StudyConfig, resolve_study_weights


def test_study_config_validation() -> None:
    with pytest.raises(XrayError, match="seeds"):
        StudyConfig(seeds=0)
    with pytest.raises(XrayError, match="image-size"):
        StudyConfig(image_size=8)
    assert StudyConfig().full_size().image_size == 224


def test_auto_weights_fall_back_to_random_init_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    assert resolve_study_weights(("resnet50",), "auto") == "none"
    assert resolve_study_weights(("resnet50",), "imagenet") == "imagenet"


@pytest.mark.slow
def test_demo_cli_runs_the_whole_study(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--data", str(tiny_data), "--model", "resnet18", "--image-size", "32"]
    args += ["--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    modes = sorted(r["mode"] for r in doc["runs"])
    # frozen head, its sweep, two label-efficiency subsets, fine-tune
    assert modes == ["finetune", "frozen", "frozen", "frozen", "frozen"]
    assert len(doc["pairs"]) == 10
    assert any("randomly initialised" in w for w in doc["warnings"])
    assert doc["commands"][-1].startswith("xray compare ")
    report = Path(doc["report"])
    assert report.is_file() and (report.parent / "roc.png").is_file()
    assert (report.parent / "label_efficiency.png").is_file()
    assert "## Label efficiency" in report.read_text()
    # The study's runs live in their own folder under runs/, the store under cache/.
    runs = [p for p in (tmp_path / "runs").glob("study-*/*") if not p.name.startswith(".")]
    assert len(runs) == 5
    assert sum((p / "sweep.csv").is_file() for p in runs) == 1
    # (named -bf16 where `auto` precision is bfloat16: a CPU with native bf16)
    assert list((tmp_path / "cache").rglob("resnet18-none-32px*.h5"))


@pytest.mark.slow
def test_demo_commands_repeat_the_demo_step_by_step(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.6: the step-by-step commands the demo prints give the demo's runs, byte for
    byte (metrics.json, predictions.csv), and bare `xray compare` finds the demo's study."""
    import shlex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--data", str(tiny_data), "--model", "resnet18", "--image-size", "32"]
    args += ["--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (study,) = (tmp_path / "runs").glob("study-*")
    bare = CliRunner().invoke(app, ["compare", "--json", "--bootstrap", "200"])
    assert bare.exit_code == 0, bare.output
    assert sorted(r["name"] for r in json.loads(bare.stdout)["runs"]) == sorted(
        p.name for p in study.iterdir() if not p.name.startswith(".")
    )
    again = tmp_path / "again"
    for command in doc["commands"]:
        argv = shlex.split(command.replace(str(study.relative_to(tmp_path)), str(again)))
        assert argv[0] == "xray"
        step = CliRunner().invoke(app, [*argv[1:], *(["--json"] if argv[1] != "extract" else [])])
        assert step.exit_code == 0, (command, step.output)

    def outputs(folder: Path) -> dict[str, tuple[str, str]]:
        return {
            p.name.split("-", 2)[2]: (
                (p / "metrics.json").read_text(),
                (p / "predictions.csv").read_text(),
            )
            for p in folder.iterdir()
            if not p.name.startswith(".")
        }

    assert outputs(again) == outputs(study)


@pytest.mark.slow
def test_demo_multiclass_runs_the_three_class_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_tiny_kermany3

    data = write_tiny_kermany3(tmp_path / "chest_xray")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--task", "multiclass", "--data", str(data), "--model", "resnet18"]
    args += ["--image-size", "32", "--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "multiclass" and doc["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert sorted(r["mode"] for r in doc["runs"]) == ["finetune", "frozen"]
    assert len(doc["pairs"]) == 1
    assert Path(doc["report"]).is_file()
    assert list((tmp_path / "cache").glob("chest_xray-kermany3-*/*.h5"))


@pytest.mark.slow
def test_demo_multilabel_runs_on_a_findings_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_tiny_multilabel

    labels_csv = write_tiny_multilabel(tmp_path / "ml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--task", "multilabel", "--data", str(labels_csv), "--model", "resnet18"]
    args += ["--image-size", "32", "--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "multilabel" and doc["findings"] == ["Blob", "Band"]
    assert sorted(r["mode"] for r in doc["runs"]) == ["finetune", "frozen"]
    assert set(doc["pairs"][0]["holm_p"]) == {"Blob", "Band"}
    assert Path(doc["report"]).is_file()
