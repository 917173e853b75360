"""A persistent cache of file content digests, keyed by what `stat` says about each file.

Checking that a feature store is fresh means knowing every image's content digest. Hashing
every byte of a 500 GB dataset for a head that trains in a second is the cost this module
removes: as version-control indexes do (git's index), a digest is reused while the file's
(size, mtime_ns, ctime_ns, inode) are those recorded when it was hashed, so an unchanged
dataset costs one `stat` per file. Any write to a file changes its mtime and ctime (and
usually its size), so it is re-hashed; `rehash=True` re-hashes everything regardless.

Racy entries: a file modified within the file system's timestamp granularity of being hashed
could keep its recorded mtime. As git does, entries whose mtime is less than `RACY_SECONDS`
before the hash began are not trusted later: such files are hashed again next time.

The cache lives under xray's cache folder (never beside the data), one JSON file per dataset
root, replaced atomically (temporary file + rename): concurrent processes each write a whole
file, the last one wins, and a lost entry only costs a re-hash. An unreadable cache file is
ignored (everything is hashed and the file rewritten).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from featurestore import fileio

FORMAT = 1
RACY_SECONDS = 2.0
"""An entry is trusted only if its file was last modified this long before it was hashed."""


def file_digest(path: Path | str) -> str:
    """blake2b hex digest of a file's bytes: the dataset fingerprint's content hash."""
    return fileio.file_digest(Path(path), algorithm="blake2b")


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class DigestCache:
    """Content digests of the files under one dataset root, reused while their stat matches.

    `folder` is where cache files go (e.g. `cache/.digests`); None keeps nothing between
    calls (every file is hashed, as before this cache existed). Use as a context manager, or
    call `save()`: entries are written once, at the end.
    """

    def __init__(self, folder: Path | None, root: Path, *, rehash: bool = False) -> None:
        self.root = Path(root).resolve()
        self.rehash = rehash
        self.path: Path | None = None
        if folder is not None:
            name = hashlib.sha256(str(self.root).encode()).hexdigest()[:20]
            self.path = Path(folder) / f"{name}.json"
        self._entries: dict[str, list[Any]] = {} if rehash else self._load()
        self._fresh: dict[str, list[Any]] = {}
        self.hashed = 0
        """Files hashed by this object (the others were answered by `stat` alone)."""
        self.reused = 0
        """Files whose recorded digest was reused."""

    def _load(self) -> dict[str, list[Any]]:
        if self.path is None:
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or torn: start afresh (a re-hash is always correct)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return {}
        if doc.get("root") != str(self.root) or not isinstance(doc.get("files"), dict):
            return {}
        return doc["files"]

    def digest(self, relative: str) -> str:
        """The content digest of `root / relative`: from the cache when its stat is unchanged.

        Raises OSError when the file cannot be read (the caller words it).
        """
        path = os.path.join(self.root, relative)  # str paths: pathlib costs ~10 µs a file
        st = os.stat(path)
        key = _stat_key(st)
        entry = self._entries.get(relative)
        if (
            entry is not None
            and isinstance(entry, list)
            and len(entry) == 3
            and entry[0] == key
            and isinstance(entry[1], str)
        ):
            self.reused += 1
            self._fresh[relative] = entry
            return entry[1]
        began_ns = time.time_ns()
        value = file_digest(path)
        self.hashed += 1
        # Trusted later only when modified well before this hash began (see RACY_SECONDS).
        trusted = st.st_mtime_ns < began_ns - int(RACY_SECONDS * 1e9)
        self._fresh[relative] = [key, value, trusted]
        if trusted:
            self._entries[relative] = [key, value, True]
        return value

    def save(self) -> None:
        """Write the trusted entries of the files seen by this object, atomically.

        Files not asked about are dropped (the fingerprint asks about every file, so they
        were removed from the dataset).
        A full disk or read-only cache folder is not an error: the cache is an optimisation.
        """
        if self.path is None or not (self.hashed or self.rehash):
            return  # nothing learned: leave the file as it is
        files = {k: v for k, v in self._fresh.items() if v[2]}
        doc = {"format": FORMAT, "root": str(self.root), "files": files}
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
            tmp = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                # dumps, not dump: json.dump to a file skips the C encoder (~10x slower).
                handle.write(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, self.path)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.save()
