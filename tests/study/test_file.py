"""The study file: defaults from the config dataclasses, and every bad file refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.config import FinetuneConfig, TrainConfig
from featurestore.errors import XrayError
from featurestore.study import load_study, parse_study

GOOD = """
[study]
name = "t"
seeds = [0, 1]
image_size = 32
weights = "none"

[[study.arm]]
name = "r-frozen"
model = "resnet18"
mode = "frozen"
epochs = 3

[[study.arm]]
name = "r-ft"
model = "resnet18"
mode = "finetune"
epochs = 1
batch_size = 8

[[study.question]]
name = "does fine-tuning help?"
a = "r-ft"
b = "r-frozen"
"""


def test_defaults_come_from_the_config_dataclasses() -> None:
    study = parse_study(GOOD)
    frozen, ft = study.arms
    assert frozen.train.epochs == 3 and frozen.train.lr == TrainConfig().lr
    assert frozen.extract is not None and frozen.extract.image_size == 32
    assert frozen.extract.weights == "none"
    assert ft.finetune is not None and ft.finetune.image_size == 32
    assert ft.train.backbone_lr_mult == FinetuneConfig().train.backbone_lr_mult
    assert ft.train.batch_size == 8 and study.seeds == (0, 1)
    assert study.questions[0].metric == "roc_auc"


def test_the_builtin_demo_parses() -> None:
    demo = load_study("demo")
    assert [a.kind for a in demo.arms].count("primary") == 4
    assert {a.kind for a in demo.arms} == {"primary", "sweep", "curve"}
    assert len(demo.questions) == 2


BAD = {
    "typo in a key": (GOOD.replace("epochs = 3", "epoch = 3"), "unknown key 'epoch'"),
    "typo in an arm a question names": (GOOD.replace('a = "r-ft"', 'a = "r-fine"'), "'r-fine'"),
    "unknown mode": (GOOD.replace('mode = "frozen"', 'mode = "frozn"'), "unknown mode 'frozn'"),
    "key of the other mode": (GOOD.replace("epochs = 1", "epochs = 1\nhead = 'mlp'"), "'head'"),
    "bad value": (GOOD.replace("epochs = 3", "epochs = 0"), "--epochs must be at least 1"),
    "wrong type": (GOOD.replace("epochs = 3", 'epochs = "3"'), "epochs must be a whole number"),
    "unknown metric": (GOOD.replace('b = "r-frozen"', 'b = "r-frozen"\nmetric = "auc"'), "'auc'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, expected = BAD[case]
    with pytest.raises(XrayError, match=r"study\.toml"):
        parse_study(text)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(text)
    for argv in (["study", "run", "study.toml"], ["study", "run", "study.toml", "--dry-run"]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "study.toml" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def _task_data(task: str, root: Path) -> tuple[Path, str]:
    """A tiny dataset of the task and the [study] line that reads it as that task."""
    from conftest import write_tiny_dataset, write_tiny_kermany3, write_tiny_multilabel

    if task == "binary":
        return write_tiny_dataset(root / "bin"), ""
    if task == "multiclass":
        return write_tiny_kermany3(root / "k3"), 'labels = "kermany3"\n'
    return write_tiny_multilabel(root / "ml"), ""


@pytest.mark.parametrize(
    "arm", ['sweep = "default"', "train_fractions = [0.5]", "shots_per_class = [4]"]
)
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_sweep_and_curve_arms_are_planned_on_every_task(
    arm: str, task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit-head --sweep, --train-fraction and --shots take every task's store: the plan of a
    study with such an arm lists its runs, whatever the task."""
    data, labels = _task_data(task, tmp_path)
    text = GOOD.replace('weights = "none"\n', f'weights = "none"\ndata = "{data}"\n{labels}')
    text += f'\n[[study.arm]]\nname = "extra"\nmodel = "resnet18"\nmode = "frozen"\n{arm}\n'
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(text)
    result = CliRunner().invoke(app, ["study", "run", "study.toml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "extra seed 1" in result.output and task in result.output


@pytest.mark.parametrize(
    ("task", "metric", "named"),
    [
        ("binary", "balanced_accuracy", "specificity"),
        ("multiclass", "sensitivity", "balanced_accuracy"),
        ("multilabel", "accuracy", "roc_auc_macro"),
        ("multilabel", "auc:Nodule", "auc:<finding>"),
    ],
)
def test_a_metric_the_task_lacks_is_refused_at_plan_time(
    task: str, metric: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metric some task has passes the file's check; the plan, which knows the data's task,
    refuses one this task lacks in one line naming those it has, before anything runs."""
    data, labels = _task_data(task, tmp_path)
    text = GOOD.replace('weights = "none"\n', f'weights = "none"\ndata = "{data}"\n{labels}')
    text = text.replace('b = "r-frozen"\n', f'b = "r-frozen"\nmetric = "{metric}"\n')
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["study", "run", "study.toml", "--dry-run"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "study.toml" in line and repr(metric) in line and named in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
