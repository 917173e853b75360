"""Bad input, tried from the command line as a new user would: one `error:` line, exit 2, no
traceback and no changed store; 16-bit and palette images work; property tests and a decoder fuzz.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner, Result

from featurestore.data import (
    SPLITS,
    ImageDecodeError,
    Manifest,
    carve_validation,
    dataset_fingerprint,
    decode_image,
    load_manifest,
)
from featurestore.errors import XrayError
from featurestore.store import dataset_folder

torch.set_num_threads(1)
runner = CliRunner()
TINY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0",
        "--batch-size", "8"]  # fmt: skip


# --- helpers --------------------------------------------------------------------------------------


def assert_one_error_line(result: Result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line starting with `error:` holding `fragments`, no traceback."""
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every feature store (*.h5) under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.h5"))
    }


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A ~100-byte PNG whose header claims side x side pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 256))
        + png_chunk(b"IEND", b"")
    )


def image_bytes(fmt: str, mode: str = "L", size: int = 40) -> bytes:
    import io

    rng = np.random.default_rng(0)
    if mode == "I;16":
        pixels = rng.integers(0, 4096, (size, size)).astype(np.uint16)  # 12-bit in 16-bit
        im = Image.fromarray(pixels)
    else:
        im = Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dataset and its complete resnet18 (random init, 32 px) store."""
    root = tmp_path_factory.mktemp("badinput")
    data = write_tiny_dataset(root / "chest_xray")
    result = runner.invoke(app, ["extract", "--data", str(data), "--cache", str(root / "cache"),
                                 *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    (store,) = (root / "cache").rglob("*.h5")
    return {"data": data, "cache": root / "cache", "store": store}


@pytest.fixture
def scratch(env: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Copies of the dataset and the cache that a test may damage."""
    data = tmp_path / "chest_xray"
    shutil.copytree(env["data"], data)
    cache = tmp_path / "cache"
    shutil.copytree(env["cache"], cache, ignore=shutil.ignore_patterns("*.lock"))
    return {"data": data, "cache": cache, "runs": tmp_path / "runs"}


# --- bad image files, through `xray extract` ------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = image_bytes(fmt)
    return data[: len(data) // 3]


BAD_FILES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # case: (file name, bytes, what the one line must say)
    "truncated jpeg": ("IM-7001-0001.jpeg", lambda: _truncated("JPEG"), "truncated"),
    "truncated png": ("IM-7001-0001.png", lambda: _truncated("PNG"), "truncated"),
    "corrupt jpeg": ("IM-7001-0001.jpeg", lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, ""),
    "corrupt png": ("IM-7001-0001.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x13" * 500, ""),
    "zero bytes": ("IM-7001-0001.jpeg", lambda: b"", "empty file (0 bytes)"),
    "text as jpeg": ("IM-7001-0001.jpeg", lambda: b"<html>not found</html>\n" * 20, "not an image"),
    "pdf as png": (
        "IM-7001-0001.png",
        lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" * 20,
        "not an image",
    ),
    "decompression bomb": ("IM-7001-0001.png", bomb_png, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_is_one_line_and_leaves_the_store_alone(
    scratch: dict[str, Path], case: str
) -> None:
    name, make, message = BAD_FILES[case]
    bad = scratch["data"] / "train" / "NORMAL" / name
    bad.write_bytes(make())
    before = snapshot(scratch["cache"])
    result = runner.invoke(
        app, ["extract", "--data", str(scratch["data"]), "--cache", str(scratch["cache"]), *TINY]
    )
    line = assert_one_error_line(result, name, "--skip-bad")
    assert message in line
    assert snapshot(scratch["cache"]) == before  # the previous store is still there, unchanged


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "RGBA", "1"])
def test_sixteen_bit_palette_and_alpha_images_extract(scratch: dict[str, Path], mode: str) -> None:
    # These are valid radiograph files found in the wild: they must work, not fail.
    name = "IM-7002-0001.png"
    (scratch["data"] / "train" / "NORMAL" / name).write_bytes(image_bytes("PNG", mode))
    result = runner.invoke(
        app, ["extract", "--data", str(scratch["data"]), "--cache", str(scratch["cache"]), *TINY]
    )
    assert result.exit_code == 0, result.output
    (store,) = (scratch["cache"] / dataset_folder("chest_xray", scratch["data"])).glob("*.h5")
    with h5py.File(store, "r") as fh:
        keys = [k.decode() for k in fh["train/keys"][:]] + [k.decode() for k in fh["val/keys"][:]]
        assert f"train/NORMAL/{name}" in keys
        assert np.isfinite(fh["train/features"][:]).all()


