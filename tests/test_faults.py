"""Faults survived: SIGKILL at random points, a full disk, two concurrent extractions, a run
folder killed while being written. Real processes, real signals; seeds via XRAY_FAULT_SEED."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.data import load_manifest
from featurestore.runs import list_runs
from featurestore.store import (
    ExtractResult,
    PartialStore,
    dataset_folder,
    extract_features,
    store_path,
)
from featurestore.store import read as store

torch.set_num_threads(1)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
# `XRAY_FAULT_SEED=100 pytest tests/test_faults.py` re-runs the random kills at other points.
SEED_BASE = int(os.environ.get("XRAY_FAULT_SEED", "0"))
SETTINGS: dict[str, Any] = {
    "precision": "fp32",  # the same store name on every CPU (auto is bf16 on some)
    "model": "resnet18",
    "weights": "none",
    "image_size": 32,
    "workers": 0,
    "batch_size": 4,
    "chunk_size": 4,
}
CLI_SETTINGS = ["--model", "resnet18", "--weights", "none", "--image-size", "32",
                "--workers", "0", "--batch-size", "4", "--precision", "fp32"]  # fmt: skip
# What `xray extract` uses (its chunk size is the library default).
CLI_EQUIVALENT = {**SETTINGS, "chunk_size": 256}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# The child extracts exactly like `extract_features(**SETTINGS)`; after each chunk file it
# sleeps (so a kill can land anywhere over a few seconds) or waits for a go-file.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from featurestore.store import write as store_write
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    data, cache, pause, gate = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    write = store_write.PartialStore.write_chunk
    def paced_write(self, *args, **kwargs):
        write(self, *args, **kwargs)
        time.sleep(pause)
        while gate and not Path(gate).exists():  # held until the test opens the gate
            time.sleep(0.02)
    store_write.PartialStore.write_chunk = paced_write
    extract_features(load_manifest(data), cache_dir=cache, model="resnet18", weights="none",
                     image_size=32, workers=0, batch_size=4, chunk_size=4, precision="fp32")
    """
)


def start_child(data: Path, cache: Path, *, pause: float, gate: Path | None = None) -> Any:
    args = [str(data), str(cache), str(pause), str(gate or "")]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], env=ENV, stderr=subprocess.PIPE, text=True
    )


