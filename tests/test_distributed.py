"""torchrun support: env parsing, shards, collectives on 2 gloo processes, sharded extract, DDP."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from featurestore import distributed
from featurestore.errors import XrayError

XRAY = Path(sys.executable).with_name("xray")
TORCHRUN_ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment of launched ranks: one thread each (2 shared cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def torchrun(args: list[str], cwd: Path, *, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc-per-node N $(which xray) ARGS` on 127.0.0.1 and a free port."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(XRAY), *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300
    )


# ---------------------------------------------------------------- env, backend, shards


def test_launch_env_outside_torchrun_and_single_process_is_none() -> None:
    assert distributed.launch_env({}) is None
    assert distributed.launch_env({"RANK": "0", "WORLD_SIZE": "1", **TORCHRUN_ENV}) is None


def test_launch_env_reads_torchrun_vars() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    placement = distributed.launch_env({**env, **TORCHRUN_ENV})
    assert placement == distributed.LaunchEnv(
        rank=3, world_size=4, local_rank=1, local_world_size=2
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2", **TORCHRUN_ENV}, "must be integers"),
        ({"RANK": "2", "WORLD_SIZE": "2", **TORCHRUN_ENV}, "inconsistent"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "5", **TORCHRUN_ENV}, "LOCAL_RANK=5"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not set"),
    ],
)
def test_launch_env_refuses_bad_vars(env: dict[str, str], message: str) -> None:
    with pytest.raises(XrayError, match=message):
        distributed.launch_env(env)


def test_backend_is_gloo_on_cpu() -> None:
    assert distributed.pick_backend("cpu") == "gloo"
    import torch

    if not torch.cuda.is_available():
        assert distributed.pick_backend("auto") == "gloo"


def test_outside_a_group_everything_is_local() -> None:
    with distributed.process_group("cpu", environ={}) as placement:
        assert placement is None
        assert not distributed.active()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        distributed.barrier()
        assert distributed.on_main(lambda: 7) == 7
        assert distributed.everywhere(lambda: 8) == 8
        assert distributed.broadcast_object({"a": 1}) == {"a": 1}
        assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
        arr = np.arange(6).reshape(3, 2)
        (same,) = distributed.all_gather_arrays(arr)
        np.testing.assert_array_equal(same, arr)
        order = np.array([2, 0, 1])
        np.testing.assert_array_equal(distributed.gather_by_index(arr[order], order, 3), arr)


def test_gather_by_index_refuses_a_gap_and_mismatched_lengths() -> None:
    with pytest.raises(RuntimeError, match="gap"):
        distributed.gather_by_index(np.zeros(2), np.array([0, 2]), 3)
    with pytest.raises(ValueError, match="positions"):
        distributed.gather_by_index(np.zeros(2), np.array([0]), 2)
    with pytest.raises(ValueError, match="one dimension"):
        distributed.all_gather_arrays(np.float64(1.0))  # type: ignore[arg-type]


@given(n=st.integers(0, 50), world=st.integers(1, 8))
def test_shards_are_disjoint_balanced_and_cover_everything(n: int, world: int) -> None:
    shards = [list(distributed.shard(n, rank_=r, world=world)) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    items = [f"chunk{i}" for i in range(n)]
    assert sorted(
        x for r in range(world) for x in distributed.shard_items(items, rank_=r, world=world)
    ) == sorted(items)


def test_shard_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="outside"):
        distributed.shard(4, rank_=2, world=2)


# ---------------------------------------------------------------- collectives on 2 gloo ranks


def _collectives_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: join through process_group() from torchrun-style env vars, run each helper."""
    import torch

    torch.set_num_threads(1)
    env = {
        "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip
    os.environ.update(env)
    report: dict[str, Any] = {}
    with distributed.process_group("cpu", timeout_s=60) as placement:
        assert placement is not None
        report["backend"] = torch.distributed.get_backend()
        report["rank_world"] = [distributed.rank(), distributed.world_size()]
        # Variable lengths: rank 0 has 3 rows, rank 1 has none.
        mine = np.arange(6, dtype=np.float32).reshape(3, 2) if rank == 0 else np.zeros((0, 2))
        mine = mine.astype(np.float32)
        report["gathered"] = [a.tolist() for a in distributed.all_gather_arrays(mine)]
        # A DistributedSampler-like split of 5 items: rank 1 pads with a repeat of item 0.
        positions = np.array([0, 2, 4]) if rank == 0 else np.array([1, 3, 0])
        values = positions * 10.0
        report["by_index"] = distributed.gather_by_index(values, positions, 5).tolist()
        report["sum"] = distributed.all_reduce_sum([rank + 1.0])
        report["broadcast"] = distributed.broadcast_object(f"from {rank}")
        report["on_main"] = distributed.on_main(lambda: f"computed by {rank}")

        def fail_on_main() -> None:
            raise XrayError("store is locked")

        try:
            distributed.on_main(fail_on_main)
        except XrayError as exc:
            report["on_main_error"] = str(exc)

        def fail_on_rank_1() -> int:
            if rank == 1:
                raise XrayError("bad image on shard 1")
            return rank

        try:
            distributed.everywhere(fail_on_rank_1)
        except XrayError as exc:
            report["everywhere_error"] = str(exc)
        layer = torch.nn.BatchNorm1d(2)
        layer.running_mean.fill_(float(rank))
        distributed.sync_buffers(layer)
        report["synced_mean"] = layer.running_mean.tolist()
    report["after"] = distributed.active()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_collectives_on_two_gloo_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned ranks
    try:
        mp.spawn(_collectives_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    finally:
        if old is not None:
            os.environ["OMP_NUM_THREADS"] = old
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, report in enumerate(reports):
        assert report["backend"] == "gloo"
        assert report["rank_world"] == [rank, 2]
        assert report["gathered"] == [[[0, 1], [2, 3], [4, 5]], []]
        assert report["by_index"] == [0, 10, 20, 30, 40]  # the padded repeat counted once
        assert report["sum"] == [3.0]
        assert report["broadcast"] == "from 0"
        assert report["on_main"] == "computed by 0"
        assert report["on_main_error"] == "store is locked"  # raised on both ranks
        assert report["everywhere_error"] == "bad image on shard 1"
        assert report["synced_mean"] == [0.0, 0.0]
        assert report["after"] is False  # the group is torn down on exit


# ---------------------------------------------------------------- sharded extraction


def read_store(path: Path) -> dict[str, Any]:
    """Every split's arrays of a store, as plain values, plus its completeness flag."""
    from featurestore.store import open_store

    store = open_store(path)
    return {"complete": store.attrs["complete"], **{s: store.split(s) for s in store.counts}}


def assert_same_store(sharded: Path, single: Path) -> None:
    """Same splits, keys, groups, labels in the same order; features equal to float16 precision."""
    a, b = read_store(sharded), read_store(single)
    assert a.keys() == b.keys() and a["complete"] and b["complete"]
    for split in ("train", "val", "test"):
        assert a[split].keys == b[split].keys
        assert a[split].groups == b[split].groups
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
        np.testing.assert_allclose(a[split].features, b[split].features, rtol=1e-3, atol=1e-4)


EXTRACT = ["extract", "--model", "resnet18", "--weights", "none", "--image-size", "32",
           "--workers", "0", "--device", "cpu", "--data", "chest_xray", "--json",
           "--precision", "fp32"]  # fmt: skip


@pytest.fixture(scope="module")
def single_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset extracted by one process (the reference)."""
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    root = tmp_path_factory.mktemp("single")
    data = write_tiny_dataset(root / "chest_xray")
    result = extract_features(
        load_manifest(data), model="resnet18", weights="none", cache_dir=root / "cache",
        image_size=32, workers=0, device="cpu", precision="fp32",
    )  # fmt: skip
    return result.path


@pytest.mark.slow
def test_sharded_extraction_equals_single_process(tmp_path: Path, single_store: Path) -> None:
    write_tiny_dataset(tmp_path / "chest_xray")
    done = torchrun([*EXTRACT, "--cache", "cache"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # rank 0 alone prints: exactly one JSON document
    (row,) = doc["rows"]
    assert row["status"] == "built"
    store = tmp_path / row["store"]
    assert_same_store(store, single_store)
    assert not Path(f"{store}.partial").exists()  # chunks joined and cleaned up


@pytest.mark.slow
def test_sharded_extraction_stops_on_any_rank_then_resumes(
    tmp_path: Path, single_store: Path
) -> None:
    data = write_tiny_dataset(tmp_path / "chest_xray")
    # Pending chunks [train, val, test] go to ranks [0, 1, 0]: break a test image, so rank 0
    # fails after its train chunk while rank 1 finishes the val chunk.
    bad = sorted((data / "test" / "NORMAL").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    failed = torchrun([*EXTRACT, "--cache", "cache"], tmp_path)
    assert failed.returncode != 0
    assert failed.stderr.count("error: ") == 1  # one line, from rank 0, not one per rank
    assert "--skip-bad" in failed.stderr
    (partial,) = (tmp_path / "cache").glob("chest_xray-*/resnet18-none-32px.h5.partial")
    done = sorted(p.name for p in partial.glob("*.npz"))
    assert done == ["train-00000000.npz", "val-00000000.npz"]  # both ranks' finished chunks
    # Same dataset, so the next run resumes: only the test chunk is left, now for rank 0.
    resumed = torchrun([*EXTRACT, "--cache", "cache", "--skip-bad"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    doc = json.loads(resumed.stdout)
    (row,) = doc["rows"]
    assert row["status"] == "resumed"
    assert doc["reason"] == "2 of 3 chunks already done"
    bad_key = str(bad.relative_to(data))
    assert doc["skipped_keys"] == [bad_key]
    got, want = read_store(tmp_path / row["store"]), read_store(single_store)
    for split in ("train", "val", "test"):
        keep = [i for i, k in enumerate(want[split].keys) if k != bad_key]
        assert got[split].keys == [want[split].keys[i] for i in keep]
        np.testing.assert_array_equal(got[split].labels, want[split].labels[keep])
        np.testing.assert_allclose(
            got[split].features, want[split].features[keep], rtol=1e-3, atol=1e-4
        )


# ---------------------------------------------------------------- DDP fine-tuning

# Frozen trunk (its BatchNorm in eval mode), no augmentation, unweighted loss and one full batch
# per epoch: the DDP gradient (mean of the two ranks' means over 9 images each) equals the
# single-process gradient over 18, so both runs must agree to float rounding: in float32
# (bf16, the default on CPUs that compute it, rounds batches of 9 and of 18 differently).
FINETUNE = ["finetune", "--model", "resnet18", "--weights", "none", "--image-size", "32",
            "--freeze", "head-only", "--no-augment", "--class-weight", "none", "--lr", "0.05",
            "--epochs", "2", "--patience", "5", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--data", "chest_xray", "--runs", "runs",
            "--json"]  # fmt: skip


def run_folders(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if not p.name.startswith("."))


def predictions(run: Path) -> list[dict[str, str]]:
    with (run / "predictions.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_ddp_finetune_matches_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    for folder in (single_dir, ddp_dir):
        write_tiny_dataset(folder / "chest_xray")
    monkeypatch.chdir(single_dir)
    single = CliRunner().invoke(app, [*FINETUNE, "--batch-size", "18"])
    assert single.exit_code == 0, single.output
    done = torchrun([*FINETUNE, "--batch-size", "9"], ddp_dir)  # per rank: 2 x 9 = 18
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(done.stdout)["runs"]) == 1  # rank 0 alone reports
    (run,) = run_folders(ddp_dir / "runs")  # exactly one run folder
    (ref,) = run_folders(single_dir / "runs")
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 9
    assert not (ddp_dir / "runs" / ".inprogress").exists() or not any(
        (ddp_dir / "runs" / ".inprogress").iterdir()
    )
    # Every val and test image exactly once, in manifest order, as in the single-process run.
    got, want = predictions(run), predictions(ref)
    assert [(r["split"], r["key"]) for r in got] == [(r["split"], r["key"]) for r in want]
    assert len({(r["split"], r["key"]) for r in got}) == len(got)
    np.testing.assert_allclose(
        [float(r["probability"]) for r in got], [float(r["probability"]) for r in want], atol=1e-5
    )
    metrics, ref_metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, ref))
    assert metrics["best_epoch"] == ref_metrics["best_epoch"]
    assert metrics["threshold"]["value"] == pytest.approx(
        ref_metrics["threshold"]["value"], abs=1e-5
    )
    for split in ("val", "test"):
        for at in ("at_0.5", "at_threshold"):
            mine, theirs = metrics[split][at], ref_metrics[split][at]
            assert mine["n"] == theirs["n"]
            assert mine["confusion_matrix"] == theirs["confusion_matrix"]
            for key in ("loss", "accuracy", "roc_auc", "brier"):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-5), (split, at, key)
    with (run / "history.csv").open() as fh, (ref / "history.csv").open() as gh:
        for a, b in zip(csv.DictReader(fh), csv.DictReader(gh), strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc"):
                assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key
