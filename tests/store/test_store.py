"""HDF5 feature store: chunked writer, assembly, reader refusals, find_stores, lock."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featurestore.data import Record
from featurestore.errors import XrayError
from featurestore.store import (
    FORMAT_VERSION,
    PROVENANCE_KEYS,
    PartialStore,
    StoreDamagedError,
    StoreInUseError,
    find_stores,
    open_store,
    provenance_difference,
    read_attrs,
    store_lock,
    store_path,
    verify_store,
)

D = 6


def _records(split: str, n: int) -> list[Record]:
    return [
        Record(f"{split}/C{i % 2}/img{i:03d}.png", i % 2, split, f"p{i // 2}", split)  # type: ignore[arg-type]
        for i in range(n)
    ]


def _provenance(**changes: Any) -> dict[str, Any]:
    base = {
        "format_version": FORMAT_VERSION,
        "backbone": "resnet18",
        "weights_id": "none",
        "weights_sha256": None,
        "preprocessing": {"resize": 37, "crop": 32},
        "image_size": 32,
        "precision": "fp32",
        "dtype": "float16",
        "dataset_fingerprint": "ab" * 32,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "positive_index": 1,
        "carve": {"seed": 0, "fraction": 0.1},
    }
    return {**base, **changes}


def _build(path: Path, *, counts: dict[str, int] | None = None, chunk: int = 4) -> np.ndarray:
    """Write a store through PartialStore chunk by chunk; returns the train features written."""
    counts = counts or {"train": 10, "val": 3, "test": 0}
    records = {s: _records(s, n) for s, n in counts.items()}
    partial = PartialStore(path)
    partial.start({**_provenance(), "chunk_size": chunk})
    rng = np.random.default_rng(0)
    written = {}
    for split, recs in records.items():
        feats = rng.normal(size=(len(recs), D)).astype(np.float16)
        written[split] = feats
        for start in range(0, len(recs), chunk):
            stop = min(start + chunk, len(recs))
            partial.write_chunk(
                split,  # type: ignore[arg-type]
                start,
                features=feats[start:stop],
                labels=np.array([r.label for r in recs[start:stop]]),
                indices=np.arange(start, stop),
                skipped=["train/bad.png"] if (split, start) == ("train", 4) else [],
                seconds=0.5,
            )
    plan = {s: list(range(0, len(r), chunk)) for s, r in records.items()}
    attrs = {**_provenance(), "dataset_root": "/data", "versions": {"torch": "x"}}
    partial.assemble(attrs, plan, records, feature_dim=D, dtype="float16", chunk_rows=chunk)  # type: ignore[arg-type]
    return written["train"]


def test_store_path_naming(tmp_path: Path) -> None:
    assert store_path(tmp_path, "chest_xray", "densenet121", "imagenet", 224) == (
        tmp_path / "chest_xray" / "densenet121-imagenet-224px.h5"
    )


def test_roundtrip_layout_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "ds" / "resnet18-none-32px.h5"
    path.parent.mkdir()
    train = _build(path)
    assert not Path(f"{path}.partial").exists() and not Path(f"{path}.tmp").exists()
    # Plain h5py sees the documented layout: chunked along N, resizable, float16.
    with h5py.File(path, "r") as fh:
        feats = fh["train/features"]
        assert feats.shape == (10, D) and feats.dtype == np.float16
        assert feats.chunks == (4, D) and feats.maxshape == (None, D)
        assert fh["train/labels"].dtype == np.int64
        assert fh["test/features"].shape == (0, D)
        assert bool(fh.attrs["complete"]) is True
        assert json.loads(fh.attrs["class_names"]) == ["NORMAL", "PNEUMONIA"]
    store = open_store(path, expect_fingerprint="ab" * 32)
    assert store.counts == {"train": 10, "val": 3, "test": 0}
    assert (store.backbone, store.weights_id, store.feature_dim) == ("resnet18", "none", D)
    assert store.class_names == ("NORMAL", "PNEUMONIA") and store.positive_index == 1
    assert store.attrs["skipped"] == ["train/bad.png"]
    assert store.attrs["extraction_seconds"] == pytest.approx(0.5 * 4)  # 3 train + 1 val chunks
    assert store.attrs["weights_sha256"] is None and store.attrs["carve"]["seed"] == 0
    json.dumps(store.attrs)  # plain Python values, ready for a run's config.json
    arrays = store.split("train")
    assert arrays.features.dtype == np.float32
    np.testing.assert_array_equal(arrays.features, train.astype(np.float32))
    assert arrays.labels.tolist() == [i % 2 for i in range(10)]
    assert arrays.keys == [r.key for r in _records("train", 10)]
    assert arrays.groups[:3] == ["p0", "p0", "p1"]
    assert store.split("test").features.shape == (0, D)
    with pytest.raises(XrayError, match="no split 'holdout'"):
        store.split("holdout")


def test_reader_refusals(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(XrayError, match=r"no feature store .*run `xray extract`"):
        open_store(path)
    _build(path)
    with pytest.raises(XrayError, match=r"no longer matches the dataset \(fingerprint abab"):
        open_store(path, expect_fingerprint="cd" * 32)
    with h5py.File(path, "r+") as fh:
        fh.attrs["format_version"] = 99
    with pytest.raises(XrayError, match="format version 99"):
        open_store(path)
    with h5py.File(path, "r+") as fh:
        fh.attrs["format_version"] = FORMAT_VERSION
        fh.attrs["complete"] = False
    with pytest.raises(XrayError, match="incomplete"):
        open_store(path)


def test_truncated_and_garbage_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _build(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XrayError, match="unreadable, truncated or corrupt"):
        open_store(path)
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(XrayError, match="delete it and run"):
        open_store(path)


def test_find_stores_lists_complete_stores_only(tmp_path: Path) -> None:
    good = tmp_path / "a" / "deep" / "good.h5"
    good.parent.mkdir(parents=True)
    _build(good)
    unfinished = tmp_path / "a" / "unfinished.h5"
    _build(unfinished)
    with h5py.File(unfinished, "r+") as fh:
        fh.attrs["complete"] = False
    (tmp_path / "b.h5.tmp").write_bytes(b"in progress")
    assert find_stores(tmp_path) == [good]
    assert find_stores(tmp_path / "missing") == []


@pytest.mark.parametrize("damage", ["garbage", "cut in half"])
def test_find_stores_names_a_damaged_store_instead_of_passing_it_over(
    tmp_path: Path, damage: str
) -> None:
    """Issue #27: a damaged store was skipped, so fit-head said "no complete feature store"."""
    _build(tmp_path / "good.h5")
    bad = tmp_path / "bad.h5"
    if damage == "garbage":
        bad.write_bytes(b"nope")
    else:
        _build(bad)
        os.truncate(bad, bad.stat().st_size // 2)
    with pytest.raises(StoreDamagedError, match="is damaged") as info:
        find_stores(tmp_path)
    assert info.value.path == bad and "xray extract" in str(info.value)
    assert "\n" not in str(info.value)


def _flip_feature_bytes(path: Path, split: str = "train") -> None:
    with h5py.File(path, "r") as fh:
        ds = fh[f"{split}/features"]
        offset = ds.id.get_chunk_info(1).byte_offset + 3  # inside the second chunk's rows
    with path.open("r+b") as fh:
        fh.seek(offset)
        old = fh.read(4)
        fh.seek(offset)
        fh.write(bytes(b ^ 0x5A for b in old))


def test_bytes_overwritten_in_features_fail_their_checksum(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _build(path)
    with h5py.File(path, "r") as fh:
        assert all(
            fh[f"{s}/{n}"].fletcher32 for s in ("train", "val") for n in ("features", "labels")
        )
    _flip_feature_bytes(path)
    store = open_store(path)  # the attributes and shapes are intact
    with pytest.raises(StoreDamagedError, match="is damaged"):
        store.split("train")
    with pytest.raises(StoreDamagedError):
        open_store(path, verify=True)
    with pytest.raises(StoreDamagedError):
        verify_store(path)
    assert store.split("val").features.shape == (3, D)  # other chunks still read


def test_a_damaged_store_error_survives_pickling(tmp_path: Path) -> None:
    """torchrun ranks send their errors to rank 0 pickled."""
    error = pickle.loads(pickle.dumps(StoreDamagedError(tmp_path / "s.h5", "truncated file")))
    assert isinstance(error, StoreDamagedError) and error.reason == "truncated file"
    assert str(error).startswith(f"store {tmp_path / 's.h5'} is damaged")


def test_provenance_difference_says_what_changed() -> None:
    old = _provenance()
    assert provenance_difference(old, _provenance()) is None
    assert provenance_difference(old, _provenance(dataset_fingerprint="cd" * 32)) == (
        "dataset changed (fingerprint abababababab.. -> cdcdcdcdcdcd..)"
    )
    assert provenance_difference(old, _provenance(weights_id="IMAGENET1K_V1")) == (
        "weights changed (none -> IMAGENET1K_V1)"
    )
    assert provenance_difference(old, _provenance(dtype="float32")) == (
        "dtype changed (float16 -> float32)"
    )
    assert provenance_difference(old, _provenance(image_size=64)) == "preprocessing changed"
    assert provenance_difference(old, _provenance(precision="bf16")) == (
        "precision changed (fp32 -> bf16)"
    )
    assert provenance_difference(old, _provenance(carve=None)) == "validation carve changed"
    # A file's hash matters; ImageNet weights are identified by their versioned enum name.
    file_old = _provenance(weights_id="file:w.pt", weights_sha256="1" * 64)
    file_new = _provenance(weights_id="file:w.pt", weights_sha256="2" * 64)
    assert provenance_difference(file_old, file_new) == (
        "weights changed (111111111111.. -> 222222222222..)"
    )
    net = _provenance(weights_id="IMAGENET1K_V1", weights_sha256="3" * 64)
    assert provenance_difference(net, {**net, "weights_sha256": None}) is None


@pytest.mark.parametrize("key", [*PROVENANCE_KEYS, "chunk_size"])
def test_every_provenance_key_changed_alone_is_a_difference(key: str) -> None:
    """Each key alone (a file's weights, so that its sha256 counts) is named as a change."""
    old = _provenance(weights_id="file:w.pt", weights_sha256="1" * 64, chunk_size=4, pooling="avg")
    assert set(old) == {*PROVENANCE_KEYS, "chunk_size"}
    new = {**old, key: "something else"}
    diff = provenance_difference(old, new)
    assert diff is not None and "changed" in diff
    assert provenance_difference(old, dict(old)) is None


def test_partial_chunks_survive_and_are_atomic(tmp_path: Path) -> None:
    partial = PartialStore(tmp_path / "s.h5")
    assert partial.provenance() is None and not partial.exists()
    partial.start(_provenance(chunk_size=4))
    assert partial.provenance() == _provenance(chunk_size=4)
    partial.write_chunk(
        "train",
        8,
        features=np.ones((2, D), np.float16),
        labels=np.array([0, 1]),
        indices=np.array([8, 9]),
        skipped=[],
        seconds=1.0,
    )
    assert partial.done("train", 8) and not partial.done("train", 0)
    assert sorted(p.name for p in partial.folder.iterdir()) == [
        "provenance.json",
        "train-00000008.npz",
    ]  # no temporary files left behind
    assert partial.read_chunk("train", 8)["indices"].tolist() == [8, 9]
    partial.chunk_path("train", 8).write_bytes(b"torn")
    with pytest.raises(XrayError, match=r"progress file .* is unreadable"):
        partial.read_chunk("train", 8)
    partial.discard()
    assert not partial.exists()


def test_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    path = tmp_path / "c" / "s.h5"
    with (
        store_lock(path),
        pytest.raises(XrayError, match="another extraction is writing"),
        store_lock(path),
    ):
        pass
    with store_lock(path):  # released after the first writer is done
        assert Path(f"{path}.lock").is_file()
    # Issue 14.8: no stale zero-byte lock file left behind once the writer is done.
    assert not Path(f"{path}.lock").exists()
    assert [p.name for p in path.parent.iterdir()] == []


def test_read_attrs_decodes_json(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _build(path)
    attrs = read_attrs(path)
    assert attrs["preprocessing"] == {"resize": 37, "crop": 32}
    assert attrs["versions"] == {"torch": "x"} and attrs["complete"] is True


# --- #13 item 13: a locked store is in use, not corrupt -------------------------------------


def _held_for_writing(path: Path) -> Any:
    """What HDF5 does for a writer in another process: an exclusive flock on the file."""
    import fcntl

    handle = path.open("rb")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


@pytest.mark.parametrize("reader", ["read_attrs", "open_store", "split", "find_stores"])
def test_a_store_held_open_for_writing_is_in_use_not_corrupt(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "c" / "s.h5"
    _build(path)
    store = open_store(path)
    before = path.read_bytes()
    calls = {
        "read_attrs": lambda: read_attrs(path),
        "open_store": lambda: open_store(path),
        "split": lambda: store.split("train"),
        "find_stores": lambda: find_stores(tmp_path / "c"),
    }
    with _held_for_writing(path), pytest.raises(StoreInUseError) as info:
        calls[reader]()
    message = str(info.value)
    assert "in use" in message and "not damaged" in message and "\n" not in message
    assert "delete" not in message and "corrupt" not in message
    assert path.read_bytes() == before
    assert open_store(path).split("train").features.shape == (10, D)  # intact once released


def test_a_filesystem_without_locks_is_named_never_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.h5"
    _build(path)

    def no_locks(*args: Any, **kwargs: Any) -> Any:
        raise OSError(
            38,
            "Unable to synchronously open file (unable to lock file, errno = 38, error "
            "message = 'Function not implemented')",
        )

    monkeypatch.setattr(h5py, "File", no_locks)
    for call in (lambda: read_attrs(path), lambda: open_store(path)):
        with pytest.raises(StoreInUseError, match="does not support file locks") as info:
            call()
        assert "HDF5_USE_FILE_LOCKING=FALSE" in str(info.value)
        assert "delete" not in str(info.value)
    # Writing a new store on such a filesystem says the same, not a traceback.
    with pytest.raises(StoreInUseError, match="does not support file locks"):
        _build(tmp_path / "other.h5")


def test_a_lock_the_filesystem_refuses_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def refuse(*args: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with (
        pytest.raises(XrayError, match=r"does not support file locks.*No locks available"),
        store_lock(tmp_path / "s.h5"),
    ):
        pass


def test_a_cache_folder_without_write_permission_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # as in a read-only cache folder (even as root)
    with (
        pytest.raises(XrayError, match=r"no permission to write .*s\.h5\.lock.*--cache"),
        store_lock(tmp_path / "sub" / "s.h5"),
    ):
        pass


def test_unreadable_permissions_are_not_called_corrupt(tmp_path: Path) -> None:
    import os

    path = tmp_path / "s.h5"
    _build(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user that reads any file (root)")
        with pytest.raises(XrayError, match="no permission to read") as info:
            read_attrs(path)
        assert "delete" not in str(info.value)
    finally:
        path.chmod(0o644)