# --- manifests, through `xray extract --data` -----------------------------------------------------


def _write_csv(path: Path, rows: list[list[str]], header: str = "path,label,split") -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def _rows(data: Path) -> list[list[str]]:
    return [
        [p.relative_to(data).as_posix(), p.parent.name, p.parts[-3]]
        for p in sorted(data.rglob("*.jpeg"))
    ]


MANIFESTS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing split column": (
        lambda d: _write_csv(d / "m.csv", [r[:2] for r in _rows(d)], "path,label"),
        ("missing column(s) split",),
    ),
    "missing label column": (
        lambda d: _write_csv(d / "m.csv", [[r[0], r[2]] for r in _rows(d)], "path,split"),
        ("missing column(s) label",),
    ),
    "unknown split": (
        lambda d: _write_csv(d / "m.csv", [*_rows(d)[:-1], [*_rows(d)[-1][:2], "holdout"]]),
        ("unknown split 'holdout'",),
    ),
    "label never seen in train": (
        lambda d: _write_csv(d / "m.csv", [*_rows(d)[:-1], [_rows(d)[-1][0], "COVID", "test"]]),
        ("'COVID'", "train"),
    ),
    "path escaping the root": (
        lambda d: _write_csv(d / "m.csv", [*_rows(d), ["../escape.jpeg", "NORMAL", "train"]]),
        ("outside the CSV's folder",),
    ),
    "absolute path outside": (
        lambda d: _write_csv(d / "m.csv", [*_rows(d), ["/etc/hostname", "NORMAL", "train"]]),
        ("outside the CSV's folder",),
    ),
    "missing file": (
        lambda d: _write_csv(
            d / "m.csv", [*_rows(d), ["train/NORMAL/gone.jpeg", "NORMAL", "train"]]
        ),
        ("not found",),
    ),
    "class folder only in test": (
        lambda d: _add_test_only_class(d),
        ("'COVID'", "train"),
    ),
}


def _add_test_only_class(data: Path) -> Path:
    (data / "test" / "COVID").mkdir()
    (data / "test" / "COVID" / "IM-9000-0001.jpeg").write_bytes(image_bytes("JPEG"))
    return data


NPZ: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "labels missing": ({"train_images": np.zeros((4, 8, 8), np.uint8)}, "must both be present"),
    "images missing": ({"train_labels": np.zeros(4, np.int64)}, "must both be present"),
    "no MedMNIST arrays": ({"x": np.zeros(3)}, "no train_images"),
    "flat images": (
        {"train_images": np.zeros((4, 64), np.uint8), "train_labels": np.zeros(4)},
        "expected (N, H, W[, C])",
    ),
    "two channels": (
        {"train_images": np.zeros((4, 8, 8, 2), np.uint8), "train_labels": np.zeros(4)},
        "expected (N, H, W[, C])",
    ),
    "one-hot labels": (
        {"train_images": np.zeros((4, 8, 8), np.uint8), "train_labels": np.zeros((4, 2))},
        "expected (N,) or (N, 1)",
    ),
    "counts differ": (
        {"train_images": np.zeros((4, 8, 8), np.uint8), "train_labels": np.zeros(3)},
        "4 train images but 3 labels",
    ),
    "negative labels": (
        {"train_images": np.zeros((2, 8, 8), np.uint8), "train_labels": np.array([0, -1])},
        "non-negative integers",
    ),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_bad_manifest_is_one_line(scratch: dict[str, Path], case: str) -> None:
    make, fragments = MANIFESTS[case]
    (scratch["data"].parent / "escape.jpeg").write_bytes(image_bytes("JPEG"))
    target = make(scratch["data"])
    before = snapshot(scratch["cache"])
    result = runner.invoke(
        app, ["extract", "--data", str(target), "--cache", str(scratch["cache"]), *TINY]
    )
    assert_one_error_line(result, *fragments)
    assert snapshot(scratch["cache"]) == before
    assert not list(scratch["cache"].rglob("m/*"))  # nothing started for the refused manifest