def store_datasets(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every dataset's raw array (dtype as stored) and the root attributes but timings."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fh:
        fh.visititems(
            lambda name, obj: (
                arrays.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
            )
        )
        attrs = {k: v for k, v in fh.attrs.items() if k != "extraction_seconds"}
    return arrays, attrs


def assert_same_store(got: Path, want: Path) -> None:
    """Byte-equal datasets (features, labels, keys, groups per split) and equal provenance."""
    a, attrs_a = store_datasets(got)
    b, attrs_b = store_datasets(want)
    assert (
        sorted(a)
        == sorted(b)
        == sorted(
            f"{s}/{d}" for s in store.SPLIT_NAMES for d in ("features", "labels", "keys", "groups")
        )
    )
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name
    attrs_a.pop("dataset_root"), attrs_b.pop("dataset_root")
    assert attrs_a.keys() == attrs_b.keys()
    for key in attrs_a:
        assert np.array_equal(attrs_a[key], attrs_b[key]), key


@pytest.fixture(scope="module")
def reference(tiny_data_ro: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtractResult:
    """One uninterrupted in-process extraction with the children's settings."""
    cache = tmp_path_factory.mktemp("faults_ref")
    return extract_features(load_manifest(tiny_data_ro), cache_dir=cache, **SETTINGS)


def n_chunks(tiny_data_ro: Path, chunk_size: int = SETTINGS["chunk_size"]) -> int:
    m = load_manifest(tiny_data_ro)
    return sum(-(-len(m.split(s)) // chunk_size) for s in store.SPLIT_NAMES)


# --- SIGKILL at random points ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [SEED_BASE, SEED_BASE + 1, SEED_BASE + 2])
def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(
    tiny_data_ro: Path, tmp_path: Path, reference: ExtractResult, seed: int
) -> None:
    rng = random.Random(seed)
    total = n_chunks(tiny_data_ro)
    wait_chunks = rng.randrange(0, total)  # 0: possibly before the first chunk is written
    delay = rng.uniform(0.0, 0.3)  # then a little more: mid-chunk, mid-write or mid-assembly
    cache = tmp_path / "cache"
    path = store_path(cache, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    partial = PartialStore(path)
    proc = start_child(tiny_data_ro, cache, pause=0.15)
    try:
        deadline = time.monotonic() + 120
        # Wait until extraction has begun (its progress folder exists), then for a random
        # number of finished chunks.
        while (
            not (partial.folder / "provenance.json").exists()
            or len(list(partial.folder.glob("*.npz"))) < wait_chunks
        ) and proc.poll() is None:
            assert time.monotonic() < deadline, "the child wrote no chunk in 120 s"
            time.sleep(0.01)
        time.sleep(delay)
        finished_first = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert finished_first or proc.returncode == -signal.SIGKILL, proc.stderr.read()
    # Killed at any point: either no store at all, or a complete one (never a half-written one).
    if path.exists():
        assert bool(store.read_attrs(path)["complete"])
    existed = path.exists()
    done = len(list(partial.folder.glob("*.npz"))) if partial.exists() else 0
    resumed = extract_features(load_manifest(tiny_data_ro), cache_dir=cache, **SETTINGS)
    want = "reused" if existed else "resumed" if done else "built"
    assert resumed.status == want, (resumed.status, resumed.reason, wait_chunks, delay)
    assert_same_store(resumed.path, reference.path)
    assert not partial.exists() and not Path(f"{path}.tmp").exists()
    assert not list(cache.rglob(".*.tmp"))


# --- full disk ------------------------------------------------------------------------------------


def _extract_cli(data: Path, cache: Path) -> Any:
    return runner.invoke(
        app, ["extract", "--data", str(data), "--cache", str(cache), *CLI_SETTINGS]
    )


def _one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    return str(line)


def test_full_disk_while_writing_a_chunk_is_one_line_and_resumes(
    tiny_data_ro: Path, tmp_path: Path, reference: ExtractResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fsync is where a full disk shows up on most file systems (delayed allocation).
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 4:  # provenance.json, 2 chunks (train, val), then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    cache = tmp_path / "cache"
    monkeypatch.setattr(os, "fsync", fsync)
    result = _extract_cli(tiny_data_ro, cache)
    monkeypatch.setattr(os, "fsync", real_fsync)
    line = _one_error_line(result)
    assert "disk full" in line and "free space in" in line and "finished chunks are kept" in line
    path = store_path(cache, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    partial = PartialStore(path)
    assert not path.exists()
    assert len(list(partial.folder.glob("*.npz"))) == 2
    assert not list(partial.folder.glob(".*.tmp"))  # the torn chunk file was removed

    resumed = extract_features(load_manifest(tiny_data_ro), cache_dir=cache, **CLI_EQUIVALENT)
    assert resumed.status == "resumed" and resumed.reason.startswith("2 of ")
    assert_same_store(resumed.path, reference.path)


def test_full_disk_while_assembling_the_store_is_one_line_and_resumes(
    tiny_data_ro: Path, tmp_path: Path, reference: ExtractResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Any, key: Any, value: Any) -> None:
        raise OSError(errno.ENOSPC, "Can't write data (file write failed: No space left on device)")

    cache = tmp_path / "cache"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    result = _extract_cli(tiny_data_ro, cache)
    monkeypatch.undo()
    assert "disk full while writing" in _one_error_line(result)
    path = store_path(cache, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    assert not path.exists() and not Path(f"{path}.tmp").exists()  # no half-written store
    total = n_chunks(tiny_data_ro, CLI_EQUIVALENT["chunk_size"])
    assert len(list(PartialStore(path).folder.glob("*.npz"))) == total  # all work kept
    resumed = extract_features(load_manifest(tiny_data_ro), cache_dir=cache, **CLI_EQUIVALENT)
    assert (
        resumed.status == "resumed" and resumed.reason == f"{total} of {total} chunks already done"
    )
    assert_same_store(resumed.path, reference.path)


def test_other_write_errors_are_not_disguised_as_a_full_disk(
    tiny_data_ro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        extract_features(load_manifest(tiny_data_ro), cache_dir=tmp_path, **SETTINGS)


# --- two concurrent extractions -------------------------------------------------------------------


@pytest.mark.slow
def test_second_concurrent_extraction_is_refused_and_the_first_finishes(
    tiny_data_ro: Path, tmp_path: Path, reference: ExtractResult
) -> None:
    cache, gate = tmp_path / "cache", tmp_path / "go"
    path = store_path(cache, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    first = start_child(tiny_data_ro, cache, pause=0.0, gate=gate)
    try:
        deadline = time.monotonic() + 120
        while not list(PartialStore(path).folder.glob("*.npz")):  # the child holds the lock
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = _extract_cli(tiny_data_ro, cache)  # this process: a second, real writer
        line = _one_error_line(second)
        assert "another extraction is writing" in line and "wait for it to finish" in line
        gate.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_same_store(path, reference.path)  # the refused run disturbed nothing
    again = _extract_cli(tiny_data_ro, cache)  # the lock is released with the process
    assert again.exit_code == 0, again.output


# --- a run folder is never half-written -----------------------------------------------------------

KILL_IN_WRITE_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from featurestore import plots
    from featurestore.train import TrainConfig
    from featurestore.train import fit_heads

    signal_file = Path(sys.argv[3])
    def stuck(*args, **kwargs):  # every other file of the run is written by now
        signal_file.touch()
        time.sleep(120)
    plots.write_plots = stuck
    fit_heads(store=Path(sys.argv[1]), runs_dir=Path(sys.argv[2]),
              config=TrainConfig(epochs=1, device="cpu"))
    """
)


@pytest.mark.slow
def test_kill_while_writing_a_run_leaves_no_visible_run_and_compare_ignores_it(
    reference: ExtractResult, tmp_path: Path
) -> None:
    runs, signal_file = tmp_path / "runs", tmp_path / "writing"
    args = [str(reference.path), str(runs), str(signal_file)]
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_WRITE_RUN, *args], env=ENV,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    entries = list(runs.iterdir())
    assert entries and all(e.name.startswith(".") and e.name.endswith(".tmp") for e in entries)
    assert (entries[0] / "metrics.json").is_file()  # it was killed mid-way, not before
    assert list_runs(runs) == []
    result = runner.invoke(app, ["compare", "--runs", str(runs), "--out", str(tmp_path / "r")])
    assert "no complete run folders" in _one_error_line(result)
    result = runner.invoke(app, ["compare", str(entries[0]), "--out", str(tmp_path / "r")])
    assert "still being written" in _one_error_line(result)

    # A later run lands beside the leftover; compare sees exactly that one.
    result = runner.invoke(
        app, ["fit-head", "--store", str(reference.path), "--runs", str(runs), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    (run,) = list_runs(runs)
    result = runner.invoke(app, ["compare", "--runs", str(runs), "--out", str(tmp_path / "r"),
                                 "--bootstrap", "200", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert run.name in result.stdout and entries[0].name not in result.stdout


def test_full_disk_while_writing_a_run_is_one_line_and_leaves_nothing(
    reference: ExtractResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore import plots

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plots, "write_plots", full)
    runs = tmp_path / "runs"
    result = runner.invoke(
        app, ["fit-head", "--store", str(reference.path), "--runs", str(runs), "--epochs", "1"]
    )
    assert "disk full while writing" in _one_error_line(result)
    assert list(runs.iterdir()) == []


def test_full_disk_in_torch_save_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports ENOSPC as a RuntimeError from its zip writer (seen on a full tmpfs)."""
    from featurestore.errors import XrayError
    from featurestore.train import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": torch.tensor(1)})

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(XrayError, match="is the disk full"):
        save_checkpoint(path, {"epoch": torch.tensor(2)})
    monkeypatch.undo()
    assert int(torch.load(path, weights_only=True)["epoch"]) == 1  # the previous one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no torn temporary file
