"""Crash-safe feature store writer: per-chunk progress files, assembly into HDF5, writer lock."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError
from featurestore.fileio import atomic_path, atomic_write_bytes
from featurestore.store.read import JSON_ATTRS, SPLIT_NAMES, StoreInUseError, open_error

if TYPE_CHECKING:  # numpy and h5py are imported where a store is actually written
    import numpy as np

    from featurestore.data import Record, Split

KEPT = " (finished chunks are kept)"


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Exclusive non-blocking lock on `<store>.lock`: a second writer fails at once.

    The `filelock` library takes an OS lock (flock on Unix, msvcrt on Windows), which the OS
    releases when the process dies, so a killed extraction never leaves a stale lock. The
    lock file itself is removed by the holder when it is done (no zero-byte files left in the
    cache), while it still holds the lock: a process that opened the file just before would
    lock an unlinked inode, which filelock detects (st_nlink == 0 after flock) and retries.

    Raises:
        StoreInUseError: when another process holds the lock, or the filesystem cannot lock.
        XrayError: when the cache folder is not writable.
    """
    import filelock

    lock_path = Path(f"{path}.lock")
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except PermissionError:
        raise XrayError(
            f"no permission to write {lock_path}: pass a --cache folder you can write to"
        ) from None
    except filelock.Timeout:
        raise StoreInUseError(
            f"another extraction is writing {path} (lock {lock_path} is held): "
            "wait for it to finish"
        ) from None
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: a filesystem whose locks fail
        raise StoreInUseError(
            f"cannot lock {lock_path}: its filesystem does not support file locks "
            f"({exc.strerror or exc}; some network filesystems); nothing was written: use "
            "a local disk for --cache"
        ) from None
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while held: no other writer can be inside
        lock.release()


def _create_h5(path: Path) -> Any:
    """h5py.File(path, "w"), its lock or permission failure as one XrayError (never corrupt)."""
    import h5py

    try:
        return h5py.File(path, "w")
    except OSError as exc:  # a filesystem without locks, or no permission
        raise open_error(path, exc, writing=True) from None


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
        doc = json.dumps(provenance, indent=2).encode()
        atomic_write_bytes(self.folder / "provenance.json", doc)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def has_chunks(self) -> bool:
        """Any finished chunk is here (work a later run resumes from)."""
        return self.folder.is_dir() and any(self.folder.glob("*.npz"))

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
        atomic_write_bytes(self.chunk_path(split, start), buf.getvalue(), kept=KEPT)

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

        counts: dict[str, int] = {}
        skipped: list[str] = []
        seconds = 0.0
        text = h5py.string_dtype()
        # Multi-label datasets: a (N, L) float32 `targets` dataset per split (NaN = masked).
        first = next((r for recs in records.values() for r in recs), None)
        n_targets = len(first.targets) if first is not None and first.targets is not None else 0
        with (
            atomic_path(self.store, kept=KEPT, sync_folder=True) as tmp,
            _create_h5(tmp) as fh,
        ):
            for split in SPLIT_NAMES:
                group = fh.create_group(split)
                rows = (max(1, chunk_rows),)
                # fletcher32: a checksum per chunk, verified by HDF5 on every read, so bytes
                # damaged on disk raise instead of reading as wrong features (issue #27). HDF5
                # allows no filter on variable-length strings (keys, groups).
                feats = group.create_dataset(
                    "features",
                    (0, feature_dim),
                    dtype=dtype,
                    maxshape=(None, feature_dim),
                    chunks=(rows[0], feature_dim),
                    fletcher32=True,
                )
                cols = {
                    name: group.create_dataset(
                        name, (0,), dtype=dt, maxshape=(None,), chunks=rows,
                        fletcher32=dt != text,
                    )
                    for name, dt in (("labels", "int64"), ("keys", text), ("groups", text))
                }  # fmt: skip
                targets = None
                if n_targets:
                    targets = group.create_dataset(
                        "targets", (0, n_targets), dtype="float32", maxshape=(None, n_targets),
                        chunks=(rows[0], n_targets), fletcher32=True,
                    )  # fmt: skip
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
                    if targets is not None:
                        targets.resize(n + m, axis=0)
                        targets[n : n + m] = np.array([r.targets for r in recs], dtype=np.float32)
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
        self.discard()
        return counts, skipped, seconds
