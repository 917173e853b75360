"""The pixel cache: each image decoded once per resize rule, its resized uint8 pixels kept on disk.

A study extracts several backbones at one image size from the same files, and fine-tuning
reads every image once per epoch: each of those used to decode every JPEG again (~10 ms of
a core for a 2,000 px radiograph in draft mode, ~25 ms in full). The cache keeps the result
of the decode and of the preprocessing's *resize step only* (short side -> `resize`, or
`resize` x `resize` when squashing), keyed by the file's content digest and the resize rule,
so every backbone whose preprocessing resizes the same way (torchvision's resnet50 and
densenet121 at 224 px both resize to 256, bilinear) and every epoch after the first reads
~80 KB of pixels instead. Center crop, channels and normalisation still run per consumer, so
the cached path gives the same pixels, bit for bit, as decoding.

Layout: `<cache_dir>/.pixels/<rule tag>/<digest[:2]>/<digest>.npy`, one uint8 array per image,
(H, W) when all three channels are equal (radiographs: a third of the bytes), else (H, W, 3).
Each entry is written to a temporary file and renamed, so concurrent writers (loader
workers, torchrun ranks, two studies) never expose a torn entry; any unreadable entry is a
miss. Keying by content (the blake2b digest of the bytes about to be decoded, computed from
the same buffer) means a modified file can never be served its old pixels.

The limit (`--pixel-cache-gb`, all rules together) is checked before each write; once
reached, nothing more is added (entries are never evicted: delete the folder to reclaim the
space). Several writing processes each get a share of what is left, so the total stays
under the limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from featurestore.config import PIXEL_CACHE_GB
from featurestore.data.formats import printable
from featurestore.data.images import INTENSITY_RULE, ImageDecodeError, decode_image, is_dicom

if TYPE_CHECKING:
    from PIL import Image

    from featurestore.data.manifest import Manifest


class Preprocessing(Protocol):
    """The resize step of `featurestore.models.Preprocessing` (data sits below models, so the
    cache names only what it reads)."""

    @property
    def resize(self) -> int:
        """Short side (or both sides when `squash`) in pixels."""

    @property
    def interpolation(self) -> str: ...

    @property
    def squash(self) -> bool: ...


PIXELS_FOLDER = ".pixels"
"""Where the cache lives under xray's cache folder (beside the stores and `.digests`)."""
DEFAULT_PIXEL_CACHE_GB = PIXEL_CACHE_GB
"""The default limit in GB (`featurestore.config.PIXEL_CACHE_GB`)."""
DECODE_VERSION = "draft-v1"
"""How files are decoded before the resize (Pillow draft mode down to the resize side)."""


def resize_rule(pre: Preprocessing) -> dict[str, Any]:
    """What decides the resized pixels of a file: its part of the cache key (JSON-ready)."""
    return {
        "resize": int(pre.resize),
        "interpolation": str(pre.interpolation),
        "squash": bool(pre.squash),
        "intensity": INTENSITY_RULE,
        "decode": DECODE_VERSION,
    }