@pytest.mark.parametrize("case", list(NPZ))
def test_bad_npz_is_one_line(tmp_path: Path, case: str) -> None:
    arrays, fragment = NPZ[case]
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    result = runner.invoke(app, ["extract", "--data", str(path), "--cache", str(tmp_path), *TINY])
    assert_one_error_line(result, str(path), fragment)
    assert not list(tmp_path.rglob("*.h5"))


def test_npz_that_is_not_an_archive_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pneumoniamnist.npz"
    path.write_bytes(b"PK\x03\x04 but not really a zip")
    result = runner.invoke(app, ["extract", "--data", str(path), "--cache", str(tmp_path), *TINY])
    assert_one_error_line(result, "not a readable .npz archive")


# --- damaged or foreign stores, through `xray fit-head` -------------------------------------------


def _truncate(store: Path) -> None:
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])


def _old_version(store: Path) -> None:
    with h5py.File(store, "r+") as fh:
        fh.attrs["format_version"] = 0


def _garbage(store: Path) -> None:
    store.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 300)


def _incomplete(store: Path) -> None:
    with h5py.File(store, "r+") as fh:
        fh.attrs["complete"] = False


def _no_features(store: Path) -> None:
    with h5py.File(store, "r+") as fh:
        del fh["test/features"]


STORES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": (_truncate, ("unreadable, truncated or corrupt", "xray extract")),
    "older format version": (_old_version, ("format version 0", "reads 1", "xray extract")),
    "garbage": (_garbage, ("unreadable, truncated or corrupt",)),
    "incomplete": (_incomplete, ("incomplete", "xray extract")),
    "dataset missing": (_no_features, ("unreadable, truncated or corrupt",)),
}


@pytest.mark.parametrize("case", list(STORES))
def test_fit_head_refuses_a_damaged_store_with_the_reason(
    scratch: dict[str, Path], case: str
) -> None:
    damage, fragments = STORES[case]
    (store,) = scratch["cache"].rglob("*.h5")
    damage(store)
    before = snapshot(scratch["cache"])
    result = runner.invoke(
        app,
        ["fit-head", "--store", str(store), "--runs", str(scratch["runs"]), "--epochs", "1"],
    )
    assert_one_error_line(result, str(store), *fragments)
    assert snapshot(scratch["cache"]) == before  # fit-head never writes to a store
    assert not scratch["runs"].exists() or not list(scratch["runs"].iterdir())


def test_bare_fit_head_skips_old_stores_and_says_what_to_do(scratch: dict[str, Path]) -> None:
    (store,) = scratch["cache"].rglob("*.h5")
    _old_version(store)
    result = runner.invoke(
        app, ["fit-head", "--cache", str(scratch["cache"]), "--runs", str(scratch["runs"])]
    )
    assert_one_error_line(result, "no complete feature store", "xray extract")


