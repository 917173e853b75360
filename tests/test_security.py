"""Security: no code runs from checkpoints, weights files or data files; manifests never steer
writes. A malicious pickle (its __reduce__ would create a marker file) is refused everywhere."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner, Result

from featurestore.errors import XrayError

torch.set_num_threads(1)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("featurestore", "cli", "bench") for p in (ROOT / folder).rglob("*.py")
)
TINY = ["--model", "resnet18", "--image-size", "32", "--workers", "0", "--batch-size", "8"]


class Payload:
    """Unpickling this runs `exec`, which writes the marker file: the attack being refused."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_file(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A weights-looking file whose unpickling would create `marker` (zip or legacy format)."""
    obj = {"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def assert_refused(result: Result, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize("legacy", [False, True])
def test_the_payload_is_live(tmp_path: Path, legacy: bool) -> None:
    """Control: loaded the unsafe way, the file does run code (so the refusals below mean it)."""
    marker = tmp_path / "marker"
    path = malicious_file(tmp_path / "evil.pt", marker, legacy=legacy)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# --- static checks over the code base ----------------------------------------------------------


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, call) for every call whose callee is a name or attribute chain."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                found.append((".".join([func.id, *reversed(parts)]), node))
    return found


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return "<missing>"


def test_every_torch_load_passes_weights_only_true() -> None:
    loads = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, call in _calls(tree):
            if name == "torch.load" or name.endswith(".load_state_dict_from_url"):
                loads.append(
                    (f"{path.relative_to(ROOT)}:{call.lineno}", _keyword(call, "weights_only"))
                )
    assert len(loads) >= 3  # backbones (--weights PATH), checkpoints (resume), predict (best.pt)
    assert [where for where, value in loads if value is not True] == []


def test_no_unsafe_deserialisation_or_eval_anywhere() -> None:
    offences = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, call in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
            if name in (
                "pickle.load",
                "pickle.loads",
                "eval",
                "exec",
                "yaml.load",
                "torch.hub.load",
            ):
                offences.append(where)
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
                offences.append(f"{where} without allow_pickle=False")
            if name.endswith("from_file") and "pickle" in name:
                offences.append(where)
    assert offences == []


