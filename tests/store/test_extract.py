"""extract_features: build, reuse, rebuild with a reason, resume after a crash, bad images, lock."""

from __future__ import annotations

import json
import os
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

from featurestore.data import Manifest, dataset_fingerprint, load_manifest
from featurestore.errors import XrayError
from featurestore.models import backbones
from featurestore.store import (
    FORMAT_VERSION,
    JSON_ATTRS,
    PROVENANCE_KEYS,
    ExtractResult,
    PartialStore,
    dataset_folder,
    extract_features,
    open_store,
    read_attrs,
    store_lock,
    store_path,
)

torch.set_num_threads(1)

FAST: dict[str, Any] = {
    "precision": "fp32",  # the same store name on every CPU (auto is bf16 on some)
    "model": "resnet18",
    "weights": "none",
    "image_size": 32,
    "workers": 0,
    "batch_size": 4,
    "chunk_size": 4,
}


def _extract(m: Manifest, cache: Path, **kw: Any) -> ExtractResult:
    return extract_features(m, cache_dir=cache, **{**FAST, **kw})


def _rows(path: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    store = open_store(path)
    return {s: (store.split(s).features, store.split(s).keys) for s in store.counts}


def _assert_same_rows(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert rows_a.keys() == rows_b.keys()
    for split in rows_a:
        np.testing.assert_array_equal(rows_a[split][0], rows_b[split][0])
        assert rows_a[split][1] == rows_b[split][1]


def _corrupt(path: Path) -> bytes:
    """Truncate a JPEG mid-stream; returns the original bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return data


@pytest.fixture(scope="module")
def reference(tiny_data_ro: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtractResult:
    """One uninterrupted extraction of the tiny dataset (same content as `tiny_data`)."""
    return _extract(load_manifest(tiny_data_ro), tmp_path_factory.mktemp("ref_cache"))


def test_build_writes_the_documented_store(tiny_data_ro: Path, reference: ExtractResult) -> None:
    m = load_manifest(tiny_data_ro)
    assert reference.status == "built" and reference.skipped == []
    assert reference.path.name == "resnet18-none-32px.h5"
    assert m.name == "chest_xray"
    assert reference.path.parent.name == dataset_folder("chest_xray", tiny_data_ro)
    assert reference.counts == {s: len(m.split(s)) for s in ("train", "val", "test")}
    assert reference.feature_dim == 512 and (reference.images_per_second or 0) > 0
    store = open_store(reference.path, expect_fingerprint=dataset_fingerprint(m))
    attrs = store.attrs
    assert attrs["carve"] == m.carve.as_dict()  # type: ignore[union-attr]
    assert attrs["weights_id"] == "none" and attrs["dtype"] == "float16"
    assert attrs["preprocessing"] == backbones.preprocessing_for("resnet18", "none", 32).as_dict()
    assert attrs["dataset_root"] == str(tiny_data_ro.resolve())
    assert set(attrs["versions"]) >= {"torch", "torchvision", "h5py", "xray"}
    assert attrs["extraction_seconds"] > 0
    for split in ("train", "val", "test"):
        arrays = store.split(split)
        records = m.split(split)
        assert arrays.keys == [r.key for r in records]  # manifest order, deterministic rows
        assert arrays.groups == [r.group for r in records]
        assert arrays.labels.tolist() == [r.label for r in records]
        assert arrays.features.shape == (len(records), 512)
        assert np.isfinite(arrays.features).all() and arrays.features.std() > 0
    with h5py.File(reference.path, "r") as fh:
        assert fh["train/features"].dtype == np.float16


def test_reuse_runs_no_model(
    tiny_data_ro: Path, reference: ExtractResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("an up-to-date store must be reused without building a backbone")

    monkeypatch.setattr(backbones, "load_backbone", no_model)
    before = reference.path.stat().st_mtime_ns
    again = _extract(load_manifest(tiny_data_ro), reference.path.parents[1])
    assert again.status == "reused" and again.images_per_second is None
    assert again.counts == reference.counts
    assert reference.path.stat().st_mtime_ns == before


def test_extract_records_every_provenance_key_from_its_inputs(
    tiny_data_ro: Path, reference: ExtractResult
) -> None:
    """What extract hands the provenance check: each key computed from the call's own inputs."""
    m = load_manifest(tiny_data_ro)
    expected = {
        "format_version": FORMAT_VERSION,
        "backbone": "resnet18",
        "weights_id": "none",
        "weights_sha256": None,
        "preprocessing": backbones.preprocessing_for("resnet18", "none", 32).as_dict(),
        "image_size": 32,
        "precision": "fp32",  # FAST pins it (auto is bf16 on CPUs with native bf16)
        "dtype": "float16",
        "dataset_fingerprint": dataset_fingerprint(m),
        "class_names": list(m.class_names),
        "positive_index": m.positive_index,
        "carve": m.carve.as_dict(),  # type: ignore[union-attr]
    }
    # A new key needs its expected value here; pooling is recorded for provider backbones only.
    assert set(expected) == set(PROVENANCE_KEYS) - {"pooling"}
    attrs = read_attrs(reference.path)
    assert {k: attrs[k] for k in expected} == expected
    assert "pooling" not in attrs


@pytest.fixture(scope="module")
def file_weights_store(
    tiny_data_ro: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExtractResult:
    """A store extracted with a weights file (its sha256 then identifies the weights)."""
    folder = tmp_path_factory.mktemp("weights_file")
    torch.manual_seed(0)
    weights = folder / "trunk.pt"
    torch.save(backbones.load_backbone("resnet18", "none").trunk.state_dict(), weights)
    return _extract(load_manifest(tiny_data_ro), folder / "cache", weights=str(weights))


def _changed(key: str, value: Any) -> Any:
    """Another value of the same kind, as h5py stores it."""
    if key in JSON_ATTRS:
        return json.dumps({"changed": json.loads(value)})
    if isinstance(value, (bytes, str)):
        return str(value if isinstance(value, str) else value.decode()) + "-changed"
    return value + 1


@pytest.mark.parametrize("key", [None, *PROVENANCE_KEYS])
def test_each_provenance_key_changed_alone_makes_the_store_stale(
    key: str | None,
    tiny_data_ro: Path,
    reference: ExtractResult,
    file_weights_store: ExtractResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store whose recorded `key` differs from what extract computes now is rebuilt, not
    reused (None: nothing changed, reused). The weights' sha256 identifies file weights only."""
    base = file_weights_store if key == "weights_sha256" else reference
    cache = tmp_path / "cache"
    path = cache / base.path.relative_to(base.path.parents[1])
    path.parent.mkdir(parents=True)
    path.write_bytes(base.path.read_bytes())
    if key is not None:
        with h5py.File(path, "r+") as fh:
            if key not in fh.attrs:
                pytest.skip(f"a torchvision store records no {key} (provider backbones only)")
            fh.attrs[key] = _changed(key, fh.attrs[key])

    class Rebuilding(Exception):
        pass

    def no_model(*args: object, **kwargs: object) -> None:
        raise Rebuilding  # the decision is made; computing the rows is not this test's business

    monkeypatch.setattr(backbones, "load_backbone", no_model)
    kw = {"weights": str(base.path.parents[2] / "trunk.pt")} if key == "weights_sha256" else {}
    notices: list[str] = []
    if key is None:
        assert _extract(load_manifest(tiny_data_ro), cache, **kw).status == "reused"
        return
    with pytest.raises(Rebuilding):
        _extract(load_manifest(tiny_data_ro), cache, notice=notices.append, **kw)
    assert len(notices) == 1 and notices[0].endswith(": rebuilding"), notices


def test_rows_do_not_depend_on_workers(
    tiny_data_ro: Path, reference: ExtractResult, tmp_path: Path
) -> None:
    # The random init is seeded, and a worker process decodes exactly what the main one does.
    other = _extract(load_manifest(tiny_data_ro), tmp_path, workers=1)
    _assert_same_rows(other.path, reference.path)


@pytest.mark.parametrize("overlap", [True, False])
def test_rows_do_not_depend_on_when_threads_decode(
    tiny_data_ro: Path,
    reference: ExtractResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overlap: bool,
) -> None:
    # Decoding beside the model (a core free) or between batches (torch holds every core):
    # the same batches, pixels and features, a bad image reported the same way.
    from featurestore.store import extract_loop

    monkeypatch.setattr(extract_loop, "decode_overlaps", lambda device: overlap)
    other = _extract(load_manifest(tiny_data_ro), tmp_path)
    _assert_same_rows(other.path, reference.path)


def test_decoding_between_batches_is_asked_for_batch_by_batch(tiny_data_ro: Path) -> None:
    # ahead=0: nothing is decoded before the consumer asks for the batch.
    from featurestore.models import preprocessing_for
    from featurestore.store import extract_loop

    m = load_manifest(tiny_data_ro)
    keys = [r.key for r in m.records]
    asked: list[str] = []
    real = extract_loop._pixels
    pre = preprocessing_for("resnet18", "none", 32)

    def pixels(manifest: Manifest, key: str, *args: Any) -> Any:
        asked.append(key)
        return real(manifest, key, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract_loop, "_pixels", pixels)
        batches = [[0, 1], [2, 3], [4]]
        gen = extract_loop.decoded_in_threads(m, keys, pre, batches, threads=2, ahead=0)
        got = []
        for positions, batch, errors in gen:
            assert len(asked) == positions[-1] + 1  # this batch, not the next
            got.append((positions, None if batch is None else tuple(batch.shape), errors))
    assert [g[0] for g in got] == batches
    assert got[0][1] == (2, 32, 32, 3) and all(not g[2] for g in got)


def test_changed_image_rebuilds_with_the_reason(tiny_data: Path, tmp_path: Path) -> None:
    first = _extract(load_manifest(tiny_data), tmp_path)
    image = tiny_data / load_manifest(tiny_data).split("test")[0].key
    image.write_bytes(image.read_bytes() + b"\0")  # one modified file
    changed = load_manifest(tiny_data)
    with pytest.raises(XrayError, match=r"no longer matches the dataset \(fingerprint"):
        open_store(first.path, expect_fingerprint=dataset_fingerprint(changed))
    notices: list[str] = []
    second = _extract(changed, tmp_path, notice=notices.append)
    assert second.status == "rebuilt"
    assert second.reason.startswith("dataset changed (fingerprint ")
    assert second.reason.endswith(": rebuilding")
    assert any("dataset changed" in n for n in notices)
    open_store(second.path, expect_fingerprint=dataset_fingerprint(changed))


def test_image_replaced_while_extracting_is_not_stored_as_the_old_content(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#27: a file replaced after the fingerprint was taken (here: once every chunk is
    computed) must not leave a store claiming the old content's fingerprint."""
    import featurestore.store.extract as extract_module

    manifest = load_manifest(tiny_data)
    image = tiny_data / manifest.split("train")[0].key
    real = extract_module.run_chunks

    def replacing(*args: Any, **kwargs: Any) -> float:
        rate = real(*args, **kwargs)
        replacement = image.with_suffix(".new")
        replacement.write_bytes((tiny_data / manifest.split("test")[0].key).read_bytes())
        os.replace(replacement, image)  # new inode and content, as a copy tool does
        return rate

    monkeypatch.setattr(extract_module, "run_chunks", replacing)
    with pytest.raises(XrayError, match="replaced while extracting"):
        _extract(manifest, tmp_path)
    assert not any(tmp_path.rglob("*.h5"))  # no store claims the old fingerprint
    monkeypatch.setattr(extract_module, "run_chunks", real)
    again = _extract(load_manifest(tiny_data), tmp_path)
    assert again.status == "rebuilt"  # the partial's chunks belonged to the old content
    open_store(again.path, expect_fingerprint=dataset_fingerprint(load_manifest(tiny_data)))


def test_other_dtype_rebuilds(tiny_data_ro: Path, tmp_path: Path) -> None:
    m = load_manifest(tiny_data_ro)
    _extract(m, tmp_path)
    wide = _extract(m, tmp_path, dtype="float32")
    assert (wide.status, wide.reason) == (
        "rebuilt",
        "dtype changed (float16 -> float32): rebuilding",
    )
    with h5py.File(wide.path, "r") as fh:
        assert fh["train/features"].dtype == np.float32


def test_precision_is_part_of_the_store_identity(
    tiny_data_ro: Path, reference: ExtractResult, tmp_path: Path
) -> None:
    """A bf16 extraction is another file and never reuses (or replaces) the fp32 store."""
    m = load_manifest(tiny_data_ro)
    cache = reference.path.parents[1]
    before = reference.path.stat().st_mtime_ns
    half = _extract(m, cache, precision="bf16")
    assert half.status == "built" and half.precision == "bf16"
    assert half.path.name == "resnet18-none-32px-bf16.h5" and half.path != reference.path
    assert reference.path.stat().st_mtime_ns == before  # the fp32 store is untouched
    assert open_store(half.path).precision == "bf16"
    assert open_store(reference.path).precision == "fp32"
    assert _extract(m, cache, precision="bf16").status == "reused"
    assert _extract(m, cache, precision="fp32").status == "reused"
    # The features differ (bf16 arithmetic) but agree closely row by row.
    a, b = _rows(reference.path), _rows(half.path)
    for split in a:
        fa, fb = a[split][0].astype(np.float64), b[split][0].astype(np.float64)
        assert not np.array_equal(fa, fb)
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
        assert cos.min() > 0.99


def test_store_of_unrecorded_precision_is_rebuilt(tiny_data_ro: Path, tmp_path: Path) -> None:
    """A store from before precision was recorded is not taken for an fp32 one."""
    m = load_manifest(tiny_data_ro)
    first = _extract(m, tmp_path)
    with h5py.File(first.path, "a") as fh:
        del fh.attrs["precision"]
    again = _extract(m, tmp_path)
    assert (again.status, again.reason) == (
        "rebuilt",
        "precision changed (unrecorded -> fp32): rebuilding",
    )


def test_bad_image_stops_keeping_progress_then_skip_bad_resumes(
    tiny_data: Path, tmp_path: Path, reference: ExtractResult
) -> None:
    m = load_manifest(tiny_data)
    bad_key = m.split("test")[-1].key
    _corrupt(tiny_data / bad_key)
    broken = load_manifest(tiny_data)
    with pytest.raises(XrayError, match=rf"{bad_key}.*--skip-bad"):
        _extract(broken, tmp_path)
    path = store_path(tmp_path, dataset_folder("chest_xray", tiny_data), "resnet18", "none", 32)
    assert not path.exists()
    done = sorted(p.name for p in PartialStore(path).folder.glob("*.npz"))
    assert "train-00000000.npz" in done and "test-00000004.npz" not in done
    notices: list[str] = []
    resumed = _extract(broken, tmp_path, skip_bad=True, notice=notices.append)
    assert resumed.status == "resumed" and resumed.reason.startswith(f"{len(done)} of ")
    assert any("resuming" in n for n in notices)
    assert resumed.skipped == [bad_key] and not PartialStore(path).exists()
    # Finished chunks were kept, not recomputed: rows equal an uninterrupted run's.
    ref, got = _rows(reference.path), _rows(resumed.path)
    for split in ("train", "val"):
        np.testing.assert_array_equal(got[split][0], ref[split][0])
    keep = [i for i, k in enumerate(ref["test"][1]) if k != bad_key]
    np.testing.assert_array_equal(got["test"][0], ref["test"][0][keep])


def test_partial_with_other_settings_is_discarded(tiny_data: Path, tmp_path: Path) -> None:
    _corrupt(tiny_data / load_manifest(tiny_data).split("test")[-1].key)
    broken = load_manifest(tiny_data)
    with pytest.raises(XrayError):
        _extract(broken, tmp_path)
    again = _extract(broken, tmp_path, chunk_size=8, skip_bad=True)
    assert (again.status, again.reason) == ("rebuilt", "chunk size changed (4 -> 8): rebuilding")


def test_skip_bad_leaves_the_file_out(tiny_data: Path, tmp_path: Path) -> None:
    m = load_manifest(tiny_data)
    bad_key = m.split("train")[5].key
    _corrupt(tiny_data / bad_key)
    broken = load_manifest(tiny_data)
    result = _extract(broken, tmp_path, skip_bad=True, workers=1)
    assert result.skipped == [bad_key]
    assert result.counts["train"] == len(m.split("train")) - 1
    store = open_store(result.path)
    assert store.attrs["skipped"] == [bad_key]
    train = store.split("train")
    assert bad_key not in train.keys and len(train.keys) == train.features.shape[0]
    assert train.labels.tolist() == [r.label for r in m.split("train") if r.key != bad_key]


def test_skip_bad_skips_a_dicom_no_decoder_can_read(tiny_data: Path, tmp_path: Path) -> None:
    """#13 item 7: JPEG Lossless DICOM without pylibjpeg/gdcm is a bad file, not a crash."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3not really a jpeg\xff\xd9"])
    ds.save_as(tiny_data / "train" / "NORMAL" / "IM-9001-0001", enforce_file_format=True)
    m = load_manifest(tiny_data)
    key = "train/NORMAL/IM-9001-0001"
    assert key in {r.key for r in m.records}  # found by its DICM magic, no extension
    with pytest.raises(XrayError, match=r"IM-9001-0001.*DICOM.*--skip-bad") as info:
        _extract(m, tmp_path)
    assert "\n" not in str(info.value)
    result = _extract(m, tmp_path, skip_bad=True)
    assert result.skipped == [key]


def test_second_concurrent_extraction_is_refused(tiny_data_ro: Path, tmp_path: Path) -> None:
    path = store_path(tmp_path, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    with store_lock(path), pytest.raises(XrayError, match="another extraction is writing"):
        _extract(load_manifest(tiny_data_ro), tmp_path)


def test_a_store_in_use_is_refused_never_rebuilt(tiny_data_ro: Path, tmp_path: Path) -> None:
    import fcntl

    first = _extract(load_manifest(tiny_data_ro), tmp_path)
    before = first.path.read_bytes()
    with first.path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as HDF5 does for a writer
        with pytest.raises(XrayError, match=r"in use.*not damaged") as info:
            _extract(load_manifest(tiny_data_ro), tmp_path)
    assert "delete" not in str(info.value)
    assert first.path.read_bytes() == before
    assert _extract(load_manifest(tiny_data_ro), tmp_path).status == "reused"


def test_unreadable_existing_store_is_rebuilt(tiny_data_ro: Path, tmp_path: Path) -> None:
    path = store_path(tmp_path, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    result = _extract(load_manifest(tiny_data_ro), tmp_path)
    assert result.status == "rebuilt" and result.reason.startswith("existing store damaged")
    open_store(result.path)


def test_option_validation(tiny_data_ro: Path, tmp_path: Path) -> None:
    m = load_manifest(tiny_data_ro)
    with pytest.raises(XrayError, match="--dtype"):
        _extract(m, tmp_path, dtype="int8")
    with pytest.raises(XrayError, match="--batch-size"):
        _extract(m, tmp_path, batch_size=0)
    with pytest.raises(XrayError, match="--device"):
        _extract(m, tmp_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(XrayError, match="no CUDA GPU"):
            _extract(m, tmp_path, device="cuda")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from featurestore.store import write as store_write
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    # Slow the writer down so the test can kill the process part-way, at an arbitrary point.
    write = store_write.PartialStore.write_chunk
    def slow_write(self, *args, **kwargs):
        write(self, *args, **kwargs)
        time.sleep(0.25)
    store_write.PartialStore.write_chunk = slow_write
    extract_features(load_manifest(Path(sys.argv[1])), cache_dir=Path(sys.argv[2]),
                     model="resnet18", weights="none", image_size=32, workers=0,
                     batch_size=4, chunk_size=4, precision="fp32")
    """
)


@pytest.mark.slow
def test_sigkill_mid_extraction_then_resume_gives_identical_rows(
    tiny_data_ro: Path, tmp_path: Path, reference: ExtractResult
) -> None:
    cache = tmp_path / "cache"
    path = store_path(cache, dataset_folder("chest_xray", tiny_data_ro), "resnet18", "none", 32)
    partial = PartialStore(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_data_ro), str(cache)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(partial.folder.glob("*.npz"))) < 3:
            assert proc.poll() is None, "extraction finished before it could be killed"
            assert time.monotonic() < deadline, "no chunk written within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()  # a killed extraction never leaves a store behind
    finished = len(list(partial.folder.glob("*.npz")))
    resumed = _extract(load_manifest(tiny_data_ro), cache)
    assert resumed.status == "resumed"
    assert resumed.reason.startswith(f"{finished} of ")
    _assert_same_rows(resumed.path, reference.path)


def test_real_radiographs_extract_into_a_plain_hdf5_store(realsample: Path, tmp_path: Path) -> None:
    m = load_manifest(realsample)
    result = _extract(m, tmp_path, image_size=64, batch_size=8, chunk_size=16)
    assert (
        result.path == tmp_path / dataset_folder("realsample", realsample) / "resnet18-none-64px.h5"
    )
    assert sum(result.counts.values()) == len(m.records) == 54 and result.counts["val"] > 0
    with h5py.File(result.path, "r") as fh:  # readable by any HDF5 tool, layout as documented
        assert set(fh) == {"train", "val", "test"}
        assert set(fh["val"]) == {"features", "labels", "keys", "groups"}
        assert fh["test/features"].shape == (result.counts["test"], 512)
        assert json.loads(fh.attrs["carve"]) == m.carve.as_dict()  # type: ignore[union-attr]
        assert bool(fh.attrs["complete"])


@pytest.mark.parametrize(
    ("model", "name", "pooling"),
    [
        (
            "timm:vit_tiny_patch16_224",
            "timm_vit_tiny_patch16_224-none-32px-cls+mean.h5",
            "cls+mean",
        ),
        ("txv:all", "txv-all-none-32px.h5", "avg"),
    ],
)
def test_provider_stores_record_provider_pooling_and_preprocessing(
    tiny_data_ro: Path, tmp_path: Path, model: str, name: str, pooling: str
) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("torchxrayvision")
    result = _extract(load_manifest(tiny_data_ro), tmp_path, model=model)
    assert result.path.name == name  # the alias names the store; the pooling is in the name
    store = open_store(result.path)
    assert store.attrs["pooling"] == pooling and store.attrs["provider"] == model.partition(":")[0]
    assert store.attrs["preprocessing"] == backbones.preprocessing_for(model, "none", 32).as_dict()
    assert store.feature_dim == max(b for _, b in store.poolings.values())
    features = store.split("train").features
    assert features.shape[1] == store.feature_dim and np.isfinite(features).all()
    if model.startswith("txv"):
        assert store.attrs["preprocessing"]["channels"] == 1
    else:
        assert store.columns("cls") == (0, 192) and store.columns("mean") == (192, 384)
        with pytest.raises(XrayError, match="no pooling 'map'"):
            store.columns("map")
    again = _extract(load_manifest(tiny_data_ro), tmp_path, model=model)
    assert again.status == "reused"


def test_two_datasets_with_one_manifest_name_keep_their_own_stores(tmp_path: Path) -> None:
    """Issue #28.7: two multi-label sets are both `labels.csv`; extracting the second must not
    rebuild (and so destroy) the first one's store."""
    from conftest import write_tiny_multilabel

    first = load_manifest(write_tiny_multilabel(tmp_path / "site-a", seed=1), val_min=0)
    second = load_manifest(write_tiny_multilabel(tmp_path / "site-b", seed=2), val_min=0)
    assert first.name == second.name  # the same manifest name: the case that collided
    cache = tmp_path / "cache"
    a = _extract(first, cache)
    before = _rows(a.path)
    b = _extract(second, cache)
    assert b.path != a.path and b.path.parent != a.path.parent
    assert b.status == "built"
    assert _extract(first, cache).status == "reused"  # a's store is untouched and still fresh
    after = _rows(a.path)
    for split, (features, keys) in before.items():
        np.testing.assert_array_equal(after[split][0], features)
        assert after[split][1] == keys
