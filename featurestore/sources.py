"""Where batches come from: cached features held in memory, or images streamed through a loader."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from featurestore import distributed
from featurestore.data import SPLITS, Split
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from featurestore.backbones import Preprocessing
    from featurestore.data import Manifest, Record
    from featurestore.store import FeatureStore


class Source(Protocol):
    """Batches `(x, y)` per split for the trainer; `records` lists the unshuffled order."""

    class_names: tuple[str, ...]
    positive_index: int

    def batches(
        self, split: Split, *, shuffle: bool, epoch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]: ...

    def records(self, split: Split) -> tuple[list[str], list[str], np.ndarray]: ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by (run seed, epoch): each epoch shuffles differently, repeatably."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


def drop_lonely_last(n: int, batch_size: int) -> bool:
    """Drop the last training batch only when it would hold one sample (BatchNorm needs two)."""
    return n > batch_size and n % batch_size == 1


@dataclass(frozen=True)
class FeatureSplit:
    """One split of cached features."""

    features: np.ndarray
    """(N, D) float16/float32 backbone features."""
    labels: np.ndarray
    """(N,) int64 class indices."""
    keys: list[str]
    groups: list[str]


class FeatureSource:
    """Whole splits as float32 tensors in memory, standardised with train-split statistics.

    No backbone runs here: an epoch is a permutation of row indices and a few matrix slices.
    """

    streaming = False
    """Epochs take milliseconds: the trainer shows one bar over epochs, not over batches."""

    def __init__(
        self,
        splits: Mapping[Split, FeatureSplit],
        *,
        class_names: Sequence[str],
        positive_index: int,
        batch_size: int = 256,
        seed: int = 0,
        standardize: bool = True,
    ):
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise XrayError(f"feature source lacks split(s) {', '.join(missing)}")
        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        self.class_names = tuple(class_names)
        self.positive_index = int(positive_index)
        self.batch_size = batch_size
        self.seed = seed
        n_classes = len(self.class_names)
        dims = {s: np.asarray(sp.features).shape for s, sp in splits.items()}
        dim = dims["train"][1] if len(dims["train"]) == 2 else -1
        for split, sp in splits.items():
            if len(dims[split]) != 2 or dims[split][1] != dim:
                raise XrayError(f"{split} features have shape {dims[split]}, expected (N, {dim})")
            if not len(sp.labels) == len(sp.keys) == len(sp.groups) == dims[split][0]:
                raise XrayError(f"{split}: features, labels, keys and groups differ in length")
            if len(sp.labels) and (sp.labels.min() < 0 or sp.labels.max() >= n_classes):
                raise XrayError(f"{split} labels fall outside 0..{n_classes - 1}")
        if dims["train"][0] == 0 or dims["val"][0] == 0:
            raise XrayError("the train and val splits must not be empty")
        self._splits = dict(splits)
        x_train = torch.from_numpy(np.asarray(splits["train"].features, dtype=np.float32))
        if standardize:
            # Statistics of TRAIN only, applied to every split: val/test never leak into them.
            self.mean = x_train.mean(0)  # (D,)
            std = x_train.std(0, unbiased=False)  # (D,)
            self.std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features
        else:
            self.mean = torch.zeros(dim)
            self.std = torch.ones(dim)
        self._x: dict[Split, Tensor] = {}
        self._y: dict[Split, Tensor] = {}
        for split, sp in splits.items():
            x = torch.from_numpy(np.asarray(sp.features, dtype=np.float32))
            self._x[split] = ((x - self.mean) / self.std).contiguous()  # (N, D) float32
            self._y[split] = torch.from_numpy(np.asarray(sp.labels, dtype=np.int64))

    @classmethod
    def from_store(
        cls, store: FeatureStore, *, batch_size: int = 256, seed: int = 0, standardize: bool = True
    ) -> FeatureSource:
        """Load every split of a feature store into memory."""
        splits: dict[Split, FeatureSplit] = {}
        for split in SPLITS:
            arr = store.split(split)
            splits[split] = FeatureSplit(
                arr.features, np.asarray(arr.labels), list(arr.keys), list(arr.groups)
            )
        return cls(
            splits,
            class_names=store.class_names,
            positive_index=store.positive_index,
            batch_size=batch_size,
            seed=seed,
            standardize=standardize,
        )

    @classmethod
    def from_arrays(
        cls,
        features: Mapping[Split, np.ndarray],
        labels: Mapping[Split, np.ndarray],
        *,
        class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
        positive_index: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        standardize: bool = True,
    ) -> FeatureSource:
        """A source from in-memory arrays; keys are `<split>/<row>` and each row its own group."""
        splits = {
            s: FeatureSplit(
                np.asarray(features[s]),
                np.asarray(labels[s], dtype=np.int64),
                [f"{s}/{i:06d}" for i in range(len(labels[s]))],
                [f"{s}-{i}" for i in range(len(labels[s]))],
            )
            for s in features
        }
        return cls(
            splits,
            class_names=class_names,
            positive_index=positive_index,
            batch_size=batch_size,
            seed=seed,
            standardize=standardize,
        )

    @property
    def feature_dim(self) -> int:
        """D, the width of the features."""
        return int(self._x["train"].shape[1])

    def arrays(self, split: Split) -> tuple[Tensor, Tensor]:
        """The whole standardised split: (N, D) float32 features, (N,) int64 labels."""
        return self._x[split], self._y[split]

    def batches(
        self, split: Split, *, shuffle: bool, epoch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(x (B, D), y (B,)) batches; shuffled by a generator seeded with (seed, epoch)."""
        x, y = self._x[split], self._y[split]
        n = len(y)
        if not shuffle:
            # Evaluation: order is the stored order; bigger batches, same results.
            step = max(self.batch_size, 4096)
            for start in range(0, n, step):
                yield x[start : start + step], y[start : start + step]
            return
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch))
        stop = n - 1 if drop_lonely_last(n, self.batch_size) else n
        for start in range(0, stop, self.batch_size):
            idx = order[start : min(start + self.batch_size, stop)]
            yield x[idx], y[idx]

    def records(self, split: Split) -> tuple[list[str], list[str], np.ndarray]:
        """(keys, groups, labels) in `batches(shuffle=False)` order."""
        sp = self._splits[split]
        return list(sp.keys), list(sp.groups), self._y[split].numpy().copy()


