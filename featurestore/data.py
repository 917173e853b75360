"""Datasets as one in-memory manifest: Kermany/ImageFolder folders, CSV manifests, MedMNIST npz."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # PIL and numpy only where images are actually read
    from PIL import Image

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
DatasetKind = Literal["folder", "csv", "npz"]
POSITIVE_CLASS = "PNEUMONIA"


@dataclass(frozen=True)
class Record:
    """One image of the dataset."""

    key: str
    """Stable identifier: the path relative to the dataset root in POSIX form
    (`train/NORMAL/IM-0115-0001.jpeg`), or `train/000012` for an npz array row."""
    label: int
    """Index into `Manifest.class_names`."""
    split: Split
    """The split the image is used in (after carving a validation set)."""
    group: str
    """Patient id (`person12`, `IM-0115`), else the file stem: images of one group never
    straddle train and val."""
    source_split: Split
    """The split the image was given in on disk, before any carving."""


@dataclass(frozen=True)
class CarveInfo:
    """How a validation set was carved from train (recorded in stores and runs)."""

    seed: int
    fraction: float
    min_val: int
    moved_images: int
    moved_patients: int
    kept_original_val: int

    def as_dict(self) -> dict[str, int | float]:
        return {
            "seed": self.seed,
            "fraction": self.fraction,
            "min_val": self.min_val,
            "moved_images": self.moved_images,
            "moved_patients": self.moved_patients,
            "kept_original_val": self.kept_original_val,
        }


@dataclass(frozen=True)
class Manifest:
    """Every image of a dataset with its label, split and patient; deterministic order.

    Records are sorted by split (train, val, test) then key, so the same files always give
    the same order whatever the file system returns.
    """

    root: Path
    """Dataset folder, or the CSV's folder, or the npz file itself."""
    kind: DatasetKind
    class_names: tuple[str, ...]
    records: tuple[Record, ...]
    carve: CarveInfo | None = None
    name: str = field(default="")
    """Short dataset name used in cache paths (the folder or file stem)."""

    def split(self, split: Split) -> list[Record]:
        """Records of one split, in manifest order."""
        return [r for r in self.records if r.split == split]

    @property
    def positive_index(self) -> int:
        """Index of the positive class: PNEUMONIA when present, else the last class."""
        if POSITIVE_CLASS in self.class_names:
            return self.class_names.index(POSITIVE_CLASS)
        return len(self.class_names) - 1

    def open_image(self, key: str, *, min_size: int | None = None) -> Image.Image:
        """Decode one image to 3-channel RGB (reduced-scale JPEG decoding down to min_size)."""
        raise NotImplementedError
