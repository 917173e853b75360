"""Tests for `xray data check` and `xray data synth` through the Typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def test_check_prints_tables(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro)])
    assert result.exit_code == 0, result.output
    assert "images per split and class" in result.stdout
    assert "image size (pixels) per class" in result.stdout
    assert "no leakage between splits" in result.stdout


def test_check_json(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"][0] == {
        "split": "train",
        "NORMAL": 8,
        "PNEUMONIA": 12,
        "images": 20,
        "patients": 10,
    }
    assert doc["counts"]["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert doc["leakage"] is False


def test_check_uses_xray_data(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--json"], env={"XRAY_DATA": str(tiny_data_ro)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["root"] == str(tiny_data_ro)


def test_strict_exits_one_on_leakage(tiny_data: Path) -> None:
    source = tiny_data / "train" / "NORMAL" / "IM-1001-0001.jpeg"
    shutil.copy(source, tiny_data / "test" / "NORMAL" / "IM-0001-0001.jpeg")
    shutil.copy(source, tiny_data / "val" / "NORMAL" / "NORMAL2-IM-1002-0001.jpeg")
    relaxed = runner.invoke(app, ["data", "check", "--data", str(tiny_data)])
    assert relaxed.exit_code == 0, relaxed.output
    assert "patients shared between" in relaxed.stdout
    assert "IM-1002 │ train, val" in relaxed.stdout
    assert "val/NORMAL/NORMAL2-IM-1002-0001.jpeg" in relaxed.stdout  # folded, not cut
    assert "byte-identical files" in relaxed.stdout
    assert "warning:" in relaxed.stdout
    strict = runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--strict"])
    assert strict.exit_code == 1
    assert "strict:" in strict.stderr


def test_strict_exits_one_on_unreadable_file(tiny_data: Path) -> None:
    (tiny_data / "train" / "NORMAL" / "IM-0005-0001.jpeg").write_bytes(b"\xff\xd8\xff")
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--strict"])
    assert result.exit_code == 1
    assert "unreadable files" in result.stdout
    assert "IM-0005-0001.jpeg" in result.stdout


def test_strict_passes_on_clean_data(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro), "--strict"])
    assert result.exit_code == 0, result.output


def test_check_user_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["check", "synth"])
def test_help_has_examples(command: str) -> None:
    result = runner.invoke(app, ["data", command, "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert f"xray data {command}" in result.stdout


def test_synth_passes_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featurestore.data.synth

    seen: dict[str, object] = {}

    def fake_generate(out_dir: Path, **kwargs: object) -> featurestore.data.synth.SynthSummary:
        seen.update(kwargs, out_dir=out_dir)
        return featurestore.data.synth.SynthSummary(
            root=out_dir,
            counts={"train": {"NORMAL": 3, "PNEUMONIA": 9}, "val": {"NORMAL": 1, "PNEUMONIA": 1}},
            patients={"train": 5, "val": 2},
        )

    monkeypatch.setattr(featurestore.data.synth, "generate_synthetic", fake_generate)
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--seed", "3", "--patients", "40", "--overwrite"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert seen["out_dir"] == out
    assert (seen["seed"], seen["patients"], seen["overwrite"]) == (3, 40, True)
    doc = json.loads(result.stdout)
    assert doc["rows"][0] == {
        "split": "train",
        "NORMAL": 3,
        "PNEUMONIA": 9,
        "images": 12,
        "patients": 5,
    }
    assert doc["seed"] == 3


def test_synth_writes_a_checkable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--patients", "12", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    check = runner.invoke(app, ["data", "check", "--data", str(out), "--json", "--strict"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["rows"] == written["rows"]
    again = runner.invoke(app, ["data", "synth", "--out", str(out), "--patients", "12"])
    assert again.exit_code == 2
    assert "--overwrite" in again.stderr
