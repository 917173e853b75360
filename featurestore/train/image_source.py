"""Images streamed through decoding threads or DataLoader workers: decode, cache, seeded
augmentation, collate."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from featurestore import distributed
from featurestore.data import SPLITS, Split
from featurestore.data.pixel_cache import resized_image
from featurestore.errors import XrayError
from featurestore.train.image_cache import DecodedCache
from featurestore.train.sources import drop_lonely_last, epoch_generator, steps_for

if TYPE_CHECKING:
    from featurestore.data import Manifest, Record
    from featurestore.data.pixel_cache import PixelCache
    from featurestore.models import Preprocessing


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


ImageItem = tuple[Tensor, "int | Tensor", str, "np.ndarray | None"]
"""(x (3, S, S), label (or (L,) targets), key, freshly decoded pixels to cache or None)."""


class _ImageDataset(torch.utils.data.Dataset[ImageItem]):
    """One record per item: cached pixels (this run's `DecodedCache`, else the persistent
    pixel cache), or PIL reduced-scale decode + the preprocessing's resize step; then augment
    -> preprocess (whose resize is then a no-op)."""

    def __init__(
        self,
        manifest: Manifest,
        records: list[Record],
        preprocessing: Preprocessing,
        augment: Any | None,
        cache: DecodedCache | None = None,
        augment_seed: int = 0,
        pixel_cache: PixelCache | None = None,
    ):
        self.manifest = manifest
        self.records = records
        self.preprocessing = preprocessing
        self.augment = augment
        self.cache = cache
        self.augment_seed = augment_seed
        self.pixel_cache = pixel_cache

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
            # The preprocessing's own resize step (what extraction caches too), so cached
            # and fresh images are the same pixels: short side = preprocessing.resize, L or RGB.
            image, _ = resized_image(self.manifest, rec.key, self.preprocessing, self.pixel_cache)
            if self.cache is not None and self.cache.has_room():
                fresh = np.asarray(image)  # (H, W) or (H, W, 3) uint8, for the main process
            image = image.convert("RGB")  # augmentation sees RGB, as it always did
        if self.augment is not None:
            # Seeded per (run seed, epoch, image): the same draws in any worker, in the main
            # process, cached or not; torchvision's random transforms draw from torch's RNG,
            # which is one per process: decoding threads take turns (the lock) to use it.
            with _AUGMENT_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.augment_seed * 1_000_003 + i) % 2**63)
                image = self.augment(image)
        # Multi-label: a (L,) float32 target (NaN = masked) instead of the class index.
        target = rec.label if rec.targets is None else torch.tensor(rec.targets)
        return self.preprocessing(image), target, rec.key, fresh


_AUGMENT_LOCK = threading.Lock()


class _Positions(torch.utils.data.Dataset[int]):
    """Item i -> i: run through a DataLoader, yields its batches' positions in its order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def decoded_in_threads(
    dataset: torch.utils.data.Dataset[ImageItem],
    batches: Iterable[list[int]],
    threads: int,
    *,
    ahead: int = 2,
) -> Iterator[tuple[Tensor, Tensor, list[tuple[str, np.ndarray]]]]:
    """Collated batches whose items `threads` threads decode, `ahead` batches early.

    Pillow releases the GIL while decoding and resizing and torch while computing, so images
    decode in this process while the model trains: no forked workers whose own threads
    compete with torch's for the cores.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: deque[list[Future[ImageItem]]] = deque()
    todo = iter(batches)
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="xray-decode")

    def submit() -> bool:
        positions = next(todo, None)
        if positions is not None:
            pending.append([pool.submit(dataset.__getitem__, i) for i in positions])
        return positions is not None

    try:
        for _ in range(ahead):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield collate_images([f.result() for f in futures])
    finally:  # also when the consumer stops early
        pool.shutdown(wait=True, cancel_futures=True)


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
    `threads` > 0 decodes in that many threads of this process instead of `workers` loader
    processes (the CPU default of `xray finetune`): the same batches, bit for bit.

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
        threads: int = 0,
        pixel_cache: PixelCache | None = None,
    ):
        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        if workers < 0 or threads < 0:
            raise XrayError(f"--workers must be 0 or more, got {min(workers, threads)}")
        if not cache_mb >= 0:
            raise XrayError(f"the image cache budget must be 0 MB or more, got {cache_mb}")
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.class_names = tuple(manifest.class_names)
        self.positive_index = manifest.positive_index
        self.task = manifest.task
        """`binary`, `multiclass` or `multilabel` (y is then (B, L) float targets)."""
        self.batch_size = batch_size
        self.workers = workers
        self.threads = threads
        self.seed = seed
        self.augment = radiograph_augmentation(hflip=hflip) if augment else None
        self.pin_memory = pin_memory
        self.cache = DecodedCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
        # Decoded, resized images shared with extraction and other runs (cache/.pixels):
        # the first epoch reads what an `extract` at the same resize already decoded.
        self.pixel_cache = pixel_cache
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
            pixel_cache=(
                self.pixel_cache.share(self.workers)
                if self.pixel_cache is not None and self.workers > 0 and self.threads == 0
                else self.pixel_cache
            ),
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
        threaded = self.threads > 0 and not (cached and self.cached_in_main)
        loader = torch.utils.data.DataLoader(
            # Threads: the loader only draws the batches' positions, in the same order (the
            # same generator draws) as it would load the images themselves.
            _Positions(len(dataset)) if threaded else dataset,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=0 if threaded else workers,
            # Seeds the shuffle (differently per rank); augmentation is seeded per image.
            generator=epoch_generator(self.seed, epoch * self.world + self.rank),
            worker_init_fn=seed_worker,
            drop_last=train and drop_lonely_last(n, self.batch_size),
            pin_memory=self.pin_memory and not threaded,
            persistent_workers=False,
            collate_fn=list if threaded else collate_images,
        )
        batches = decoded_in_threads(dataset, loader, self.threads) if threaded else loader
        for x, y, fresh in batches:
            if self.cache is not None:
                for key, pixels in fresh:
                    self.cache.put(key, pixels)
            yield x, y

    def train_size(self) -> int:
        """Training images per epoch for this rank: a DistributedSampler gives ceil(N / world)."""
        return -(-len(self._records["train"]) // self.world)

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch for this rank at `batch_size`."""
        return steps_for(self.train_size(), self.batch_size)

    def eval_positions(self, split: Split) -> np.ndarray:
        """Positions in `records(split)` of this rank's unshuffled batches (all, outside torchrun).

        Strided (rank, rank + world, ...) without padding: gathered by position, every image
        of a split is scored exactly once.
        """
        return np.arange(len(self._records[split]))[self.rank :: self.world]

    def records(self, split: Split) -> tuple[list[str], list[str], np.ndarray]:
        """(keys, groups, labels) in `batches(shuffle=False)` order (manifest order)."""
        recs = self._records[split]
        if self.task == "multilabel":  # (N, L) float targets, NaN = masked
            targets = np.array([r.targets for r in recs], dtype=np.float32)
            return [r.key for r in recs], [r.group for r in recs], targets
        labels = np.array([r.label for r in recs], dtype=np.int64)
        return [r.key for r in recs], [r.group for r in recs], labels
