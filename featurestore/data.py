"""Datasets as one in-memory manifest: Kermany/ImageFolder folders, CSV manifests, MedMNIST npz."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
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
        from featurestore.images import decode_image, image_from_array

        if self.kind == "npz":
            split, _, row = key.partition("/")
            images = _npz_array(str(self.root), f"{split}_images", self.root.stat().st_mtime_ns)
            return image_from_array(images[int(row)])
        return decode_image(self.root / key, min_size=min_size)


IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})
SYNTHETIC_DIR = Path("data/synthetic")
KERMANY_DIR = Path("data/chest_xray")

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


def _sorted_records(records: Iterable[Record]) -> tuple[Record, ...]:
    return tuple(sorted(records, key=lambda r: (SPLITS.index(r.split), r.key)))


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass(frozen=True)
class FolderScan:
    """What a Kermany-layout folder holds, before any validity check (also used by the audit)."""

    splits: tuple[Split, ...]
    """Split folders present, in train/val/test order."""
    class_names: tuple[str, ...]
    """Class folder names, union across splits, sorted."""
    files: tuple[tuple[Split, str, Path], ...]
    """(split, class name, path) of every image file, sorted by path."""


def scan_folder(root: Path) -> FolderScan:
    """List the split, class and image files of `ROOT/{train,val,test}/{CLASS}/*` leniently."""
    if not root.exists():
        raise XrayError(
            f"dataset folder {root} does not exist: pass --data with a folder, .csv or .npz"
        )
    if not root.is_dir():
        raise XrayError(f"{root} is not a folder, a .csv manifest or a .npz file")
    splits = tuple(s for s in SPLITS if (root / s).is_dir())
    if not splits:
        raise XrayError(
            f"{root} has no train/, val/ or test/ folder: expected ROOT/{{train,val,test}}/CLASS/*"
        )
    classes: set[str] = set()
    files: list[tuple[Split, str, Path]] = []
    for split in splits:
        for class_dir in (root / split).iterdir():
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            classes.add(class_dir.name)
            files.extend(
                (split, class_dir.name, path)
                for path in class_dir.rglob("*")
                if path.suffix.lower() in IMAGE_SUFFIXES
                and path.is_file()
                and not _is_hidden(path, class_dir)
            )
    return FolderScan(splits, tuple(sorted(classes)), tuple(sorted(files, key=lambda f: f[2])))


def read_folder(root: Path) -> Manifest:
    """Read a Kermany/ImageFolder layout; class names are the class folders, sorted."""
    root = Path(root)
    scan = scan_folder(root)
    for split in scan.splits:
        if not any(s == split for s, _, _ in scan.files):
            raise XrayError(
                f"{root / split} holds no images (.jpeg/.jpg/.png/.dcm in CLASS/ folders): "
                "add images or remove the folder"
            )
    for name in scan.class_names:
        if not any(c == name for _, c, _ in scan.files):
            raise XrayError(f"class {name!r} has no images in any split under {root}: remove it")
    records = [
        Record(
            key=path.relative_to(root).as_posix(),
            label=scan.class_names.index(class_name),
            split=split,
            group=patient_id(path.name),
            source_split=split,
        )
        for split, class_name, path in scan.files
    ]
    resolved = root.resolve()
    return Manifest(
        resolved,
        "folder",
        scan.class_names,
        _sorted_records(records),
        name=resolved.name,
        source=resolved,
    )


def read_csv(path: Path) -> Manifest:
    """Read a `path,label,split[,patient]` CSV; paths are relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise XrayError(f"CSV manifest {path} does not exist")
    root = path.parent.resolve()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        missing = sorted({"path", "label", "split"} - set(reader.fieldnames))
        if missing:
            raise XrayError(
                f"{path}: missing column(s) {', '.join(missing)}; "
                "expected a header path,label,split[,patient]"
            )
        rows = list(reader)
    if not rows:
        raise XrayError(f"{path} lists no images")
    seen: set[str] = set()
    parsed: list[tuple[str, str, Split, str]] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {line}"
        raw = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        split = (row.get("split") or "").strip().lower()
        if not raw or not label:
            raise XrayError(f"{where}: empty path or label")
        if split not in SPLITS:
            raise XrayError(f"{where}: unknown split {split!r} (use train, val or test)")
        full = Path(os.path.normpath(raw if Path(raw).is_absolute() else root / raw))
        if not full.is_relative_to(root):
            raise XrayError(f"{where}: {raw!r} is outside the CSV's folder {root}")
        if not full.is_file():
            raise XrayError(f"{where}: file {raw!r} not found (paths are relative to {root})")
        key = full.relative_to(root).as_posix()
        if key in seen:
            raise XrayError(f"{where}: {raw!r} is listed twice")
        seen.add(key)
        patient = (row.get("patient") or "").strip() or patient_id(full.name)
        parsed.append((key, label, split, patient))
    class_names = tuple(sorted({label for _, label, _, _ in parsed}))
    records = [
        Record(key, class_names.index(label), split, patient, split)
        for key, label, split, patient in parsed
    ]
    return Manifest(
        root, "csv", class_names, _sorted_records(records), name=path.stem, source=path.resolve()
    )


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays in an npz, read from the .npy headers without loading any data."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        header = np.lib.format.read_array_header_1_0(member)
                    else:
                        header = np.lib.format.read_array_header_2_0(member)
                name = info.filename.removesuffix(".npy")
                if header[2].hasobject:  # loading it would unpickle: code from a data file
                    raise XrayError(
                        f"{path}: array {name} holds Python objects (pickled data), which xray "
                        "never loads; save plain numeric arrays"
                    )
                shapes[name] = tuple(header[0])
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise XrayError(f"{path} is not a readable .npz archive ({exc})") from None
    return shapes


