"""Writing files so that a kill or a full disk never leaves a torn one, and hashing them.

Every file xray writes (store chunks and stores, checkpoints, run folders, reports, plots) goes
through `atomic_path` or `atomic_dir`: it is written under a hidden temporary name beside its
destination, flushed to disk, then renamed over it (a rename within one folder is atomic on
POSIX and Windows). A failure at any point removes the temporary and leaves the destination as it
was; a full disk becomes one `XrayError` saying what to free (`errors.disk_errors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from featurestore.errors import disk_errors

BLOCK = 1 << 20
"""Bytes read per step when hashing (1 MiB)."""


def temporary_sibling(path: Path) -> Path:
    """`<folder>/.<name>.tmp`: hidden, in the same folder (so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp")


def fsync_path(path: Path) -> None:
    """Flush a file's (or, on POSIX, a folder's) contents to the disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # Windows cannot open folders; their entries are durable on close
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, kept: str = "", sync_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends cleanly it replaces `path`.

    The temporary is fsynced before the rename, so a reader never sees a torn file. With
    `sync_folder` the folder is fsynced after the rename too, so the rename itself survives a
    power cut (worth it for a store, not for a chunk that is cheap to recompute). `kept` ends
    the full-disk message (e.g. " (finished chunks are kept)").

    Raises:
        XrayError: the disk (or quota) filled up while writing; nothing torn is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.unlink(missing_ok=True)
    try:
        with disk_errors(path, kept=kept):
            yield tmp
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, kept: str = "") -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, kept=kept) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: Path, *, replace: bool = False, claimed: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; when the block ends cleanly it becomes `path`.

    With `replace`, an existing `path` is swapped out only after the new folder is complete.
    Without it, an existing `path` is an error (FileExistsError: callers choose unique names).
    `claimed`: the caller already made the temporary folder itself (`claim_dir`), so it is
    used as it is, never removed and made again (another process could claim it in between).

    Raises:
        XrayError: the disk filled up while writing; the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    if not claimed:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        with disk_errors(path):
            yield tmp
        if path.exists():
            if not replace:
                raise FileExistsError(f"{path} exists")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def claim_dir(parent: Path, name: str) -> Path:
    """A folder name under `parent` that no other writer holds: `name`, else `name-2`, ...

    The claim is the exclusive creation of the temporary sibling (`mkdir` fails when it
    exists), so two processes writing into one folder at the same second never pick the same
    name, and neither removes the other's work. Write into it with `atomic_dir(path,
    claimed=True)`; returns the final path (which does not exist yet).
    """
    parent.mkdir(parents=True, exist_ok=True)
    final, n = parent / name, 2
    while True:
        if not final.exists():
            try:
                temporary_sibling(final).mkdir()
            except FileExistsError:
                pass
            else:
                if not final.exists():  # finished by another writer between the two checks
                    return final
                temporary_sibling(final).rmdir()
        final, n = parent / f"{name}-{n}", n + 1


def file_digest(path: Path, *, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (any `hashlib` algorithm name).

    sha256 identifies weights files (as published checksums do); the dataset fingerprint uses
    blake2b, which is faster in pure software on CPUs without SHA extensions.
    """
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
