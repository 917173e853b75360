"""The decoded-image cache: resized uint8 pixels in one temp file, shared by loader workers."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np


class DecodedCache:
    """Decoded-and-resized uint8 images in one append-only temp file, shared by loader workers.

    The main process appends each image the loader hands back (`put`); workers read entries
    through a read-only memory map of the file, so the cache is shared through the page cache
    by any number of workers under any start method (fork, spawn, forkserver), and being
    file-backed it is never lost to memory pressure, only slower. Pickled, it carries the file
    path and a snapshot of the index: workers see what was cached before their epoch began.
    Grayscale images (all three channels equal, as radiographs are) are stored as (H, W),
    a third of (H, W, 3).
    """

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.used = 0
        self.entries: dict[str, tuple[int, int, int, int]] = {}
        """key -> (byte offset, height, width, channels 1 or 3)."""
        self.path: str | None = None
        self._owner = os.getpid()
        self._file: Any = None
        self._map: np.ndarray | None = None
        self._finalizer: weakref.finalize[Any, DecodedCache] | None = None

    def has_room(self) -> bool:
        """Whether another image may still fit under the budget."""
        return self.used < self.budget

    def get(self, key: str) -> np.ndarray | None:
        """The cached pixels of `key` (a fresh (H, W) or (H, W, 3) uint8 array), or None."""
        entry = self.entries.get(key)
        if entry is None or self.path is None:
            return None
        offset, h, w, c = entry
        end = offset + h * w * c
        if self._map is None or len(self._map) < end:
            # Mapped lazily in each process, and again when the file has grown past the map.
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        flat = np.array(self._map[offset:end])  # a copy: PIL may keep a reference
        return flat.reshape((h, w) if c == 1 else (h, w, 3))

    def put(self, key: str, pixels: np.ndarray) -> bool:
        """Append an image's pixels (main process); False when over budget or on a write error."""
        if key in self.entries:
            return True
        gray = pixels.ndim == 3 and bool(
            (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
        )
        data = np.ascontiguousarray(pixels[..., 0] if gray else pixels, dtype=np.uint8)
        if self.used + data.nbytes > self.budget:
            self.budget = self.used  # full: workers stop shipping pixels back
            return False
        try:
            if self._file is None:
                folder = tempfile.mkdtemp(prefix="xray-imagecache-")
                named = os.path.join(folder, "pixels.u8")
                # Unbuffered: each write is in the file before a later map reads it.
                self._file = open(named, "ab", buffering=0)  # noqa: SIM115 (closed by finalizer)
                self.path = named
                by_fd = f"/proc/{os.getpid()}/fd/{self._file.fileno()}"
                if os.path.exists(by_fd):
                    # Linux: readers open it through this process's descriptor, so the name can
                    # go now and even a SIGKILLed run leaves nothing in the temp dir.
                    os.unlink(named)
                    os.rmdir(folder)
                    self.path = by_fd
                self._finalizer = weakref.finalize(
                    self, _remove_cache, self._file, folder, self._owner
                )
            self._file.write(data.tobytes())
        except OSError:
            self.budget = self.used  # a full or read-only temp dir: keep decoding instead
            return False
        h, w = data.shape[:2]
        self.entries[key] = (self.used, h, w, 1 if data.ndim == 2 else 3)
        self.used += data.nbytes
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "used": self.used,
            "entries": dict(self.entries),
            "path": self.path,
            "_owner": self._owner,
            "_file": None,
            "_map": None,
            "_finalizer": None,
        }


def _remove_cache(file: Any, folder: str, owner: int) -> None:
    """Close and delete a cache file (if still named); only in the process that made it."""
    if os.getpid() != owner:
        return
    file.close()
    shutil.rmtree(folder, ignore_errors=True)