def radiograph_augmentation(*, hflip: bool = False) -> Any:
    """Mild train-time augmentation on PIL images: ±7° rotation, ±5% shift, 90-110% scale,
    ±20% brightness/contrast; horizontal flips only on request (anatomy is not symmetric)."""
    from torchvision import transforms as T

    steps: list[Any] = [
        T.RandomAffine(
            degrees=7,
            translate=(0.05, 0.05),
            scale=(0.9, 1.1),
            interpolation=T.InterpolationMode.BILINEAR,
        ),
        T.ColorJitter(brightness=0.2, contrast=0.2),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


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


ImageItem = tuple[Tensor, int, str, "np.ndarray | None"]
"""(x (3, S, S), label, key, freshly decoded pixels to cache or None)."""


class _ImageDataset(torch.utils.data.Dataset[ImageItem]):
    """One record per item: cached pixels, or PIL reduced-scale decode + resize to the
    preprocessing's short side; then augment -> preprocess (whose resize is then a no-op)."""

    def __init__(
        self,
        manifest: Manifest,
        records: list[Record],
        preprocessing: Preprocessing,
        augment: Any | None,
        cache: DecodedCache | None = None,
        augment_seed: int = 0,
    ):
        from torchvision import transforms as T

        self.manifest = manifest
        self.records = records
        self.preprocessing = preprocessing
        self.augment = augment
        self.cache = cache
        self.augment_seed = augment_seed
        self.min_size = int(getattr(preprocessing, "resize", 0)) or None
        # The preprocessing's own first step, so cached and fresh images are the same pixels.
        self.resize = (
            T.Resize(self.min_size, interpolation=T.InterpolationMode(preprocessing.interpolation))
            if self.min_size
            else None
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageItem:
        """(x (3, S, S), label, key, resized pixels to cache or None when cached or no room)."""
        from PIL import Image

        rec = self.records[i]
        fresh: np.ndarray | None = None
        pixels = self.cache.get(rec.key) if self.cache is not None else None
        if pixels is not None:
            image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").convert("RGB")
        else:
            image = self.manifest.open_image(rec.key, min_size=self.min_size)
            if self.resize is not None:
                image = self.resize(image)  # short side = preprocessing.resize, uint8 RGB
            if self.cache is not None and self.cache.has_room():
                fresh = np.asarray(image)  # (H, W, 3) uint8, for the main process to keep
        if self.augment is not None:
            # Seeded per (run seed, epoch, image): the same draws in any worker, in the main
            # process, cached or not; torchvision's random transforms draw from torch's RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.augment_seed * 1_000_003 + i) % 2**63)
                image = self.augment(image)
        return self.preprocessing(image), rec.label, rec.key, fresh


def collate_images(
    items: list[ImageItem],
) -> tuple[Tensor, Tensor, list[tuple[str, np.ndarray]]]:
    """Stack (x (B, 3, S, S), y (B,)) and pass along the freshly decoded pixels to cache."""
    from torch.utils.data import default_collate

    x, y = default_collate([(item[0], item[1]) for item in items])
    return x, y, [(item[2], item[3]) for item in items if item[3] is not None]


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from its torch seed (set by the loader)."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


DEFAULT_CACHE_MB = 1024.0
"""Decoded-image cache budget: Kermany at 224 px (5,856 images, short side 232) needs ~450 MB."""


class ImageSource:
    """Images decoded and preprocessed by DataLoader workers; augmentation on train only.

    The first pass over each image decodes it (draft mode) and resizes it to the
    preprocessing's short side; those uint8 pixels go into a `DecodedCache` (up to `cache_mb`),
    so later epochs and evaluation passes decode nothing. Augmentation and cropping apply on
    top every time, seeded per (seed, epoch, image): the same batches cached or not and with
    any number of workers. `cached_in_main` (default: on when memory is not pinned, i.e. CPU
    training) reads splits that are wholly cached in the main process instead of workers.

    Under torchrun (a process group of several ranks when it is built) each rank streams its
    shard: train through a seeded DistributedSampler, evaluation splits as `eval_positions`.
    """

    streaming = True
    """Epochs take a while: the trainer shows a bar with throughput over batches."""

    def __init__(
        self,
        manifest: Manifest,
        preprocessing: Preprocessing,
        *,
        batch_size: int = 32,
        workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        hflip: bool = False,
        pin_memory: bool = False,
        cache_mb: float = DEFAULT_CACHE_MB,
        cached_in_main: bool | None = None,
    ):
        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        if workers < 0:
            raise XrayError(f"--workers must be 0 or more, got {workers}")
        if not cache_mb >= 0:
            raise XrayError(f"the image cache budget must be 0 MB or more, got {cache_mb}")
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.class_names = tuple(manifest.class_names)
        self.positive_index = manifest.positive_index
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.augment = radiograph_augmentation(hflip=hflip) if augment else None
        self.pin_memory = pin_memory
        self.cache = DecodedCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
        # A split whose images are all cached costs ~3 ms/image to read on one core, against
        # ~250 ms/image of CPU fwd+bwd; forked loader workers beside 2 torch threads measured
        # the trainer's steps a third slower on 2 cores. So on CPU (no pinned memory) cached
        # splits are read in the main process; feeding a GPU keeps its workers.
        self.cached_in_main = (not pin_memory) if cached_in_main is None else cached_in_main
        self._records = {s: manifest.split(s) for s in SPLITS}
        self.rank, self.world = distributed.rank(), distributed.world_size()
        for split in ("train", "val"):
            if not self._records[split]:
                raise XrayError(f"the dataset has no {split} images: check {manifest.root}")

    def batches(
        self, split: Split, *, shuffle: bool, epoch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(x (B, 3, S, S), y (B,)) batches; train batches augmented when shuffled."""
        from torch.utils.data import DistributedSampler, Subset

        records = self._records[split]
        train = split == "train" and shuffle
        dataset: torch.utils.data.Dataset[ImageItem] = _ImageDataset(
            self.manifest,
            records,
            self.preprocessing,
            self.augment if train else None,
            self.cache,
            augment_seed=(self.seed * 1_000_003 + epoch) % 2**62,
        )
        cached = self.cache is not None and all(r.key in self.cache.entries for r in records)
        workers = 0 if cached and self.cached_in_main else self.workers
        sampler: DistributedSampler[int] | None = None
        n = len(records)
        if self.world > 1 and shuffle:
            # Every rank draws the same seeded permutation and takes its ceil(N / world) slice
            # (padded with repeats so all ranks step together).
            sampler = DistributedSampler(
                dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
            )
            sampler.set_epoch(epoch)
            n = len(sampler)
        elif self.world > 1:
            positions = self.eval_positions(split)
            dataset, n = Subset(dataset, positions.tolist()), len(positions)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            # Seeds the shuffle (differently per rank); augmentation is seeded per image.
            generator=epoch_generator(self.seed, epoch * self.world + self.rank),
            worker_init_fn=seed_worker,
            drop_last=train and drop_lonely_last(n, self.batch_size),
            pin_memory=self.pin_memory,
            persistent_workers=False,
            collate_fn=collate_images,
        )
        for x, y, fresh in loader:
            if self.cache is not None:
                for key, pixels in fresh:
                    self.cache.put(key, pixels)
            yield x, y

    def eval_positions(self, split: Split) -> np.ndarray:
        """Positions in `records(split)` of this rank's unshuffled batches (all, outside torchrun).

        Strided (rank, rank + world, ...) without padding: gathered by position, every image
        of a split is scored exactly once.
        """
        return np.arange(len(self._records[split]))[self.rank :: self.world]

    def records(self, split: Split) -> tuple[list[str], list[str], np.ndarray]:
        """(keys, groups, labels) in `batches(shuffle=False)` order (manifest order)."""
        recs = self._records[split]
        labels = np.array([r.label for r in recs], dtype=np.int64)
        return [r.key for r in recs], [r.group for r in recs], labels