def test_fit_head_on_a_csv_dataset_store(scratch: dict[str, Path]) -> None:
    """A store extracted from a CSV manifest is checked against that CSV, not its folder."""
    csv_path = _write_csv(scratch["data"] / "m.csv", _rows(scratch["data"]))
    cache = scratch["cache"] / "fresh"
    args = ["--cache", str(cache)]
    result = runner.invoke(app, ["extract", "--data", str(csv_path), *args, *TINY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["fit-head", *args, "--runs", str(scratch["runs"]), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    csv_path.write_text(csv_path.read_text().replace(",NORMAL,", ",PNEUMONIA,", 1))
    result = runner.invoke(app, ["fit-head", *args, "--runs", str(scratch["runs"])])
    assert_one_error_line(result, "no longer matches the dataset")


# --- foreign run folders, through `xray compare` --------------------------------------------------


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: _mkdir(d / "dataset"), "not a complete run folder (missing config.json"),
        (lambda d: d / "nowhere", "does not exist"),
        (lambda d: _fake_run(d, metrics="{not json"), "metrics.json is damaged"),
        (lambda d: _fake_run(d, metrics="{}", name=".x.tmp"), "still being written"),
    ],
)
def test_compare_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, make: Callable[[Path], Path], fragment: str
) -> None:
    folder = make(tmp_path / "elsewhere")
    result = runner.invoke(app, ["compare", str(folder), "--out", str(tmp_path / "report")])
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "report").exists()


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _fake_run(parent: Path, *, metrics: str, name: str = "run") -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    for file in ("config.json", "history.csv", "predictions.csv", "best.pt"):
        (folder / file).write_text("{}" if file.endswith(".json") else "")
    (folder / "metrics.json").write_text(metrics)
    return folder


# --- properties of the manifest and split logic ---------------------------------------------------

# Patients: (class, images in train, in given val?, in test?). File names follow Kermany rules.
PATIENTS = st.lists(
    st.tuples(st.integers(0, 1), st.integers(1, 3), st.booleans(), st.booleans()),
    min_size=12,
    max_size=30,
)


