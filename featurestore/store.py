"""HDF5 feature store: path naming, crash-safe chunked writer with resume, reader, lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError, disk_errors

if TYPE_CHECKING:  # numpy and h5py are imported where a store is actually touched
    import numpy as np

    from featurestore.data import Record, Split

FORMAT_VERSION = 1
SPLIT_NAMES: tuple[Split, ...] = ("train", "val", "test")
KEPT = " (finished chunks are kept)"

# Attributes stored as JSON strings (HDF5 attributes hold scalars and strings only).
JSON_ATTRS = ("preprocessing", "class_names", "carve", "skipped", "versions")
# Attributes that identify what a store was computed from: any difference means rebuild.
PROVENANCE_KEYS = (
    "format_version",
    "backbone",
    "weights_id",
    "weights_sha256",
    "preprocessing",
    "image_size",
    "dtype",
    "dataset_fingerprint",
    "class_names",
    "positive_index",
    "carve",
)


def store_path(
    cache_dir: Path, dataset_name: str, backbone: str, weights_tag: str, image_size: int
) -> Path:
    """`cache/<dataset name>/<backbone>-<weights tag>-<size>px.h5`."""
    return Path(cache_dir) / dataset_name / f"{backbone}-{weights_tag}-{image_size}px.h5"


@dataclass(frozen=True)
class SplitArrays:
    """One split of a store, in store row order."""

    features: np.ndarray
    """(N, D) float32."""
    labels: np.ndarray
    """(N,) int64 class indices."""
    keys: list[str]
    """Image keys (paths relative to the dataset root)."""
    groups: list[str]
    """Patient ids."""


class FeatureStore:
    """A complete, validated feature store; arrays are read per split on demand."""

    def __init__(self, path: Path, attrs: dict[str, Any], counts: dict[str, int]) -> None:
        self.path = path
        self.attrs = attrs
        """Root attributes, JSON fields decoded (ready for a run's config.json)."""
        self.counts = counts
        """Rows per split present in the store."""

    @property
    def backbone(self) -> str:
        return str(self.attrs["backbone"])

    @property
    def weights_id(self) -> str:
        return str(self.attrs["weights_id"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["class_names"])

    @property
    def positive_index(self) -> int:
        return int(self.attrs["positive_index"])

    @property
    def feature_dim(self) -> int:
        return int(self.attrs["feature_dim"])

    def split(self, split: str) -> SplitArrays:
        """Features (as float32), labels, keys and groups of one split."""
        import numpy as np

        if split not in self.counts:
            raise XrayError(f"store {self.path} has no split {split!r} (has {list(self.counts)})")
        with _open_h5(self.path) as fh:
            try:
                group = fh[split]
                return SplitArrays(
                    features=group["features"][:].astype(np.float32),
                    labels=group["labels"][:].astype(np.int64),
                    keys=[str(k) for k in group["keys"].asstr()[:]],
                    groups=[str(g) for g in group["groups"].asstr()[:]],
                )
            except (OSError, KeyError) as exc:
                raise _corrupt(self.path, exc) from None


def open_store(path: Path, *, expect_fingerprint: str | None = None) -> FeatureStore:
    """Open a complete store; XrayError with the reason when it cannot be trusted."""
    path = Path(path)
    if not path.is_file():
        raise XrayError(f"no feature store at {path}: run `xray extract` first")
    attrs = read_attrs(path)
    if attrs.get("format_version") != FORMAT_VERSION:
        raise XrayError(
            f"store {path} has format version {attrs.get('format_version')}, this xray reads "
            f"{FORMAT_VERSION}: run `xray extract` again"
        )
    if not attrs.get("complete"):
        raise XrayError(f"store {path} is incomplete: run `xray extract` again to finish it")
    if expect_fingerprint is not None and attrs["dataset_fingerprint"] != expect_fingerprint:
        change = _change(attrs["dataset_fingerprint"], expect_fingerprint)
        raise XrayError(
            f"store {path} no longer matches the dataset (fingerprint {change}): "
            "run `xray extract` again"
        )
    with _open_h5(path) as fh:
        try:
            counts: dict[str, int] = {
                s: int(fh[s]["features"].shape[0]) for s in SPLIT_NAMES if s in fh
            }
        except (OSError, KeyError) as exc:  # a split group without its features dataset
            raise _corrupt(path, exc) from None
    return FeatureStore(path, attrs, counts)


def find_stores(cache_dir: Path) -> list[Path]:
    """Complete stores of the current format under `cache_dir`, recursively, sorted."""
    found = []
    for path in sorted(Path(cache_dir).rglob("*.h5")):
        try:
            attrs = read_attrs(path)
        except XrayError:
            continue
        if attrs.get("complete") and attrs.get("format_version") == FORMAT_VERSION:
            found.append(path)
    return found


def read_attrs(path: Path) -> dict[str, Any]:
    """Root attributes as plain Python values, JSON fields decoded, "" sha as None."""
    with _open_h5(path) as fh:
        raw = dict(fh.attrs)
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        value = value.item() if hasattr(value, "item") else value  # numpy scalar -> Python
        if isinstance(value, bytes):
            value = value.decode()
        if key in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        attrs[key] = value
    if attrs.get("weights_sha256") == "":
        attrs["weights_sha256"] = None
    return attrs


def provenance_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """What differs between two provenance records, in words; None when they match."""
    for key in (*PROVENANCE_KEYS, "chunk_size"):
        if key not in new or old.get(key) == new[key]:
            continue
        if key == "weights_sha256" and not str(new.get("weights_id", "")).startswith("file:"):
            continue  # ImageNet weights are identified by their versioned enum name
        before, after = old.get(key), new[key]
        if key == "dataset_fingerprint":
            return f"dataset changed (fingerprint {_change(before, after)})"
        if key in ("weights_id", "weights_sha256"):
            return f"weights changed ({_change(before, after)})"
        if key in ("preprocessing", "image_size"):
            return "preprocessing changed"
        if key == "carve":
            return "validation carve changed"
        if key == "class_names":
            return f"class names changed ({before} -> {after})"
        return f"{key.replace('_', ' ')} changed ({before} -> {after})"
    return None


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Exclusive non-blocking lock on `<store>.lock`: a second writer fails at once."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XrayError(
                f"another extraction is writing {path} (lock {lock_path} is held): "
                "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class PartialStore:
    """Progress of an extraction: finished chunk files in `<store>.partial/`.

    Each chunk `<split>-<start:08d>.npz` is written under a temporary name, fsynced and renamed,
    so a kill at any moment loses at most the chunk in flight. `assemble` then streams the
    chunks into `<store>.tmp` and renames it: a finished store is never half-written.
    """

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.folder = Path(f"{store}.partial")

    def provenance(self) -> dict[str, Any] | None:
        """The provenance this partial extraction was started with; None when there is none."""
        try:
            return dict(json.loads((self.folder / "provenance.json").read_text()))
        except (OSError, ValueError):
            return None

    def exists(self) -> bool:
        return self.folder.exists()

    def start(self, provenance: Mapping[str, Any]) -> None:
        """Create the folder and record the provenance the chunks will be computed from."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.folder / "provenance.json", json.dumps(provenance, indent=2).encode())

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def chunk_path(self, split: str, start: int) -> Path:
        return self.folder / f"{split}-{start:08d}.npz"

    def done(self, split: str, start: int) -> bool:
        return self.chunk_path(split, start).is_file()

    def write_chunk(
        self,
        split: str,
        start: int,
        *,
        features: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        skipped: Sequence[str],
        seconds: float,
    ) -> None:
        """Persist one finished chunk atomically (features (n, D), labels/indices (n,))."""
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(
            buf,
            features=features,
            labels=labels.astype(np.int64),
            indices=indices.astype(np.int64),
            skipped=np.asarray(list(skipped), dtype=str),
            seconds=np.float64(seconds),
        )
        with disk_errors(self.chunk_path(split, start), kept=KEPT):
            _write_atomic(self.chunk_path(split, start), buf.getvalue())

    def read_chunk(self, split: str, start: int) -> dict[str, np.ndarray]:
        import numpy as np

        try:
            with np.load(self.chunk_path(split, start), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise XrayError(
                f"progress file {self.chunk_path(split, start)} is unreadable ({exc}): "
                f"delete {self.folder} and run again"
            ) from None

    def assemble(
        self,
        attrs: Mapping[str, Any],
        plan: Mapping[Split, Sequence[int]],
        records: Mapping[Split, Sequence[Record]],
        *,
        feature_dim: int,
        dtype: str,
        chunk_rows: int,
    ) -> tuple[dict[str, int], list[str], float]:
        """Stream the chunks (plan: split -> chunk starts) into the final HDF5 store.

        Returns (rows per split, skipped keys, summed extraction seconds).
        """
        import h5py
        import numpy as np

        tmp = Path(f"{self.store}.tmp")
        tmp.unlink(missing_ok=True)
        counts: dict[str, int] = {}
        skipped: list[str] = []
        seconds = 0.0
        text = h5py.string_dtype()
        with disk_errors(self.store, kept=KEPT), _removed_on_error(tmp), h5py.File(tmp, "w") as fh:
            for split in SPLIT_NAMES:
                group = fh.create_group(split)
                rows = (max(1, chunk_rows),)
                feats = group.create_dataset(
                    "features",
                    (0, feature_dim),
                    dtype=dtype,
                    maxshape=(None, feature_dim),
                    chunks=(rows[0], feature_dim),
                )
                cols = {
                    name: group.create_dataset(name, (0,), dtype=dt, maxshape=(None,), chunks=rows)
                    for name, dt in (("labels", "int64"), ("keys", text), ("groups", text))
                }
                n = 0
                for start in plan.get(split, ()):
                    chunk = self.read_chunk(split, start)
                    idx = chunk["indices"]
                    m = len(idx)
                    for ds in (feats, *cols.values()):
                        ds.resize(n + m, axis=0)
                    feats[n : n + m] = chunk["features"]
                    cols["labels"][n : n + m] = chunk["labels"]
                    recs = [records[split][i] for i in idx]
                    cols["keys"][n : n + m] = np.array([r.key for r in recs], dtype=object)
                    cols["groups"][n : n + m] = np.array([r.group for r in recs], dtype=object)
                    n += m
                    skipped.extend(str(k) for k in chunk["skipped"])
                    seconds += float(chunk["seconds"])
                counts[split] = n
            final = {
                **attrs,
                "skipped": skipped,
                "extraction_seconds": round(seconds, 3),
                "feature_dim": feature_dim,
            }
            for key, value in final.items():
                if key in JSON_ATTRS:
                    value = json.dumps(value)
                fh.attrs[key] = "" if value is None else value
            fh.attrs["complete"] = True
            fh.flush()
        with disk_errors(self.store, kept=KEPT), _removed_on_error(tmp):
            _fsync(tmp)
        os.replace(tmp, self.store)
        _fsync_dir(self.store.parent)
        self.discard()
        return counts, skipped, seconds


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[Any]:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise _corrupt(path, exc) from None
    with fh:
        yield fh


def _corrupt(path: Path, exc: BaseException) -> XrayError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return XrayError(
        f"store {path} is unreadable, truncated or corrupt ({first}): delete it and run "
        "`xray extract` again"
    )


def _change(before: Any, after: Any) -> str:
    short = [str(v)[:12] + ".." if v and len(str(v)) > 14 else str(v) for v in (before, after)]
    return f"{short[0]} -> {short[1]}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _removed_on_error(tmp):
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