@functools.lru_cache(maxsize=6)
def _npz_array(path: str, name: str, mtime_ns: int) -> np.ndarray:
    """One array of an npz, loaded once per process (mtime_ns invalidates the cache)."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[name]


def read_npz(path: Path) -> Manifest:
    """Read a MedMNIST-style npz (`train_images`, `train_labels`, `val_*`, `test_*`) lazily."""
    path = Path(path)
    if not path.is_file():
        raise XrayError(f"npz file {path} does not exist")
    shapes = _npz_shapes(path)
    splits = [s for s in SPLITS if f"{s}_images" in shapes or f"{s}_labels" in shapes]
    if not splits:
        raise XrayError(f"{path} has no train_images/train_labels (MedMNIST layout) arrays")
    labels: dict[Split, np.ndarray] = {}
    for split in splits:
        images, label_shape = shapes.get(f"{split}_images"), shapes.get(f"{split}_labels")
        if images is None or label_shape is None:
            raise XrayError(f"{path}: {split}_images and {split}_labels must both be present")
        if len(images) not in (3, 4) or (len(images) == 4 and images[3] not in (1, 3)):
            raise XrayError(f"{path}: {split}_images has shape {images}, expected (N, H, W[, C])")
        if len(label_shape) not in (1, 2) or (len(label_shape) == 2 and label_shape[1] != 1):
            raise XrayError(
                f"{path}: {split}_labels has shape {label_shape}, expected (N,) or (N, 1)"
            )
        if label_shape[0] != images[0]:
            raise XrayError(f"{path}: {images[0]} {split} images but {label_shape[0]} labels")
        # Only the small label arrays are read here; images load on first open_image.
        with np.load(path, allow_pickle=False) as archive:
            values = np.asarray(archive[f"{split}_labels"]).reshape(-1)
        if values.size and (values.min() < 0 or not np.all(values == np.round(values))):
            raise XrayError(f"{path}: {split}_labels must be non-negative integers")
        labels[split] = values.astype(np.int64)
    n_classes = int(max(int(v.max()) for v in labels.values() if v.size) + 1)
    class_names = (
        ("NORMAL", POSITIVE_CLASS)
        if n_classes == 2
        else tuple(f"class_{i}" for i in range(n_classes))
    )
    records = [
        Record(f"{split}/{i:06d}", int(y), split, f"{split}/{i:06d}", split)
        for split, values in labels.items()
        for i, y in enumerate(values)
    ]
    resolved = path.resolve()
    return Manifest(
        resolved, "npz", class_names, _sorted_records(records), name=path.stem, source=resolved
    )


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

    best = min(range(len(folds)), key=lambda i: (ratio_gap(folds[i]), i))
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
    return replace(m, records=_sorted_records(records), carve=carve)


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_fingerprint(m: Manifest, *, progress: Progress | None = None) -> str:
    """sha256 hex over (key, label, split as given, content digest) of every image, sorted.

    Content digests hash file bytes (not mtimes), so copies of a dataset share a fingerprint
    and any added, removed, renamed or modified file changes it.
    """
    digest = hashlib.sha256()
    digest.update(f"{m.kind}\0{','.join(m.class_names)}\n".encode())
    records = sorted(m.records, key=lambda r: r.key)
    if m.kind == "npz":
        digest.update(f"npz\0{_file_digest(m.root)}\n".encode())
    task = None
    if progress is not None and m.kind != "npz":
        task = progress.add_task("fingerprint", total=len(records), unit="img")
    for r in records:
        content = "" if m.kind == "npz" else _file_digest(m.root / r.key)
        digest.update(f"{r.key}\0{r.label}\0{r.source_split}\0{content}\n".encode())
        if task is not None and progress is not None:
            progress.advance(task)
    return digest.hexdigest()


def load_manifest(
    path: Path, *, val_min: int = 100, val_fraction: float = 0.1, seed: int = 0
) -> Manifest:
    """Read a folder, .csv or .npz dataset, then carve a validation set when val is too small."""
    path = Path(path)
    if path.is_dir():
        manifest = read_folder(path)
    elif path.suffix.lower() == ".csv":
        manifest = read_csv(path)
    elif path.suffix.lower() == ".npz":
        manifest = read_npz(path)
    elif not path.exists():
        raise XrayError(f"dataset {path} does not exist: pass --data with a folder, .csv or .npz")
    else:
        raise XrayError(f"{path}: unsupported dataset (use a folder, a .csv manifest or a .npz)")
    check_labels_in_train(manifest, path)
    return carve_validation(manifest, fraction=val_fraction, min_val=val_min, seed=seed)


def check_labels_in_train(m: Manifest, path: Path) -> None:
    """Refuse a class seen in val/test but never in train (a typo or an unknown label)."""
    if not m.split("train"):
        return  # an evaluation-only dataset: there is no training set to compare against
    in_train = {r.label for r in m.split("train")}
    for label, name in enumerate(m.class_names):
        if label in in_train:
            continue
        where = sorted({r.split for r in m.records if r.label == label}, key=SPLITS.index)
        raise XrayError(
            f"{path}: label {name!r} appears in {'/'.join(where)} but never in train, so no "
            f"model can learn it; fix the label or add train images of it"
        )


def resolve_data_dir(data: Path | None, *, env: str | None, notice: Callable[[str], None]) -> Path:
    """--data, else $XRAY_DATA, else data/chest_xray if present, else data/synthetic (generated)."""
    for given, origin in ((data, "--data"), (Path(env) if env else None, "$XRAY_DATA")):
        if given is not None:
            if not given.exists():
                raise XrayError(f"{origin} {given} does not exist")
            return given
    if KERMANY_DIR.exists():
        return KERMANY_DIR
    if not (SYNTHETIC_DIR / "train").is_dir():
        notice(f"no dataset given: generating the built-in synthetic dataset in {SYNTHETIC_DIR}")
        from featurestore.synth import generate_synthetic

        generate_synthetic(SYNTHETIC_DIR)
    return SYNTHETIC_DIR
