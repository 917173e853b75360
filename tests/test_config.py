"""One source for every default: CLI defaults are the config dataclasses'; --config repeats."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import typer.main
from conftest import extract_tiny_store
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.config import (
    CompareConfig,
    ExtractConfig,
    FinetuneConfig,
    FitHeadConfig,
    StudyConfig,
    TrainConfig,
    seeded,
)
from featurestore.errors import XrayError

runner = CliRunner()


def _defaults(command: str) -> dict[str, Any]:
    """Each option of `xray <command>` -> its default as the CLI declares it."""
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    out = {}
    for param in cmd.params:
        value = param.default
        out[param.name] = getattr(value, "value", value)
    return out


def _flat(config: Any) -> dict[str, Any]:
    """A config's fields with nested TrainConfig fields flattened in."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, TrainConfig):
            out.update(_flat(value))
        else:
            out[f.name] = value
    return out


@pytest.mark.parametrize(
    "command, config",
    [
        ("fit-head", FitHeadConfig()),
        ("finetune", FinetuneConfig()),
        ("extract", ExtractConfig()),
    ],
)
def test_cli_defaults_are_the_config_defaults(command: str, config: Any) -> None:
    declared = _defaults(command)
    expected = _flat(config)
    shared = set(declared) & set(expected)
    assert len(shared) >= 6, shared  # the comparison covers the options that matter
    for name in shared:
        assert declared[name] == expected[name], f"{command} --{name}"


def test_compare_and_demo_defaults_are_the_config_defaults() -> None:
    compare = _defaults("compare")
    assert compare["bootstrap"] == CompareConfig().n_boot
    assert compare["resample"] == CompareConfig().resample
    assert compare["seed"] == CompareConfig().seed
    demo = _defaults("demo")
    assert demo["weights"] == StudyConfig().weights
    assert demo["seeds"] == StudyConfig().seeds
    assert demo["workers"] == StudyConfig().workers


def test_same_option_same_default_everywhere() -> None:
    """--device and --workers mean the same in every command that has them."""
    by_command = {c: _defaults(c) for c in ("extract", "fit-head", "finetune", "predict")}
    assert {d["device"] for d in by_command.values()} == {"auto"}
    assert by_command["extract"]["workers"] == by_command["finetune"]["workers"] is None


def test_seeded_is_the_one_seed_loop() -> None:
    base = TrainConfig(seed=3, epochs=2)
    assert [c.seed for c in seeded(base, 3)] == [3, 4, 5]
    assert {c.epochs for c in seeded(base, 3)} == {2}
    with pytest.raises(XrayError, match="--seeds must be at least 1"):
        seeded(base, 0)


def test_fit_head_config_repeats_a_run_and_the_command_line_wins(tmp_path: Path) -> None:
    env = extract_tiny_store(tmp_path)
    cache, runs = str(env["cache"]), tmp_path / "runs"
    first = runner.invoke(
        app, ["fit-head", "--cache", cache, "--runs", str(runs / "a"), "--epochs", "3",
              "--lr", "0.01", "--head", "mlp", "--seed", "4", "--json"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    (run_a,) = json.loads(first.stdout)["runs"]
    # A second store of the same backbone in the cache: --config must not train on it too.
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    extract_features(
        load_manifest(tmp_path / "chest_xray"), model="resnet18", weights="none",
        cache_dir=env["cache"], image_size=40, workers=0,
    )  # fmt: skip
    again = runner.invoke(
        app, ["fit-head", "--cache", cache, "--runs", str(runs / "b"), "--config", run_a, "--json"]
    )
    assert again.exit_code == 0, again.output
    (run_b,) = json.loads(again.stdout)["runs"]  # one run, on the store the run recorded
    config_a = json.loads((Path(run_a) / "config.json").read_text())
    config_b = json.loads((Path(run_b) / "config.json").read_text())
    assert config_b["store"]["path"] == config_a["store"]["path"]
    for key in ("epochs", "lr", "head", "seed", "batch_size", "monitor"):
        assert config_b[key] == config_a[key], key
    assert (Path(run_a) / "metrics.json").read_text() == (Path(run_b) / "metrics.json").read_text()
    # An option typed on the command line wins over the recorded one.
    other = runner.invoke(
        app, ["fit-head", "--cache", cache, "--runs", str(runs / "c"), "--config", run_a,
              "--seed", "5", "--json"],
    )  # fmt: skip
    (run_c,) = json.loads(other.stdout)["runs"]
    config_c = json.loads((Path(run_c) / "config.json").read_text())
    assert config_c["seed"] == 5 and config_c["head"] == "mlp" and config_c["lr"] == 0.01


def test_config_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit-head", "--config", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "no config.json" in result.stderr
    (tmp_path / "bad.json").write_text("[1, 2]")
    result = runner.invoke(app, ["fit-head", "--config", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "not a run's config.json" in result.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fit-head", "--monitor", "val_acc"], "unknown --monitor 'val_acc'; choose one of"),
        (["extract"], "Missing option '--model'"),
        (["fit-head", "--no-such-flag"], "No such option"),
    ],
)
def test_usage_mistakes_are_one_error_line(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
