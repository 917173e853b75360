"""A study's step-by-step commands (`study_commands`, printed by `xray demo`), run one by one,
give the study's own runs: the same metrics.json and predictions.csv, byte for byte."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.study import (
    build_report,
    load_study,
    render_markdown,
    run_study_file,
    study_commands,
)

STUDY = """
[study]
name = "steps"
data = "{data}"
image_size = 32
seeds = [0]
weights = "none"
precision = "fp32"
n_boot = 100

[[study.arm]]
name = "frozen"
model = "resnet18"
mode = "frozen"
epochs = 3
lr = 0.01
threshold_policy = "f1"

[[study.arm]]
name = "finetune"
model = "resnet18"
mode = "finetune"
epochs = 1
batch_size = 8

[[study.arm]]
name = "fewer-labels"
model = "resnet18"
mode = "frozen"
epochs = 2
train_fractions = [0.5]

[[study.question]]
name = "does fine-tuning help?"
a = "finetune"
b = "frozen"
"""


def _identity(run: Path) -> tuple[str, str, object]:
    config = json.loads((run / "config.json").read_text())
    return config["model"], config["mode"], config.get("train_fraction")


@pytest.mark.slow
def test_the_step_by_step_commands_repeat_the_study_byte_for_byte(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(data=tiny_data))
    study = load_study(path)
    said: list[str] = []
    done = run_study_file(study, data=tiny_data, notice=said.append)
    assert not [line for line in said if line.startswith("precision auto")]  # fp32 was set
    report = render_markdown(build_report(done.plan, done.paths))
    assert "; backbones in fp32; intervals:" in report
    commands = study_commands(done.plan, done.stores, cache=study.cache)
    assert not [c for c in commands if c.startswith("#")], commands  # every setting has a flag
    assert sum("--precision fp32" in c for c in commands) == 4  # extract, 2 fit-head, finetune

    before = set(done.paths.values())
    for line in commands[:-1]:  # the last one is `xray compare`
        args = shlex.split(line)
        assert args[0] == "xray"
        result = CliRunner().invoke(app, args[1:])
        assert result.exit_code == 0, (line, result.output)
    runs = study.folder / "runs"
    again = {_identity(r): r for r in runs.iterdir() if r.is_dir() and r not in before}
    ours = {_identity(r): r for r in before}
    assert sorted(again, key=str) == sorted(ours, key=str)
    for key, run in ours.items():
        for name in ("metrics.json", "predictions.csv"):
            assert (again[key] / name).read_bytes() == (run / name).read_bytes(), (key, name)
