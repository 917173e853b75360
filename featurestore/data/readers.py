"""Dataset readers: Kermany/ImageFolder folders, CSV manifests and MedMNIST npz into a Manifest."""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.data.formats import (
    IGNORED_NAMES,
    READ_FORMATS,
    is_image_file,
    is_utf8,
    not_utf8_reason,
    printable,
)
from featurestore.data.manifest import (
    POSITIVE_CLASS,
    SPLITS,
    Manifest,
    Record,
    Split,
    patient_id,
    sorted_records,
)
from featurestore.errors import XrayError

UNZIP_LITTER = frozenset({"__MACOSX"})
"""Folders archivers add beside the data (macOS resource forks): never the dataset."""


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
    ignored: tuple[tuple[Split, str, Path], ...] = ()
    """(split, class name, path) of files in class folders that are not images xray reads, and
    of files directly in a split folder (class ""), hidden files and OS litter such as
    Thumbs.db aside; sorted by path."""


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
        found = find_dataset_below(root)
        hint = (
            f"; {printable(str(found))} looks like the dataset: pass --data {printable(str(found))}"
            if found is not None
            else ""
        )
        raise XrayError(
            f"{printable(str(root))} has no train/, val/ or test/ folder: expected "
            f"ROOT/{{train,val,test}}/CLASS/*{hint}"
        )
    classes: set[str] = set()
    files: list[tuple[Split, str, Path]] = []
    ignored: list[tuple[Split, str, Path]] = []
    for split in splits:
        for class_dir in (root / split).iterdir():
            if class_dir.name.startswith("."):
                continue
            if not class_dir.is_dir():
                # A file beside the class folders has no class: left out, but listed.
                if class_dir.name.lower() not in IGNORED_NAMES:
                    ignored.append((split, "", class_dir))
                continue
            classes.add(class_dir.name)
            for path in class_dir.rglob("*"):
                if _is_hidden(path, class_dir) or not path.is_file():
                    continue
                if is_image_file(path):
                    files.append((split, class_dir.name, path))
                elif path.name.lower() not in IGNORED_NAMES:
                    ignored.append((split, class_dir.name, path))
    return FolderScan(
        splits,
        tuple(sorted(classes)),
        tuple(sorted(files, key=lambda f: f[2])),
        tuple(sorted(ignored, key=lambda f: f[2])),
    )


def find_dataset_below(root: Path, *, depth: int = 3) -> Path | None:
    """The shallowest folder under `root` holding train/, val/ or test/ (an unzip root's
    `chest_xray/`), skipping `__MACOSX` and hidden folders; None when there is none."""
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            below.extend(
                p for p in children if p.name not in UNZIP_LITTER and not p.name.startswith(".")
            )
        for folder in below:
            if any((folder / s).is_dir() for s in SPLITS):
                return folder
        level = below
    return None


def read_folder(root: Path) -> Manifest:
    """Read a Kermany/ImageFolder layout; class names are the class folders, sorted."""
    root = Path(root)
    if not is_utf8(str(root.resolve())):
        raise XrayError(not_utf8_reason(str(root.resolve())))
    scan = scan_folder(root)
    # Keys, fingerprints, HDF5 string datasets, CSV and JSON all need the name as text.
    # The whole key counts: a class or sub-folder name can hold the odd byte too.
    keys = (p.relative_to(root).as_posix() for _, _, p in scan.files)
    bad_keys = [k for k in keys if not is_utf8(k)]
    if bad_keys:
        more = f" ({len(bad_keys) - 1} more; `xray data check` lists them)" if bad_keys[1:] else ""
        raise XrayError(f"{not_utf8_reason(bad_keys[0])}{more}")
    for split in scan.splits:
        if not any(s == split for s, _, _ in scan.files):
            raise XrayError(
                f"{root / split} holds no images ({READ_FORMATS} in CLASS/ folders): "
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
        sorted_records(records),
        name=resolved.name,
        source=resolved,
    )


def read_csv(path: Path) -> Manifest:
    """Read a `path,label,split[,patient]` CSV; paths are relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise XrayError(f"CSV manifest {path} does not exist")
    root = path.parent.resolve()
    if not is_utf8(str(path.resolve())):
        raise XrayError(not_utf8_reason(str(path.resolve())))
    try:
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
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise XrayError(
            f"{path} line {line} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}): save "
            "the CSV as UTF-8"
        ) from None
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
        root, "csv", class_names, sorted_records(records), name=path.stem, source=path.resolve()
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


def read_npz(path: Path) -> Manifest:
    """Read a MedMNIST-style npz (`train_images`, `train_labels`, `val_*`, `test_*`) lazily."""
    path = Path(path)
    if not path.is_file():
        raise XrayError(f"npz file {path} does not exist")
    if not is_utf8(str(path.resolve())):
        raise XrayError(not_utf8_reason(str(path.resolve())))
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
        resolved, "npz", class_names, sorted_records(records), name=path.stem, source=resolved
    )