# --- malicious weights, checkpoints and data, through the CLI ----------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("command", ["finetune", "extract"])
def test_weights_path_with_code_is_refused(
    tiny_data_ro: Path, tmp_path: Path, command: str, legacy: bool
) -> None:
    marker = tmp_path / "marker"
    evil = malicious_file(tmp_path / "chest_weights.pt", marker, legacy=legacy)
    where = (
        ["--runs", str(tmp_path / "runs")] if command == "finetune" else ["--cache", str(tmp_path)]
    )
    result = runner.invoke(
        app, [command, "--data", str(tiny_data_ro), "--weights", str(evil), *TINY, *where]
    )
    assert_refused(result, str(evil))
    assert not marker.exists()


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset, its store and one frozen run folder (1 epoch)."""
    root = tmp_path_factory.mktemp("security")
    data = write_tiny_dataset(root / "chest_xray")
    cache, runs = root / "cache", root / "runs"
    result = runner.invoke(app, ["extract", "--data", str(data), "--cache", str(cache),
                                 "--weights", "none", *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fit-head", "--cache", str(cache), "--runs", str(runs),
                                 "--epochs", "1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    return run


@pytest.mark.parametrize("legacy", [False, True])
def test_predict_refuses_a_run_whose_best_pt_holds_code(
    frozen_run: Path, tmp_path: Path, legacy: bool
) -> None:
    import shutil

    run = tmp_path / frozen_run.name
    shutil.copytree(frozen_run, run)
    marker = tmp_path / "marker"
    malicious_file(run / "best.pt", marker, legacy=legacy)
    image = _jpeg(tmp_path / "x.jpeg")
    result = runner.invoke(app, ["predict", "--run", str(run), str(image), "--device", "cpu"])
    assert_refused(result, "best.pt")
    assert not marker.exists()


def _jpeg(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(path)
    return path


def test_resume_checkpoint_with_code_is_refused(
    tiny_data_ro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore import runs as runs_module

    args = ["finetune", "--data", str(tiny_data_ro), "--runs", str(tmp_path / "runs"),
            "--weights", "none", "--epochs", "1", "--device", "cpu", *TINY]  # fmt: skip

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the last epoch: last.pt stays for --resume

    monkeypatch.setattr(runs_module, "write_run", interrupted)
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.undo()
    (last,) = (tmp_path / "runs" / ".inprogress").glob("*/last.pt")
    marker = tmp_path / "marker"
    malicious_file(last, marker)
    assert_refused(runner.invoke(app, [*args, "--resume"]), "cannot read checkpoint", str(last))
    assert not marker.exists()


def test_resume_refuses_code_directly(tmp_path: Path) -> None:
    from featurestore.train import resume

    marker = tmp_path / "marker"
    path = malicious_file(tmp_path / "last.pt", marker, legacy=True)
    with pytest.raises(XrayError, match="cannot read checkpoint"):
        resume(path, None, None, None, None, None)  # type: ignore[arg-type]
    assert not marker.exists()


@pytest.mark.parametrize("array", ["train_labels", "train_images"])
def test_npz_with_pickled_objects_is_refused(tmp_path: Path, array: str) -> None:
    marker = tmp_path / "marker"
    arrays: dict[str, Any] = {
        "train_images": np.zeros((2, 8, 8), np.uint8),
        "train_labels": np.array([0, 1]),
    }
    arrays[array] = np.empty(arrays[array].shape, dtype=object)  # (N, ...) of payloads
    arrays[array].flat[:] = [Payload(marker)] * arrays[array].size
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    result = runner.invoke(app, ["extract", "--data", str(path), "--cache", str(tmp_path),
                                 "--weights", "none", *TINY])  # fmt: skip
    assert_refused(result, str(path), f"array {array} holds Python objects")
    assert not marker.exists()


# --- manifests never steer writes ----------------------------------------------------------------


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `folder`: content hash (files) and mtime, by relative path."""
    return {
        p.relative_to(folder).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
    }


def test_nothing_is_written_beside_the_data(frozen_run: Path, tmp_path: Path) -> None:
    """extract, fit-head and predict over a CSV dataset leave every data file and folder as
    they were: outputs go to --cache and --runs only."""
    data = write_tiny_dataset(tmp_path / "data" / "chest_xray")
    rows = ["path,label,split"] + [
        f"{p.relative_to(data).as_posix()},{p.parent.name},{p.parts[-3]}"
        for p in sorted(data.rglob("*.jpeg"))
    ]
    (data / "m.csv").write_text("\n".join(rows) + "\n")
    before = _tree(tmp_path / "data")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    for args in (
        ["extract", "--data", str(data / "m.csv"), "--cache", str(cache), "--weights", "none",
         *TINY],
        ["fit-head", "--cache", str(cache), "--runs", str(runs), "--epochs", "1"],
        ["predict", "--run", str(frozen_run), str(data / "test"), "--device", "cpu"],
    ):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert _tree(tmp_path / "data") == before


def test_manifest_paths_outside_its_folder_are_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    target = tmp_path / "victim.jpeg"
    _jpeg(target)
    data = tmp_path / "data"
    data.mkdir()
    (data / "m.csv").write_text(f"path,label,split\n../victim.jpeg,NORMAL,train\n{target},A,test\n")
    result = runner.invoke(app, ["extract", "--data", str(data / "m.csv"), "--cache",
                                 str(tmp_path / "cache"), "--weights", "none", *TINY])  # fmt: skip
    assert_refused(result, "outside the CSV's folder")
    assert not (tmp_path / "cache").exists()
