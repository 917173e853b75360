"""Determinism on CPU: the same seed gives bit-identical stores and identical metrics.json."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

torch.set_num_threads(1)
runner = CliRunner()
TINY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def extract(data: Path, cache: Path, *extra: str) -> Path:
    result = runner.invoke(app, ["extract", "--data", str(data), "--cache", str(cache), *TINY,
                                 *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    (store,) = cache.rglob("*.h5")
    return store


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fh:
        fh.visititems(
            lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
        )
    return out


def test_same_data_elsewhere_gives_bit_identical_store_datasets(tmp_path: Path) -> None:
    """Two extractions (different dataset folders, caches and worker counts) agree bit for bit."""
    a = write_tiny_dataset(tmp_path / "one" / "chest_xray")
    b = tmp_path / "two" / "chest_xray"
    shutil.copytree(a, b)
    store_a = extract(a, tmp_path / "cache_a", "--workers", "0", "--dtype", "float32")
    store_b = extract(b, tmp_path / "cache_b", "--workers", "1", "--dtype", "float32")
    da, db = datasets(store_a), datasets(store_b)
    assert sorted(da) == sorted(db) and len(da) == 12
    for name in da:
        assert da[name].dtype == db[name].dtype and np.array_equal(da[name], db[name]), name
    with h5py.File(store_a, "r") as fa, h5py.File(store_b, "r") as fb:
        assert fa.attrs["dataset_fingerprint"] == fb.attrs["dataset_fingerprint"]
        assert fa.attrs["dataset_root"] != fb.attrs["dataset_root"]  # really two places


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    data = write_tiny_dataset(root / "chest_xray")
    return extract(data, root / "cache", "--workers", "0")


def fit_head(store: Path, runs: Path, seed: int) -> Path:
    args = ["--head", "mlp", "--epochs", "4", "--seed", str(seed)]
    result = runner.invoke(app, ["fit-head", "--store", str(store), "--runs", str(runs), *args])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    return run


def assert_same_run_outputs(a: Path, b: Path) -> None:
    for name in ("metrics.json", "predictions.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa = torch.load(a / "best.pt", weights_only=True)
    sb = torch.load(b / "best.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_head_same_seed_same_metrics_json_other_seed_differs(
    store: Path, tmp_path: Path
) -> None:
    first = fit_head(store, tmp_path / "a", seed=3)
    second = fit_head(store, tmp_path / "b", seed=3)
    assert_same_run_outputs(first, second)
    other = fit_head(store, tmp_path / "c", seed=4)
    assert (other / "predictions.csv").read_bytes() != (first / "predictions.csv").read_bytes()


@pytest.mark.slow
def test_finetune_one_epoch_same_seed_same_metrics_json_workers_0_or_1(
    tiny_data_ro: Path, tmp_path: Path
) -> None:
    runs = []
    # Augmentation is seeded per (seed, epoch, image), so the worker count must not matter.
    for name, workers in (("a", "0"), ("b", "1")):
        out = tmp_path / name
        result = runner.invoke(app, ["finetune", "--data", str(tiny_data_ro), "--runs", str(out),
                                     "--epochs", "1", "--device", "cpu", "--workers", workers,
                                     "--seed", "5", *TINY])  # fmt: skip
        assert result.exit_code == 0, result.output
        (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]
        runs.append(run)
    assert_same_run_outputs(*runs)
