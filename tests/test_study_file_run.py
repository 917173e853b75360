"""`xray study run` end to end on tiny data: 2 backbones x 2 modes x 2 seeds, 2 questions;
a second run retrains nothing; a changed arm reruns alone; the folder records every run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

STUDY = """
[study]
name = "tiny"
data = "{data}"
image_size = 32
seeds = [0, 1]
weights = "none"
n_boot = 200
{arms}
[[study.question]]
name = "does fine-tuning help resnet18?"
a = "resnet18-finetune"
b = "resnet18-frozen"

[[study.question]]
name = "fine-tuned, resnet18 or efficientnet_b0?"
a = "resnet18-finetune"
b = "efficientnet_b0-finetune"
metric = "accuracy"
"""

ARM = """
[[study.arm]]
name = "{model}-{mode}"
model = "{model}"
mode = "{mode}"
epochs = {epochs}
"""


def _text(data: Path, ft_epochs: int = 1) -> str:
    arms = "".join(
        ARM.format(model=m, mode=mode, epochs=2 if mode == "frozen" else ft_epochs)
        for m in ("resnet18", "efficientnet_b0")
        for mode in ("frozen", "finetune")
    )
    return STUDY.format(data=data, arms=arms)


@pytest.mark.slow
def test_study_runs_resumes_and_reruns_only_the_changed_arm(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    study = tmp_path / "study.toml"
    study.write_text(_text(tiny_data))
    dry = CliRunner().invoke(app, ["study", "run", str(study), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert [r["action"] for r in json.loads(dry.stdout)["runs"]] == ["train"] * 8
    assert not (tmp_path / "studies").exists() and not (tmp_path / "cache").exists()

    first = CliRunner().invoke(app, ["study", "run", str(study), "--json"])
    assert first.exit_code == 0, first.output
    # precision is left at auto: the run says what auto resolved to on this CPU
    assert re.search(r"precision auto: backbones compute in (bf16|fp32) on this CPU", first.stderr)
    doc = json.loads(first.stdout)
    assert (doc["trained"], doc["reused"]) == (8, 0)
    assert [q["family"] for q in doc["questions"]] == [2, 2]
    assert "DeLong" not in doc["questions"][0]["test"]  # two seeds: the bootstrap test
    assert len(doc["arms"]) == 4 and all(a["runs"] == 2 for a in doc["arms"])
    # the 6 pairs of 4 arms less the 2 declared, in each declared metric
    assert len(doc["exploratory"]) == 4 * 2
    folder = tmp_path / "studies" / "tiny"
    report = (folder / "report.md").read_text()
    assert re.search(r"; backbones in (bf16|fp32); intervals:", report)
    assert report.index("## Questions") < report.index("## Arms") < report.index("NOT corrected")
    record = json.loads((folder / "study.json").read_text())
    assert (folder / "study.toml").read_text() == study.read_text()
    assert len(record["runs"]) == 8 and all((folder / r["path"]).is_dir() for r in record["runs"])

    second = CliRunner().invoke(app, ["study", "run", str(study), "--json"])
    assert second.exit_code == 0, second.output
    assert (json.loads(second.stdout)["trained"], json.loads(second.stdout)["reused"]) == (0, 8)
    said = " ".join(second.stderr.split())  # it says so, once per run (rich wraps lines)
    assert said.count("reused studies/tiny/runs/") == 8
    assert said.count("(config unchanged, run complete)") == 8 and "trained in" not in said

    study.write_text(_text(tiny_data).replace(
        'name = "efficientnet_b0-finetune"\nmodel = "efficientnet_b0"\nmode = "finetune"\n'
        "epochs = 1", 'name = "efficientnet_b0-finetune"\nmodel = "efficientnet_b0"\n'
        'mode = "finetune"\nepochs = 2',
    ))  # fmt: skip
    third = CliRunner().invoke(app, ["study", "run", str(study), "--json"])
    assert third.exit_code == 0, third.output
    assert (json.loads(third.stdout)["trained"], json.loads(third.stdout)["reused"]) == (2, 6)
    retrained = re.findall(r"\] (\S+) seed (\d): trained in", " ".join(third.stderr.split()))
    assert retrained == [("efficientnet_b0-finetune", "0"), ("efficientnet_b0-finetune", "1")]
    again = CliRunner().invoke(app, ["study", "report", str(study), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["questions"][1]["a"] == "resnet18-finetune"


EVERY_KIND = """
[study]
name = "kinds"
data = "{data}"
{labels}image_size = 32
seeds = [0]
weights = "none"
n_boot = 100

[[study.arm]]
name = "frozen"
model = "resnet18"
mode = "frozen"
epochs = 2

[[study.arm]]
name = "finetune"
model = "resnet18"
mode = "finetune"
epochs = 1

[[study.arm]]
name = "sweep"
model = "resnet18"
mode = "frozen"
epochs = 1
sweep = {{ lrs = [0.001, 0.01] }}

[[study.arm]]
name = "fewer-labels"
model = "resnet18"
mode = "frozen"
epochs = 1
train_fractions = [0.5]

[[study.arm]]
name = "few-shots"
model = "resnet18"
mode = "frozen"
epochs = 1
shots_per_class = [3]

[[study.question]]
name = "does fine-tuning help?"
a = "finetune"
b = "frozen"
"""


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_sweep_and_label_efficiency_arms_run_on_every_task(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-class or multi-label study with a head sweep and two label-efficiency arms runs;
    its report puts them in their own sections (never in a question), scored with the task's
    primary metric."""
    from conftest import write_tiny_kermany3, write_tiny_multilabel

    from featurestore.tasks import Task

    if task == "multiclass":
        data, labels = write_tiny_kermany3(tmp_path / "k3"), 'labels = "kermany3"\n'
    else:
        data, labels = write_tiny_multilabel(tmp_path / "ml"), ""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    (tmp_path / "study.toml").write_text(EVERY_KIND.format(data=data, labels=labels))
    result = CliRunner().invoke(app, ["study", "run", "study.toml", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == task and (doc["trained"], doc["reused"]) == (5, 0)
    primary = Task(task, ("a", "b", "c"), 0).primary_metric  # type: ignore[arg-type]
    assert doc["metrics"][0] == primary == "roc_auc_macro"
    (question,) = doc["questions"]
    assert question["metric"] == primary and question["estimate_a"] is not None
    assert [a["arm"] for a in doc["arms"]] == ["frozen", "finetune", "sweep"]
    (sweep,) = doc["sweeps"]
    assert sweep["arm"] == "sweep" and sweep["members"] == 2
    assert sweep["chosen_lr"] in (0.001, 0.01) and sweep[primary] is not None
    assert [(c["arm"], c.get("fraction", c.get("shots"))) for c in doc["curves"]] == [
        ("fewer-labels", 0.5),
        ("few-shots", 3),
    ]
    assert all(c["runs"] == 1 and c[primary] is not None for c in doc["curves"])
    report = (tmp_path / "studies" / "kinds" / "report.md").read_text()
    order = ["## Questions", "## Arms", "## Sweeps", "## Label efficiency", "## Exploratory"]
    assert [report.index(h) for h in order] == sorted(report.index(h) for h in order)
    sweeps = report.split("## Sweeps")[1]
    assert f"| arm | seed | members | head | lr | weight decay | {primary} |" in sweeps
    assert f"- few-shots, 3 shots (1 runs): {primary} " in report.split("## Label efficiency")[1]
