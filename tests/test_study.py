"""The demo: the built-in study file, run end to end on tiny data (binary, multi-class,
multi-label); its report, its resumption and its step-by-step commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.errors import XrayError
from featurestore.study import (
    StudyConfig,
    builtin_text,
    demo_text,
    load_study,
    parse_study,
    resolve_study_weights,
)


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


def test_the_shipped_demo_file_is_the_demo_s_default_study() -> None:
    assert demo_text() == builtin_text("demo")
    result = CliRunner().invoke(app, ["study", "show", "demo"])
    assert result.exit_code == 0 and result.stdout == builtin_text("demo")
    demo = load_study("demo")
    assert [q.a for q in demo.questions] == ["resnet50-finetune", "resnet50-finetune"]
    assert [q.b for q in demo.questions] == ["resnet50-frozen", "densenet121-finetune"]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_every_demo_option_is_an_edit_of_the_study_file(task: str) -> None:
    config = StudyConfig(
        models=("resnet18",), seeds=3, image_size=32, head_epochs=3, finetune_epochs=6,
        task=task, labels="kermany3" if task == "multiclass" else "as-given", workers=0,
        precision="fp32",
    )  # fmt: skip
    study = parse_study(demo_text(config, data=Path("d")), source="demo")
    assert study.data == Path("d") and study.seeds == (0, 1, 2)
    kinds = {a.name: a.kind for a in study.arms}
    extra = {"resnet18-sweep": "sweep", "resnet18-frozen-fewer-labels": "curve"}
    assert kinds == {"resnet18-frozen": "primary", "resnet18-finetune": "primary", **extra}
    frozen, finetuned = study.arm("resnet18-frozen"), study.arm("resnet18-finetune")
    assert frozen.extract is not None and frozen.extract.image_size == 32
    assert frozen.train.epochs == 3 and finetuned.train.epochs == 6
    assert finetuned.train.patience == 2 and finetuned.train.batch_size == 16
    assert frozen.labels == finetuned.labels == config.labels
    assert frozen.extract.workers == 0
    assert frozen.extract.precision == "fp32" and finetuned.train.precision == "fp32"
    (question,) = study.questions
    assert (question.a, question.b) == ("resnet18-finetune", "resnet18-frozen")


def _outputs(folder: Path) -> dict[str, tuple[str, str]]:
    return {
        p.name.split("-", 2)[2]: (
            (p / "metrics.json").read_text(),
            (p / "predictions.csv").read_text(),
        )
        for p in folder.iterdir()
        if not p.name.startswith(".")
    }


@pytest.mark.slow
def test_demo_runs_the_builtin_study_reruns_nothing_and_its_commands_repeat_it(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#25.4: the demo is its study file; the questions come first with Holm over the two
    declared ones; a second demo retrains nothing; the step-by-step commands it prints give
    its runs byte for byte (metrics.json, predictions.csv) (issue 14.6)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--data", str(tiny_data), "--model", "resnet18", "--model", "efficientnet_b0"]
    args += ["--image-size", "32", "--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["trained"], doc["reused"]) == (10, 0)
    assert doc["random_init"] is True
    assert [q["family"] for q in doc["questions"]] == [2, 2]
    assert [q["a"] for q in doc["questions"]] == ["resnet18-finetune"] * 2
    # 4 primary arms: 6 pairs, less the 2 declared; sweeps and curves never in a family
    assert len(doc["exploratory"]) == 4
    assert {a["kind"] for a in doc["arms"]} == {"primary", "sweep"}
    assert len(doc["sweeps"]) == 2 and len(doc["curves"]) == 4
    folder = tmp_path / "studies" / "demo"
    config = StudyConfig(
        models=("resnet18", "efficientnet_b0"), image_size=32, head_epochs=3, finetune_epochs=1
    )
    assert (folder / "study.toml").read_text() == demo_text(config, data=tiny_data)
    report = (folder / "report.md").read_text()
    order = ["## Questions (declared before the results; Holm over 2)", "## Arms", "## Sweeps",
             "## Label efficiency", "## Exploratory pairs (NOT corrected"]  # fmt: skip
    assert [report.index(h) for h in order] == sorted(report.index(h) for h in order)

    again_run = CliRunner().invoke(app, args)
    assert again_run.exit_code == 0, again_run.output
    assert (json.loads(again_run.stdout)["trained"], json.loads(again_run.stdout)["reused"]) == (
        0,
        10,
    )

    runs = folder / "runs"
    again = tmp_path / "again"
    assert not [c for c in doc["commands"] if c.startswith("#")], doc["commands"]
    assert doc["commands"][-1].startswith(f"xray compare {runs.relative_to(tmp_path)} ")
    for command in doc["commands"]:
        argv = shlex.split(command.replace(str(runs.relative_to(tmp_path)), str(again)))
        assert argv[0] == "xray"
        step = CliRunner().invoke(app, [*argv[1:], *(["--json"] if argv[1] != "extract" else [])])
        assert step.exit_code == 0, (command, step.output)
    assert _outputs(again) == _outputs(runs)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_demo_runs_the_multiclass_and_multilabel_studies(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_tiny_kermany3, write_tiny_multilabel

    if task == "multiclass":
        data = write_tiny_kermany3(tmp_path / "chest_xray")
    else:
        data = write_tiny_multilabel(tmp_path / "ml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    args = ["demo", "--task", task, "--data", str(data), "--model", "resnet18"]
    args += ["--image-size", "32", "--head-epochs", "3", "--finetune-epochs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # frozen, finetune, the sweep and the curve's two fractions (#24: every task takes them)
    assert doc["task"] == task and (doc["trained"], doc["reused"]) == (5, 0)
    (question,) = doc["questions"]
    assert question["family"] == 1 and question["metric"] == "roc_auc_macro"
    assert question["task"] == task and question["estimate_a"] is not None
    assert sorted(a["mode"] for a in doc["arms"]) == ["finetune", "frozen", "frozen"]
    assert doc["exploratory"] == [] and len(doc["sweeps"]) == 1 and len(doc["curves"]) == 2
    study = (tmp_path / "studies" / f"demo-{task}" / "study.toml").read_text()
    assert f'data = "{data.as_posix()}"' in study
    assert ('labels = "kermany3"' in study) is (task == "multiclass")
    if task == "multiclass":
        assert list((tmp_path / "cache").glob("chest_xray-kermany3-*/*.h5"))