def _csv_dataset(root: Path, patients: list[tuple[int, int, bool, bool]]) -> list[list[str]]:
    """Empty image files (readers never decode) and the CSV rows listing them."""
    classes = ("NORMAL", "PNEUMONIA")
    rows = []
    for p, (label, n_train, in_val, in_test) in enumerate(patients):
        cls = classes[label]
        splits = ["train"] * n_train + ["val"] * in_val + ["test"] * in_test
        for j, split in enumerate(splits):
            name = f"person{p}_bacteria_{j}.jpeg" if label else f"IM-{p:04d}-{j:04d}.jpeg"
            path = root / split / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes([p % 256, j]))
            rows.append([path.relative_to(root).as_posix(), cls, split])
    return rows


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(patients=PATIENTS, seed=st.integers(0, 2**16), order=st.randoms(use_true_random=False))
def test_manifest_property_every_image_once_no_patient_straddles_order_free(
    tmp_path_factory: pytest.TempPathFactory,
    patients: list[tuple[int, int, bool, bool]],
    seed: int,
    order: random.Random,
) -> None:
    root = tmp_path_factory.mktemp("prop")
    rows = _csv_dataset(root, patients)
    shuffled = list(rows)
    order.shuffle(shuffled)
    a = _write_csv(root / "a.csv", rows)
    b = _write_csv(root / "b.csv", shuffled)
    try:
        ma = load_manifest(a, val_min=100, val_fraction=0.25, seed=seed)
    except XrayError as exc:  # too few patients to carve: the shuffled file fails the same way
        with pytest.raises(XrayError, match="cannot carve"):
            load_manifest(b, val_min=100, val_fraction=0.25, seed=seed)
        assert "cannot carve" in str(exc)
        return
    mb = load_manifest(b, val_min=100, val_fraction=0.25, seed=seed)
    # Stable under file order: the same records, carve and fingerprint.
    assert ma.records == mb.records and ma.carve == mb.carve
    assert dataset_fingerprint(ma) == dataset_fingerprint(replace_root(mb, ma))
    # Every listed image in exactly one split.
    keys = [r.key for r in ma.records]
    assert sorted(keys) == sorted(r[0] for r in rows) and len(set(keys)) == len(keys)
    # No patient in both train and val; test is exactly what was given.
    by_split = {s: {r.group for r in ma.split(s)} for s in SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert {r.key for r in ma.split("test")} == {r[0] for r in rows if r[2] == "test"}
    # A given val image stays in val; the carve only moves train images.
    assert {r[0] for r in rows if r[2] == "val"} <= {r.key for r in ma.split("val")}
    assert all(r.source_split == "train" for r in ma.split("val") if r.source_split != "val")


def replace_root(m: Manifest, like: Manifest) -> Manifest:
    """The fingerprint covers kind, classes and records; same root for an equal comparison."""
    from dataclasses import replace

    return replace(m, root=like.root)


@settings(max_examples=20, deadline=None)
@given(
    groups=st.lists(st.integers(0, 8), min_size=20, max_size=60),
    labels=st.lists(st.integers(0, 1), min_size=60, max_size=60),
    seed=st.integers(0, 100),
)
def test_carve_property_patients_never_split_across_train_and_val(
    groups: list[int], labels: list[int], seed: int
) -> None:
    """Random patient assignment (patients with many images, mixed labels): each patient's
    images all land on one side of the carve, and every image is in exactly one split."""
    from featurestore.data import Record

    records = tuple(
        Record(f"train/c/img{i:03d}.png", labels[i], "train", f"p{g}", "train")
        for i, g in enumerate(groups)
    )
    m = Manifest(Path("/nowhere"), "folder", ("NORMAL", "PNEUMONIA"), records)
    try:
        carved = carve_validation(m, fraction=0.25, seed=seed)
    except XrayError:
        assert len(set(groups)) < 4
        return
    assert sorted(r.key for r in carved.records) == sorted(r.key for r in records)
    side = {}
    for r in carved.records:
        assert side.setdefault(r.group, r.split) == r.split
    assert {r.split for r in carved.records} == {"train", "val"}


# --- decoder fuzz ---------------------------------------------------------------------------------

SEEDS = {
    "png": image_bytes("PNG"),
    "jpeg": image_bytes("JPEG"),
    "png16": image_bytes("PNG", "I;16"),
    "palette": image_bytes("PNG", "P"),
    "bmp": image_bytes("BMP"),
}


def _decode_or_refuse(data: bytes) -> None:
    """decode_image either gives an RGB image or raises ImageDecodeError: nothing else; with
    grey=True (the extraction path) an L or RGB image with the same pixels, or the same error."""
    try:
        im = decode_image(data, min_size=16)
    except ImageDecodeError as exc:
        assert str(exc).startswith("<bytes>: ") and "\n" not in str(exc)
        with pytest.raises(ImageDecodeError, match=re.escape(str(exc))):
            decode_image(data, min_size=16, grey=True)
        return
    assert im.mode == "RGB" and im.width > 0 and im.height > 0
    grey = decode_image(data, min_size=16, grey=True)
    assert grey.mode in ("L", "RGB")
    assert np.array_equal(np.asarray(grey.convert("RGB")), np.asarray(im))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_refuse(data)


@settings(max_examples=80, deadline=None)
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
)
def test_fuzz_damaged_real_images(fmt: str, cut: float, flips: list[tuple[float, int]]) -> None:
    """Truncated and byte-flipped copies of valid files (headers included) never escape."""
    data = bytearray(SEEDS[fmt][: max(1, int(len(SEEDS[fmt]) * cut))] if cut < 1 else SEEDS[fmt])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    _decode_or_refuse(bytes(data))


def test_fuzz_bomb_headers_are_refused_cheaply() -> None:
    for side in (30_000, 100_000, 2**31 - 1):
        with pytest.raises(ImageDecodeError, match=r"decompression bomb|unreadable"):
            decode_image(bomb_png(side))
