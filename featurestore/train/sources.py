"""Where batches come from: the `Source` protocol, and cached features held in memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from featurestore.data import SPLITS, Split
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from featurestore.store import FeatureStore


class Source(Protocol):
    """Everything the trainer and evaluation ask of where batches come from.

    Cached features (`FeatureSource`) and streamed images (`ImageSource`) both implement it;
    the trainer never probes a source for optional attributes.
    """

    class_names: tuple[str, ...]
    positive_index: int
    batch_size: int
    """Training batch size (per process under torchrun)."""
    streaming: bool
    """True when an epoch takes long enough for a progress bar over its images (streamed
    images); False when epochs take milliseconds (cached features: one bar over epochs)."""

    def batches(
        self, split: Split, *, shuffle: bool, epoch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(x, y) batches of a split; `shuffle` (training) reorders per (seed, epoch)."""
        ...

    def records(self, split: Split) -> tuple[list[str], list[str], np.ndarray]:
        """(keys, groups, labels (N,)) of the whole split, in `batches(shuffle=False)` order."""
        ...

    def train_size(self) -> int:
        """Training images this process sees per epoch (ceil(N / world) under torchrun)."""
        ...

    def steps_per_epoch(self) -> int:
        """Optimizer steps per training epoch: the learning-rate schedule's unit."""
        ...

    def eval_positions(self, split: Split) -> np.ndarray | None:
        """Positions in `records(split)` of this process's evaluation batches under torchrun
        (gathered by position afterwards); None: this process scores the whole split."""
        ...