def resize_image(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """The preprocessing's resize step alone: RGB or L image -> short side `pre.resize` (or
    squashed), in the image's mode.

    Exactly the first step of `Preprocessing.pixels`, which is a no-op on its result (Pillow
    returns a copy when the size already matches), so cached and fresh pixels agree.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    size = [pre.resize, pre.resize] if pre.squash else pre.resize
    out: Image.Image = F.resize(image, size, interpolation=InterpolationMode(pre.interpolation))
    return out


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files below `folder` (0 when it does not exist)."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


class PixelCache:
    """Resized uint8 pixels by (content digest, resize rule) under `cache_dir/.pixels`.

    `limit_bytes` bounds the whole `.pixels` folder (every rule); 0 reads what is there but
    adds nothing. Thread-safe; pickled (to loader workers) it carries its remaining budget,
    which `share` divides between several writing processes.
    """

    def __init__(self, cache_dir: Path, rule: Mapping[str, Any], *, limit_bytes: int) -> None:
        self.root = Path(cache_dir) / PIXELS_FOLDER
        text = json.dumps(dict(rule), sort_keys=True)
        tag = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.folder = self.root / f"r{rule.get('resize', 0)}-{tag}"
        self.rule = dict(rule)
        self.limit = max(0, int(limit_bytes))
        self.start_bytes = folder_bytes(self.root) if self.limit > 0 else 0
        """The folder's size when this cache was opened (all rules)."""
        self.budget = max(0, self.limit - self.start_bytes)
        """Bytes this object may still add."""
        self.added = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def share(self, parts: int) -> PixelCache:
        """This cache with 1/`parts` of the remaining budget: one per writing process."""
        clone = PixelCache.__new__(PixelCache)
        clone.__setstate__(self.__getstate__())
        clone.budget = max(0, self.budget - self.added) // max(1, parts)
        clone.added = 0
        return clone

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        """The cached (H, W) or (H, W, 3) uint8 pixels of the content `digest`, or None."""
        try:
            pixels = np.load(self._path(digest), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            with self._lock:
                self.misses += 1
            return None
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            return None  # not ours: decode instead
        with self._lock:
            self.hits += 1
        return pixels

    def put(self, digest: str, image: Image.Image) -> bool:
        """Keep a resized L or RGB image's pixels; False when over the limit or on a write error."""
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
        if pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
            pixels = np.ascontiguousarray(pixels[..., 0])  # grey: one channel, a third of it
        size = pixels.nbytes + 128  # the .npy header
        with self._lock:
            if self.added + size > self.budget:
                return False
            self.added += size
        target = self._path(digest)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
            tmp = name
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, pixels, allow_pickle=False)
            os.replace(tmp, target)
            tmp = None
        except OSError:
            with self._lock:
                self.budget = self.added  # a full or read-only disk: stop writing
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return True

    def size_bytes(self) -> int:
        """Bytes on disk under `.pixels` now (every rule; scans the folder)."""
        return folder_bytes(self.root)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def open_pixel_cache(
    cache_dir: Path | None, pre: Preprocessing, limit_gb: float
) -> PixelCache | None:
    """The pixel cache of `pre`'s resize rule under `cache_dir`; None when off (no folder, or
    a limit of 0).

    Raises:
        XrayError (ImageDecodeError's base): a negative or non-numeric limit.
    """
    from featurestore.errors import XrayError

    if not limit_gb >= 0:
        raise XrayError(f"--pixel-cache-gb must be 0 or more, got {limit_gb}")
    if cache_dir is None or limit_gb == 0:
        return None
    return PixelCache(cache_dir, resize_rule(pre), limit_bytes=int(limit_gb * 1e9))


def resized_image(
    manifest: Manifest, key: str, pre: Preprocessing, cache: PixelCache | None
) -> tuple[Image.Image, bool]:
    """(image `key` decoded and resized by `pre`'s resize step, L for a greyscale file and RGB
    otherwise, whether it was cached).

    The file's bytes are read once: hashed for the cache key and, on a miss, decoded from the
    same buffer, so the cache never pairs a digest with other content. npz datasets (arrays,
    not files) and `cache=None` decode every time.

    Raises:
        ImageDecodeError: the file is missing, empty or not a readable image.
    """
    from PIL import Image

    if cache is None or manifest.kind == "npz":
        return resize_image(manifest.open_image(key, min_size=pre.resize, grey=True), pre), False
    path = Path(manifest.root) / key
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{printable(str(path))}: file not found") from None
    except OSError as exc:
        raise ImageDecodeError(
            f"{printable(str(path))}: cannot read ({exc.strerror or exc})"
        ) from None
    # The fingerprint's content digest (`featurestore.data.digests.file_digest`): blake2b.
    digest = hashlib.blake2b(data).hexdigest()
    pixels = cache.get(digest)
    if pixels is not None:
        return Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB"), True
    # DICOM is routed by name as well as content: decode it from the path as always.
    source: Path | bytes = path if is_dicom(path) else data
    image = resize_image(decode_image(source, min_size=pre.resize, name=str(path), grey=True), pre)
    cache.put(digest, image)
    return image, False
