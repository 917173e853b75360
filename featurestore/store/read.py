"""HDF5 feature store, reader side: path naming, attributes, validated `open_store`, provenance."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError

if TYPE_CHECKING:  # numpy and h5py are imported where a store is actually touched
    import numpy as np

    from featurestore.data import Split

FORMAT_VERSION = 1
SPLIT_NAMES: tuple[Split, ...] = ("train", "val", "test")

# Attributes stored as JSON strings (HDF5 attributes hold scalars and strings only).
JSON_ATTRS = ("preprocessing", "class_names", "carve", "skipped", "versions", "poolings")
# Attributes that identify what a store was computed from: any difference means rebuild.
PROVENANCE_KEYS = (
    "format_version",
    "backbone",
    "weights_id",
    "weights_sha256",
    "preprocessing",
    "image_size",
    "precision",
    "dtype",
    "dataset_fingerprint",
    "class_names",
    "positive_index",
    "carve",
    "pooling",  # provider backbones only (torchvision stores predate it)
)


def dataset_folder(name: str, location: Path) -> str:
    """The cache folder of one dataset: `<name>-<first 8 hex of sha256(resolved location)>`.

    Two datasets whose manifests share a name (every synthetic multi-label set is `labels.csv`,
    two hospitals' `chest_xray/`) get folders of their own, so extracting one never rebuilds,
    overwrites or deletes the other's stores. `location` is the manifest's CSV/NPZ file or
    image folder; the same dataset read from the same place always maps to the same folder.
    """
    digest = hashlib.sha256(str(Path(location).resolve()).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def store_path(
    cache_dir: Path,
    dataset_name: str,
    backbone: str,
    weights_tag: str,
    image_size: int,
    *,
    pooling: str | None = None,
    precision: str = "fp32",
) -> Path:
    """`cache/<dataset folder>/<backbone>-<weights tag>-<size>px[-<pooling>][-<precision>].h5`.

    The backbone name is made file-safe (`hf:org/model` -> `hf_org--model`). A float32
    extraction keeps the name stores had before precision was recorded; a bf16 or fp16 one is
    another file, so neither ever overwrites or is mistaken for the other.
    """
    stem = backbone.replace(":", "_").replace("/", "--")
    tail = f"-{pooling}" if pooling else ""
    tail += "" if precision == "fp32" else f"-{precision}"
    return Path(cache_dir) / dataset_name / f"{stem}-{weights_tag}-{image_size}px{tail}.h5"


class StoreInUseError(XrayError):
    """A store that cannot be opened because of a file lock, not because it is damaged.

    Either another process holds it open for writing (HDF5 locks files it opens), or its
    filesystem does not support locks (some network filesystems). Never a reason to delete it.
    """


class StoreDamagedError(XrayError):
    """A store file that cannot be read back as written: truncated, bytes overwritten (a chunk
    whose fletcher32 checksum fails), a dataset missing. `reason` is HDF5's first line."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"store {path} is damaged (unreadable, truncated or corrupt: {reason}): rebuild it "
            "with `xray extract` and the same --model and --data (it replaces a damaged store), "
            "or delete it and run `xray extract` again"
        )
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (torchrun ranks send errors to rank 0)
        return type(self), (self.path, self.reason)


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
    targets: np.ndarray | None = None
    """Multi-label stores: (N, L) float32, 1 present, 0 absent, NaN masked; else None."""


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
    def precision(self) -> str:
        """What the trunk computed in: fp32, bf16 or fp16 (stores from before it was recorded:
        "unrecorded")."""
        return str(self.attrs.get("precision") or "unrecorded")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["class_names"])

    @property
    def positive_index(self) -> int:
        return int(self.attrs["positive_index"])

    @property
    def feature_dim(self) -> int:
        return int(self.attrs["feature_dim"])

    @property
    def task(self) -> str:
        """`binary` or `multiclass`: recorded, else (older stores) from the class count."""
        derived = "binary" if len(self.class_names) == 2 else "multiclass"
        return str(self.attrs.get("task") or derived)

    @property
    def label_scheme(self) -> str:
        """How the dataset's labels were read (`as-given`, `kermany3`); older stores: as-given."""
        return str(self.attrs.get("label_scheme") or "as-given")

    @property
    def poolings(self) -> dict[str, tuple[int, int]]:
        """Pooling name -> (start, stop) feature columns; one `avg` for CNN stores."""
        doc = self.attrs.get("poolings") or {"avg": [0, self.feature_dim]}
        return {str(k): (int(v[0]), int(v[1])) for k, v in doc.items()}

    def columns(self, pooling: str | None) -> tuple[int, int]:
        """(start, stop) columns of `pooling` (all for None or `all`); XrayError if absent."""
        spans = self.poolings
        if pooling in (None, "all", "+".join(spans)):
            return 0, self.feature_dim
        if pooling not in spans:
            raise XrayError(
                f"store {self.path.name} has no pooling {pooling!r}: choose one of "
                f"{', '.join(spans)} or all"
            )
        return spans[pooling]

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
                    targets=group["targets"][:] if "targets" in group else None,
                )
            except (OSError, KeyError) as exc:
                raise _corrupt(self.path, exc) from None