def steps_for(n: int, batch_size: int) -> int:
    """Optimizer steps over `n` shuffled samples: a lonely last sample is dropped (see below)."""
    return max(1, n // batch_size + (n % batch_size > 1))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by (run seed, epoch): each epoch shuffles differently, repeatably."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


def _float32_copy(features: np.ndarray) -> Tensor:
    """(N, D) features as a new C-contiguous float32 tensor (never a view of the input)."""
    return torch.from_numpy(np.array(features, dtype=np.float32, order="C", copy=True))


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
    targets: np.ndarray | None = None
    """Multi-label only: (N, L) float, 1 present, 0 absent, NaN masked; batches then yield
    these as y (B, L) instead of the class indices."""


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
        self._standardize = standardize
        # The float32 copy each split is trained from, standardised in place below: with a
        # float16 store's rows (from_stores) the features sit in memory once in float32 and
        # once, at half the size, as stored (`with_train_rows` re-standardises from them).
        x32 = {s: _float32_copy(sp.features) for s, sp in splits.items()}
        x_train = x32["train"]
        std = x_train.std(0, unbiased=False)  # (D,)
        self.constant_features = int((std <= 1e-6).sum())
        """Feature columns that hold one value for every train image (they carry nothing)."""
        self.all_zero = bool((x_train == 0).all())
        """Every train feature is exactly 0 (a backbone that output nothing)."""
        if standardize:
            # Statistics of TRAIN only, applied to every split: val/test never leak into them.
            self.mean = x_train.mean(0)  # (D,)
            self.std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features
        else:
            self.mean = torch.zeros(dim)
            self.std = torch.ones(dim)
        self._x: dict[Split, Tensor] = {}
        self._y: dict[Split, Tensor] = {}
        # Multi-label when the splits carry per-finding targets: y is then (N, L) float32.
        self.task = "multilabel" if splits["train"].targets is not None else None
        for split, sp in splits.items():
            # (x - mean) / std, element by element as before, without the two temporaries.
            self._x[split] = x32.pop(split).sub_(self.mean).div_(self.std)  # (N, D) float32
            if self.task == "multilabel":
                if sp.targets is None or np.shape(sp.targets) != (len(sp.labels), n_classes):
                    raise XrayError(f"{split}: targets must be (N, {n_classes}) for every split")
                self._y[split] = torch.from_numpy(np.asarray(sp.targets, dtype=np.float32))
            else:
                self._y[split] = torch.from_numpy(np.asarray(sp.labels, dtype=np.int64))

    @classmethod
    def from_store(
        cls,
        store: FeatureStore,
        *,
        batch_size: int = 256,
        seed: int = 0,
        standardize: bool = True,
        pooling: str | None = None,
    ) -> FeatureSource:
        """Load every split of a feature store into memory (only `pooling`'s columns)."""
        return cls.from_stores(
            [store], batch_size=batch_size, seed=seed, standardize=standardize, poolings=[pooling]
        )

    @classmethod
    def from_stores(
        cls,
        stores: Sequence[FeatureStore],
        *,
        batch_size: int = 256,
        seed: int = 0,
        standardize: bool = True,
        poolings: Sequence[str | None] | None = None,
    ) -> FeatureSource:
        """Several stores of one dataset side by side: features (N, D1 + D2 + ...) per split.

        Feature fusion: rows are matched by key, so every store must hold the same images in
        the same order (same dataset fingerprint, carve and classes); XrayError otherwise.
        `poolings[i]` picks columns of store i (None: all).
        """
        if not stores:
            raise XrayError("no feature store given")
        chosen = list(poolings) if poolings is not None else [None] * len(stores)
        first = stores[0]
        for other in stores[1:]:  # a single store is not compared with anything
            for key in ("dataset_fingerprint", "class_names", "positive_index", "carve"):
                if other.attrs.get(key) != first.attrs.get(key):
                    raise XrayError(
                        f"cannot fuse {first.path.name} and {other.path.name}: their "
                        f"{key.replace('_', ' ')} differ (extract both from the same dataset)"
                    )
        splits: dict[Split, FeatureSplit] = {}
        for split in SPLITS:
            parts = []
            base = None
            for store, pooling in zip(stores, chosen, strict=True):
                arr = store.split(split)
                if base is not None and arr.keys != base.keys:
                    raise XrayError(
                        f"cannot fuse {first.path.name} and {store.path.name}: their {split} "
                        "rows are different images or in another order (skipped images?)"
                    )
                base = base or arr
                columns = arr.features
                if pooling is not None:
                    start, stop = store.columns(pooling)
                    columns = columns[:, start:stop]
                # A float16 store's values are float16 numbers: held as such they cost half,
                # exactly (the float32 copy the trainer reads is made once, in __init__).
                if getattr(store, "attrs", {}).get("dtype") == "float16":
                    columns = columns.astype(np.float16)
                parts.append(columns)
                del arr
            assert base is not None
            features = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            splits[split] = FeatureSplit(
                features, np.asarray(base.labels), list(base.keys), list(base.groups),
                targets=base.targets,
            )  # fmt: skip
        return cls(
            splits,
            class_names=first.class_names,
            positive_index=first.positive_index,
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

    def with_train_rows(self, indices: np.ndarray) -> FeatureSource:
        """The same source trained on train rows `indices` only (a label-efficiency subset).

        Standardisation is recomputed from those rows: a study with that few labelled images
        would not have the statistics of the rest. Validation and test are unchanged.
        """
        idx = np.asarray(indices, dtype=np.int64)
        sp = self._splits["train"]
        train = FeatureSplit(
            np.asarray(sp.features)[idx],
            np.asarray(sp.labels)[idx],
            [sp.keys[i] for i in idx],
            [sp.groups[i] for i in idx],
            targets=None if sp.targets is None else np.asarray(sp.targets)[idx],
        )
        return FeatureSource(
            {**self._splits, "train": train},
            class_names=self.class_names,
            positive_index=self.positive_index,
            batch_size=self.batch_size,
            seed=self.seed,
            standardize=self._standardize,
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

    def train_size(self) -> int:
        """Training rows per epoch (features live in one process)."""
        return len(self._y["train"])

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch at `batch_size`."""
        return steps_for(self.train_size(), self.batch_size)

    def eval_positions(self, split: Split) -> None:
        """Cached features are scored whole in every process."""
        return None
