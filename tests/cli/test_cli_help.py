"""`--help` at 80 columns: no type label on flags, choice lists that wrap between choices;
options that may be given bare (`fit-head --sweep`)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import extract_tiny_store
from featurestore.cli.main import app
from featurestore.cli.options import fill_bare_values
from typer.testing import CliRunner

from featurestore.config import SweepConfig
from featurestore.runs import load_run

runner = CliRunner()
GROUP = typer.main.get_command(app)


def _paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's words under `group`: ("fit-head",), ("data",), ("data", "check"), ..."""
    found = []
    for name, command in sorted(getattr(group, "commands", {}).items()):
        found += [(*prefix, name), *_paths(command, (*prefix, name))]
    return found


COMMANDS = _paths(GROUP)


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    return result.output


def _is_row(line: str, flag: str) -> bool:
    """Whether `line` is the first line of option `flag`'s row (after a required `*`)."""
    return re.match(rf"│[ *]*{re.escape(flag)}\s", line) is not None


def _type_cell(lines: list[str], row: int, col: int) -> list[str]:
    """The lines of the type column that starts at `col` on line `row` (the option's line)."""
    cell = []
    for k, line in enumerate(lines[row:]):
        if k and line[:col].strip(" │"):
            break  # the next option's row
        text = line[col:].split("  ")[0].strip(" │")
        if not text:
            break
        cell.append(text)
    return cell


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=" ".join)
def test_help_at_80_columns_labels_no_flag_and_splits_no_choice(command: tuple[str, ...]) -> None:
    text = _help(*command)
    assert "<bool>" not in text and "<list[" not in text, text
    target = GROUP
    for word in command:
        target = target.commands[word]  # type: ignore[attr-defined]
    lines = text.splitlines()
    checked = 0
    for param in target.params:
        metavar = getattr(param, "metavar", None) or ""
        if " | " not in metavar:
            continue
        choices = metavar.split(" | ")
        flag = max(param.opts, key=len)
        (row,) = [i for i, line in enumerate(lines) if _is_row(line, flag)]
        col = lines[row].index(choices[0], lines[row].index(flag) + len(flag))
        cell = _type_cell(lines, row, col)
        words = " ".join(cell).replace("|", " ").split()
        assert words == choices, (flag, cell)  # a word cut across lines would not be a choice
        checked += 1
    if command in (("fit-head",), ("finetune",), ("extract",)):
        assert checked >= 3  # the test looked at real choice lists


def test_choices_that_need_two_lines_wrap_between_choices() -> None:
    lines = _help("fit-head").splitlines()
    (row,) = [i for i, line in enumerate(lines) if _is_row(line, "--monitor")]
    cell = _type_cell(lines, row, lines[row].index("val_auc"))
    assert len(cell) >= 2 and all(w in {"val_auc", "val_f1", "val_loss", "|"}
                                  for line in cell for w in line.split())  # fmt: skip


def test_flags_have_no_type_label() -> None:
    lines = _help("fit-head").splitlines()
    (fuse,) = [line for line in lines if _is_row(line, "--fuse")]
    assert fuse.split()[2:4] == ["One", "head"], fuse  # the help text follows the name


@pytest.mark.parametrize(
    ("args", "filled"),
    [
        (["--sweep"], ["--sweep", "default"]),
        (["--sweep", "--json"], ["--sweep", "default", "--json"]),
        (["--sweep", "lr=1e-3", "--json"], ["--sweep", "lr=1e-3", "--json"]),
        (["--json", "--", "--sweep"], ["--json", "--", "--sweep"]),
    ],
)
def test_fill_bare_values(args: list[str], filled: list[str]) -> None:
    assert fill_bare_values(args, {"--sweep": "default"}) == filled


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return extract_tiny_store(tmp_path_factory.mktemp("cli_help"))


@pytest.mark.parametrize("form", [["--sweep"], ["--sweep", "--seed", "0"], ["--sweep", "default"]])
def test_a_bare_sweep_is_the_default_grid(store_env, tmp_path: Path, form: list[str]) -> None:  # type: ignore[no-untyped-def]
    """`--sweep` alone, at the end or before another option, trains the grid of `--sweep
    default` (before: "Option '--sweep' requires an argument" or a sweep of `--seed`)."""
    args = ["fit-head", "--cache", str(store_env["cache"]), "--runs", str(tmp_path),
            "--epochs", "1", "--device", "cpu", "--json", *form]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    sweep = load_run(Path(run)).config["sweep"]
    default = asdict(SweepConfig())
    assert sweep["grid"] == {k: list(v) for k, v in default.items()}
    sizes = [len(default[axis]) for axis in ("lrs", "weight_decays", "heads")]
    assert sweep["members"] == sizes[0] * sizes[1] * sizes[2]