def open_store(
    path: Path, *, expect_fingerprint: str | None = None, verify: bool = False
) -> FeatureStore:
    """Open a complete store; XrayError with the reason when it cannot be trusted.

    `verify`: also read every chunk of every dataset, so damage anywhere raises
    StoreDamagedError now (see `verify_store`) rather than when a split is read.
    """
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
    if verify:
        verify_store(path)
    return FeatureStore(path, attrs, counts)


def verify_store(path: Path) -> None:
    """Read every dataset of a store once, a chunk's worth of rows at a time.

    Stores written since issue #27 keep a fletcher32 checksum per chunk of features, labels and
    targets, which HDF5 checks on each read: bytes overwritten there raise StoreDamagedError.
    What this cannot see: damage inside the raw data of an older store (no checksums) or of
    the key and patient strings (HDF5 allows no checksum on variable-length strings) reads
    back without error, unless it breaks the file's structure. Truncation is always seen.

    Raises:
        StoreDamagedError: a chunk fails its checksum or cannot be read.
        StoreInUseError: another process holds the file for writing.
    """
    import h5py

    with _open_h5(path) as fh:
        datasets: list[Any] = []
        fh.visititems(
            lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None
        )
        try:
            for ds in datasets:
                step = ds.chunks[0] * 64 if ds.chunks else max(1, len(ds))
                for start in range(0, ds.shape[0] if ds.shape else 0, step):
                    ds[start : start + step]
        except (OSError, KeyError, ValueError) as exc:
            raise _corrupt(path, exc) from None


def find_stores(cache_dir: Path) -> list[Path]:
    """Complete stores of the current format under `cache_dir`, recursively, sorted.

    Unfinished stores and stores of another format version are passed over. A damaged file
    raises StoreDamagedError and a store held by another process StoreInUseError: leaving
    either out silently would train on fewer stores than the user has, or say "no complete
    feature store" when there is one to rebuild (issue #27).
    """
    found = []
    for path in sorted(Path(cache_dir).rglob("*.h5")):
        if not path.is_file():
            continue
        attrs = read_attrs(path)
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
        if key == "precision":
            return f"precision changed ({before or 'unrecorded'} -> {after})"
        if key in ("preprocessing", "image_size"):
            return "preprocessing changed"
        if key == "carve":
            return "validation carve changed"
        if key == "class_names":
            return f"class names changed ({before} -> {after})"
        return f"{key.replace('_', ' ')} changed ({before} -> {after})"
    return None


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[Any]:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise open_error(path, exc) from None
    with fh:
        yield fh


# HDF5 reports a lock it cannot take as "unable to lock file, errno = N, error message = ...".
_LOCK_HELD = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def open_error(path: Path, exc: OSError, *, writing: bool = False) -> XrayError:
    """The XrayError for an HDF5 file that would not open: locked, unlocked-able, or damaged.

    A lock held by another process or a filesystem without locks leaves the store intact, so
    those messages never advise deleting it; only a file HDF5 cannot parse is called corrupt.
    """
    text = str(exc)
    if "unable to lock file" in text:
        code = _lock_errno(text)
        if code in _LOCK_HELD:
            return StoreInUseError(
                f"store {path} is in use: another process holds it open for writing (HDF5 file "
                "lock); the store is not damaged: close it there (an h5py session, HDFView, "
                "another job) and run again"
            )
        return StoreInUseError(
            f"cannot lock {path}: its filesystem does not support file locks "
            f"({_lock_reason(text)}; some network filesystems); the store is not damaged: set "
            "HDF5_USE_FILE_LOCKING=FALSE and run again, or use a local disk for --cache"
        )
    if isinstance(exc, PermissionError) or exc.errno == errno.EACCES:
        action = "write to" if writing else "read"
        return XrayError(f"no permission to {action} {path}: check the file's permissions")
    return _corrupt(path, exc)


def _lock_errno(text: str) -> int | None:
    marker = "errno = "
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1].split(",", 1)[0].strip()
    return int(digits) if digits.isdigit() else None


def _lock_reason(text: str) -> str:
    code = _lock_errno(text)
    return f"errno {code}, {errno.errorcode.get(code, '?')}" if code is not None else text[:80]


def _corrupt(path: Path, exc: BaseException) -> XrayError:
    if isinstance(exc, OSError) and "unable to lock file" in str(exc):
        return open_error(path, exc)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreDamagedError(path, first)


def _change(before: Any, after: Any) -> str:
    short = [str(v)[:12] + ".." if v and len(str(v)) > 14 else str(v) for v in (before, after)]
    return f"{short[0]} -> {short[1]}"
