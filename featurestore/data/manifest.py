"""The dataset manifest: records, patient ids, validation carving, fingerprint, loading."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from featurestore.errors import XrayError

if TYPE_CHECKING:  # PIL and rich only where images are actually read or progress is shown
    from PIL import Image
    from rich.progress import Progress

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
    targets: tuple[float, ...] | None = None
    """Multi-label datasets only: one value per finding (`Manifest.class_names`), 1.0 present,
    0.0 absent, NaN masked (uncertain under the `ignore` policy); `label` is then 0."""


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
    source: Path | None = None
    """What it was read from: the folder, the .csv file or the .npz file (for re-reading)."""
    label_scheme: str = "as-given"
    """How labels were read (`data.tasks.LabelScheme`): `as-given`, or `kermany3` (relabelled
    from file names); recorded in stores so `fit-head` re-reads the dataset the same way."""

    @property
    def task(self) -> str:
        """`multilabel` when records carry targets, else `binary` for two classes and
        `multiclass` for more (the kinds of `featurestore.tasks.Task`)."""
        if self.records and self.records[0].targets is not None:
            return "multilabel"
        return "binary" if len(self.class_names) == 2 else "multiclass"

    def split(self, split: Split) -> list[Record]:
        """Records of one split, in manifest order."""
        return [r for r in self.records if r.split == split]

    @property
    def positive_index(self) -> int:
        """Index of the positive class: PNEUMONIA when present, else the last class."""
        if POSITIVE_CLASS in self.class_names:
            return self.class_names.index(POSITIVE_CLASS)
        return len(self.class_names) - 1

    def open_image(
        self, key: str, *, min_size: int | None = None, grey: bool = False
    ) -> Image.Image:
        """Decode one image to 3-channel RGB (reduced-scale JPEG decoding down to min_size);
        `grey`: a greyscale file stays one channel (mode L, `decode_image`); npz arrays and
        DICOM files come back RGB either way."""
        from featurestore.data.images import decode_image, image_from_array, npz_array

        if self.kind == "npz":
            split, _, row = key.partition("/")
            images = npz_array(str(self.root), f"{split}_images", self.root.stat().st_mtime_ns)
            return image_from_array(images[int(row)])
        return decode_image(self.root / key, min_size=min_size, grey=grey)


# Kermany names: person12_bacteria_55.jpeg, person1222_virus_2071.jpeg, IM-0115-0001.jpeg and
# NORMAL2-IM-0115-0001.jpeg (the same patient as IM-0115).
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """Patient id from a Kermany file name (`person12`, `IM-0115`), else the file stem."""
    name = Path(filename).name
    for pattern in (_PERSON, _IM):
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(name).stem


def sorted_records(records: Iterable[Record]) -> tuple[Record, ...]:
    """Records in manifest order: split (train, val, test), then key."""
    return tuple(sorted(records, key=lambda r: (SPLITS.index(r.split), r.key)))


def carve_validation(
    m: Manifest, *, fraction: float = 0.1, min_val: int = 100, seed: int = 0
) -> Manifest:
    """Carve a stratified, patient-grouped val set from train when val has < min_val images.

    The original val images stay in val, train images of their patients join them (no patient
    straddles train and val), and one StratifiedGroupKFold fold of the remaining train patients
    (n_splits = round(1 / fraction)) moves to val. Test is never touched. Records are sorted
    by key first, so the carve depends only on the data and the seed, not on file order.
    """
    if not 0.0 < fraction <= 0.5:
        raise XrayError(f"validation fraction must be in (0, 0.5], got {fraction}")
    val = m.split("val")
    train = sorted(m.split("train"), key=lambda r: r.key)
    if len(val) >= min_val or not train:
        return m
    val_groups = {r.group for r in val}
    rest = [r for r in train if r.group not in val_groups]
    moved = {r.key for r in train if r.group in val_groups}
    n_splits = max(2, round(1.0 / fraction))
    groups = np.array([r.group for r in rest])
    n_groups = len(set(groups.tolist()))
    if n_groups < n_splits:
        raise XrayError(
            f"cannot carve a {fraction:.0%} validation set: train has {n_groups} patients outside "
            f"val, at least {n_splits} are needed; add a val split with >= {min_val} images"
        )
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([r.label for r in rest])  # (N,)
    if np.all(np.bincount(y) < n_splits):  # StratifiedGroupKFold needs one class that large
        raise XrayError(
            f"cannot carve a {fraction:.0%} validation set: no class has {n_splits} train images "
            f"outside val; add a val split with >= {min_val} images"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": fine, we pick the best fold.
        warnings.simplefilter("ignore", UserWarning)
        folds = [fold for _, fold in splitter.split(np.zeros(len(rest)), y, groups)]
    n_classes = len(m.class_names)
    target = np.bincount(y, minlength=n_classes) / len(y)

    def ratio_gap(fold: np.ndarray) -> float:
        return float(np.abs(np.bincount(y[fold], minlength=n_classes) / len(fold) - target).sum())

    train_classes = {r.label for r in train}

    def classes_emptied(fold: np.ndarray) -> set[int]:
        """Classes of train that would have no train image left after moving this fold."""
        stays = np.ones(len(rest), dtype=bool)
        stays[fold] = False
        return train_classes - {int(v) for v in np.unique(y[stays])}

    # A fold that would carve a class's last train patients into val is never chosen when
    # another fold keeps them (no model can learn a class it never sees).
    best = min(
        range(len(folds)), key=lambda i: (len(classes_emptied(folds[i])), ratio_gap(folds[i]), i)
    )
    emptied = classes_emptied(folds[best])
    if emptied:
        label = min(emptied)
        name = m.class_names[label]
        patients = sorted({r.group for r in train if r.label == label})
        raise XrayError(
            f"cannot carve a {fraction:.0%} validation set: class {name!r} would have no "
            f"train images, as the validation carve moved its only train patient(s) "
            f"({', '.join(patients[:3])}) to val (they have val images, or every fold takes "
            f"them); add train images of {name} from more patients, or give a val split with "
            f">= {min_val} images so nothing is carved"
        )
    moved |= {rest[i].key for i in folds[best]}
    records = [replace(r, split="val") if r.key in moved else r for r in m.records]
    carve = CarveInfo(
        seed=seed,
        fraction=fraction,
        min_val=min_val,
        moved_images=len(moved),
        moved_patients=len({r.group for r in train if r.key in moved}),
        kept_original_val=len(val),
    )
    return replace(m, records=sorted_records(records), carve=carve)


DIGESTS_FOLDER = ".digests"
"""Sub-folder of the cache folder holding the digest caches (`featurestore.data.digests`)."""


def dataset_fingerprint(
    m: Manifest,
    *,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    rehash: bool = False,
) -> str:
    """sha256 hex over (key, label, split as given, content digest) of every image, sorted.

    Content digests hash file bytes (not mtimes), so copies of a dataset share a fingerprint
    and any added, removed, renamed or modified file changes it. With `cache_dir`, digests are
    reused from `cache_dir/.digests/` while a file's (size, mtime, ctime, inode) are unchanged
    (one `stat` per file; see `featurestore.data.digests`); `rehash` hashes every file anyway.
    Raises XrayError naming a file that cannot be read.
    """
    from featurestore.data.digests import DigestCache

    folder = Path(cache_dir) / DIGESTS_FOLDER if cache_dir is not None else None
    digest = hashlib.sha256()
    digest.update(f"{m.kind}\0{','.join(m.class_names)}\n".encode())
    records = sorted(m.records, key=lambda r: r.key)
    root = Path(m.root)
    # npz: the one file is the content; keyed by its own name under its folder.
    cache = DigestCache(folder, root.parent if m.kind == "npz" else root, rehash=rehash)
    task = None
    if progress is not None and m.kind != "npz":
        task = progress.add_task("fingerprint", total=len(records), unit="img")
    try:
        if m.kind == "npz":
            digest.update(f"npz\0{cache.digest(root.name)}\n".encode())
        for r in records:
            content = "" if m.kind == "npz" else cache.digest(r.key)
            # Multi-label targets join the line (NaN for masked); single-label lines are
            # unchanged.
            targets = "" if r.targets is None else "\0" + ",".join(map(repr, r.targets))
            digest.update(f"{r.key}\0{r.label}\0{r.source_split}\0{content}{targets}\n".encode())
            if task is not None and progress is not None:
                progress.advance(task)
    except OSError as exc:
        where = exc.filename or root
        raise XrayError(
            f"cannot read {where} to check the dataset ({exc.strerror or exc}); "
            "fix its permissions or remove it from the dataset"
        ) from None
    cache.save()
    return digest.hexdigest()
