"""A feature store damaged on disk (issue #27): cut at half its size, or bytes overwritten in
its features. `fit-head` names the store and how to rebuild it in one line; `extract` rebuilds
it. Binary, multi-class and multi-label stores alike."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_tiny_dataset, write_tiny_kermany3, write_tiny_multilabel
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.store import open_store

runner = CliRunner()
TINY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0"]
TASKS = {
    "binary": (write_tiny_dataset, []),
    "multiclass": (write_tiny_kermany3, ["--labels", "kermany3"]),
    "multilabel": (write_tiny_multilabel, []),
}


def _extract(data: Path, cache: Path, labels: list[str]) -> str:
    result = runner.invoke(
        app, ["extract", "--data", str(data), "--cache", str(cache), *TINY, *labels, "--json"]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(params=list(TASKS))
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    write, labels = TASKS[request.param]
    data = write(tmp_path / "data")
    cache = tmp_path / "cache"
    _extract(data, cache, labels)
    (store,) = cache.rglob("*.h5")
    return {"data": data, "cache": cache, "labels": labels, "store": store, "runs": tmp_path / "r"}


def _one_error_line(result: object, *fragments: str) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _cut_in_half(store: Path) -> None:
    os.truncate(store, store.stat().st_size // 2)


def _overwrite_features(store: Path) -> None:
    """Change 16 bytes in the middle of train/features' rows: the file's structure stays
    intact, only numbers change (what a bad disk sector or a stray write leaves)."""
    with h5py.File(store, "r") as fh:
        ds = fh["train/features"]
        middle = ds.shape[0] // 2
        info = ds.id.get_chunk_info(middle // ds.chunks[0])
        row_bytes = ds.shape[1] * ds.dtype.itemsize
        offset = info.byte_offset + (middle % ds.chunks[0]) * row_bytes + row_bytes // 2
    with store.open("r+b") as fh:
        fh.seek(offset)
        old = fh.read(16)
        fh.seek(offset)
        # Not `^ 0xFF`: fletcher32 sums 16-bit words mod 65535, so 0x0000 and 0xFFFF look alike.
        fh.write(bytes(b ^ 0x5A for b in old))


def _features(store: Path) -> np.ndarray:
    return open_store(store).split("train").features


def test_fit_head_names_a_truncated_store_and_extract_rebuilds_it(
    store_env: dict[str, object],
) -> None:
    store, cache = Path(str(store_env["store"])), str(store_env["cache"])
    before = _features(store)
    _cut_in_half(store)
    # Bare fit-head used to skip the file and say "no complete feature store".
    result = runner.invoke(app, ["fit-head", "--cache", cache, "--runs", str(store_env["runs"])])
    line = _one_error_line(result, str(store), "is damaged", "xray extract", "--model")
    assert "no complete feature store" not in line
    out = _extract(Path(str(store_env["data"])), Path(cache), list(store_env["labels"]))  # type: ignore[call-overload]
    assert '"status": "rebuilt"' in out and "damaged" in out
    np.testing.assert_array_equal(_features(store), before)  # same features again


def test_bytes_overwritten_in_the_features_are_caught_and_rebuilt(
    store_env: dict[str, object],
) -> None:
    store = Path(str(store_env["store"]))
    before = _features(store)
    _overwrite_features(store)
    # Without a checksum this trained on wrong features and exited 0.
    result = runner.invoke(
        app,
        ["fit-head", "--store", str(store), "--runs", str(store_env["runs"]), "--epochs", "1"],
    )
    _one_error_line(result, str(store), "is damaged", "xray extract")
    assert not Path(str(store_env["runs"])).exists() or not any(
        Path(str(store_env["runs"])).iterdir()
    )
    # extract used to reuse it as "up to date"; now it verifies the checksums and rebuilds.
    out = _extract(Path(str(store_env["data"])), Path(str(store_env["cache"])),
                   list(store_env["labels"]))  # type: ignore[call-overload]  # fmt: skip
    assert '"status": "rebuilt"' in out, out
    np.testing.assert_array_equal(_features(store), before)
    open_store(store, verify=True)  # every chunk passes its checksum
