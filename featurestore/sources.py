"""Where batches come from: cached features held in memory, or images streamed through a loader."""

from __future__ import annotations

import random
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
    from PIL import Image

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


class _ImageDataset(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """Decodes one record per item: PIL (reduced-scale decode) -> augment -> preprocess."""

    def __init__(
        self,
        manifest: Manifest,
        records: list[Record],
        preprocessing: Preprocessing,
        augment: Any | None,
    ):
        self.manifest = manifest
        self.records = records
        self.preprocessing = preprocessing
        self.augment = augment
        self.min_size = int(getattr(preprocessing, "resize", 0)) or None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        rec = self.records[i]
        image: Image.Image = self.manifest.open_image(rec.key, min_size=self.min_size)
        if self.augment is not None:
            image = self.augment(image)
        return self.preprocessing(image), rec.label  # (3, S, S), int


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from its torch seed (set by the loader)."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ImageSource:
    """Images decoded and preprocessed by DataLoader workers; augmentation on train only.

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
    ):
        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        if workers < 0:
            raise XrayError(f"--workers must be 0 or more, got {workers}")
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.class_names = tuple(manifest.class_names)
        self.positive_index = manifest.positive_index
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.augment = radiograph_augmentation(hflip=hflip) if augment else None
        self.pin_memory = pin_memory
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
        dataset: torch.utils.data.Dataset[tuple[Tensor, int]] = _ImageDataset(
            self.manifest, records, self.preprocessing, self.augment if train else None
        )
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
            num_workers=self.workers,
            # Seeds the shuffle and every worker's torch seed: augmentation repeats per epoch
            # (and differs between ranks).
            generator=epoch_generator(self.seed, epoch * self.world + self.rank),
            worker_init_fn=seed_worker,
            drop_last=train and drop_lonely_last(n, self.batch_size),
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        yield from loader

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
