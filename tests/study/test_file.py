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


@pytest.mark.parametrize("arm", ['sweep = "default"', "train_fractions = [0.5]"])
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_sweep_and_curve_arms_are_refused_on_data_they_cannot_take(
    arm: str, task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--sweep takes binary stores; label-efficiency subsets stratify by class (not
    multi-label): refused in one line before anything is extracted or trained."""
    from conftest import write_tiny_kermany3, write_tiny_multilabel

    if task == "multiclass":
        data, labels = write_tiny_kermany3(tmp_path / "k3"), 'labels = "kermany3"\n'
    else:
        data, labels = write_tiny_multilabel(tmp_path / "ml"), ""
    refused = (task == "multiclass" and arm.startswith("sweep")) or task == "multilabel"
    text = GOOD.replace('weights = "none"\n', f'weights = "none"\ndata = "{data}"\n{labels}')
    text += f'\n[[study.arm]]\nname = "extra"\nmodel = "resnet18"\nmode = "frozen"\n{arm}\n'
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["study", "run", "study.toml", "--dry-run"])
    if not refused:  # a multi-class curve is fine
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "arm 'extra'" in line and task in line.replace("-", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
