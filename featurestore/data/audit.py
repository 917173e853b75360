"""Dataset audit for `xray data check`: counts, patients, leakage, duplicates, unreadable files."""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.config import LabelScheme
from featurestore.data.formats import is_utf8, not_utf8_reason, printable
from featurestore.data.load import load_manifest
from featurestore.data.manifest import SPLITS, Split, patient_id
from featurestore.data.readers import scan_folder
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from rich.progress import Progress

SIZE_SHORTCUT_RATIO = 1.25
"""Median width or height of two classes differing by more than this is a learnable shortcut."""
AUDIT_DECODE_SIZE = 64
"""Decode at reduced JPEG scale: enough to prove the whole file decodes, much faster."""


@dataclass(frozen=True)
class SizeRange:
    """Image size spread of one class, in pixels as stored (before EXIF rotation)."""

    images: int
    width_min: int
    width_median: float
    width_max: int
    height_min: int
    height_median: float
    height_max: int


@dataclass(frozen=True)
class DuplicateSet:
    """Byte-identical files (same sha256)."""

    sha256: str
    keys: tuple[str, ...]
    splits: tuple[Split, ...]
    """Distinct splits the copies are in, train/val/test order."""

    @property
    def cross_split(self) -> bool:
        """True when the copies sit in more than one split (leakage)."""
        return len(self.splits) > 1


@dataclass(frozen=True)
class DatasetAudit:
    """Everything `xray data check` reports about a dataset, on its splits as given."""

    root: str
    kind: str
    class_names: tuple[str, ...]
    splits: tuple[Split, ...]
    """Splits present on disk."""
    counts: dict[str, dict[str, int]]
    """split -> class -> images."""
    patients: dict[str, int]
    """split -> distinct patients."""
    shared_patients: dict[str, tuple[Split, ...]]
    """patient -> splits, for patients found in more than one split."""
    duplicates: tuple[DuplicateSet, ...]
    unreadable: dict[str, str]
    """key -> why it cannot be used (cannot be decoded, or a name that is not UTF-8); keys
    with bytes that are not UTF-8 are written with `\\xNN` escapes."""
    sizes: dict[str, SizeRange]
    """class -> size spread of its readable images."""
    missing_classes: dict[str, tuple[str, ...]]
    """split -> classes with no image in that split."""
    ignored: tuple[str, ...] = field(default=())
    label_scheme: str = "as-given"
    """How labels were read (`--labels`): as-given, or kermany3 (classes from file names)."""
    unplaced: tuple[str, ...] = field(default=())
    """kermany3: PNEUMONIA files whose names say neither bacteria nor virus (not counted)."""
    """Files in class folders that xray does not read (not an image format it knows)."""
    warnings: tuple[str, ...] = field(default=())

    @property
    def leakage(self) -> bool:
        """Patients or byte-identical files shared between splits."""
        return bool(self.shared_patients) or any(d.cross_split for d in self.duplicates)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        doc = asdict(self)
        doc["class_names"] = list(self.class_names)
        doc["splits"] = list(self.splits)
        doc["shared_patients"] = {p: list(s) for p, s in self.shared_patients.items()}
        doc["duplicates"] = [
            {
                "sha256": d.sha256,
                "keys": list(d.keys),
                "splits": list(d.splits),
                "cross_split": d.cross_split,
            }
            for d in self.duplicates
        ]
        doc["missing_classes"] = {s: list(c) for s, c in self.missing_classes.items()}
        doc["warnings"] = list(self.warnings)
        doc["ignored"] = list(self.ignored)
        doc["unplaced"] = list(self.unplaced)
        doc["leakage"] = self.leakage
        return doc


@dataclass(frozen=True)
class _Item:
    key: str
    """Printable key (bytes that are not UTF-8 escaped)."""
    split: Split
    class_name: str
    group: str
    name: str = ""
    """The key as the file system gave it (may hold bytes that are not UTF-8)."""


def _items(
    path: Path,
) -> tuple[str, Path, tuple[str, ...], tuple[Split, ...], list[_Item], tuple[str, ...]]:
    """(kind, root, classes, splits, items, ignored) without the strict checks of the readers."""
    from featurestore.data.multilabel import is_chexpert_folder, is_nih_folder

    if path.is_dir() and not (is_nih_folder(path) or is_chexpert_folder(path)):
        scan = scan_folder(path)
        items = []
        for s, c, p in scan.files:
            key = p.relative_to(path).as_posix()
            group = printable(patient_id(p.name))
            items.append(_Item(printable(key), s, printable(c), group, key))
        ignored = tuple(printable(p.relative_to(path).as_posix()) for _, _, p in scan.ignored)
        classes = tuple(printable(c) for c in scan.class_names)
        return "folder", path, classes, scan.splits, items, ignored
    # CSV and npz: their readers' errors are structural (bad header, missing file), not
    # something to report; read without carving so splits stay as given.
    manifest = load_manifest(path, val_min=0)
    if manifest.task == "multilabel":
        # Findings co-occur: the audit's one class per image is "any finding" or none
        # (leakage, duplicates and the size shortcut are per image, not per finding).
        names: tuple[str, ...] = ("No Finding", "any finding")
        items = [
            _Item(r.key, r.source_split, names[int(1.0 in (r.targets or ()))], r.group, r.key)
            for r in manifest.records
        ]
    else:
        names = manifest.class_names
        items = [
            _Item(r.key, r.source_split, names[r.label], r.group, r.key) for r in manifest.records
        ]
    splits = tuple(s for s in SPLITS if any(i.split == s for i in items))
    return manifest.kind, manifest.root, names, splits, items, ()


def _relabel(
    scheme: str, kind: str, root: Path, class_names: tuple[str, ...], items: list[_Item]
) -> tuple[tuple[str, ...], list[_Item], tuple[str, ...]]:
    """(classes, items, unplaced keys) under `--labels`: kermany3 reads NORMAL / BACTERIAL /
    VIRAL from Kermany file names (`tasks.kermany3_class`); a PNEUMONIA file whose name says
    neither is left out and listed, not raised, so the audit still reports everything else."""
    from featurestore.data.tasks import KERMANY3_CLASSES, check_kermany3_layout, kermany3_class

    if LabelScheme(scheme) is LabelScheme.as_given:
        return class_names, items, ()
    check_kermany3_layout(class_names, kind, root)
    placed, unplaced = [], []
    for item in items:
        if item.class_name == "NORMAL":
            placed.append(item)
            continue
        try:
            placed.append(replace(item, class_name=kermany3_class(item.key)))
        except XrayError:
            unplaced.append(item.key)
    return KERMANY3_CLASSES, placed, tuple(unplaced)


def audit_dataset(
    path: Path,
    *,
    labels: LabelScheme | str = LabelScheme.as_given,
    progress: Progress | None = None,
) -> DatasetAudit:
    """Audit a dataset (folder, .csv or .npz) on its splits as given; never fails on bad files.

    `labels`: as-given, or kermany3 (a Kermany folder or CSV counted as NORMAL / BACTERIAL /
    VIRAL, as `--labels kermany3` trains on it).

    Raises:
        XrayError: no such dataset, a structurally broken CSV or npz, or kermany3 on a dataset
            that is not NORMAL / PNEUMONIA.
    """
    import numpy as np

    from featurestore.data.images import ImageDecodeError, decode_image, npz_array

    path = Path(path)
    if not path.exists():
        raise XrayError(f"dataset {path} does not exist: pass --data with a folder, .csv or .npz")
    kind, root, class_names, splits, items, ignored = _items(path)
    scheme = str(getattr(labels, "value", labels))
    class_names, items, unplaced = _relabel(scheme, kind, root, class_names, items)
    npz = None
    if kind == "npz":
        from featurestore.data.readers import read_npz

        npz = read_npz(path)

    by_digest: dict[str, list[_Item]] = defaultdict(list)
    unreadable: dict[str, str] = {}
    dims: dict[str, list[tuple[int, int]]] = defaultdict(list)
    task = None
    if progress is not None:
        task = progress.add_task("checking images", total=len(items), unit="img")
    for item in items:
        try:
            if npz is not None:
                image = npz.open_image(item.key)
                # Duplicates are identical stored values, not identical decoded pixels (the
                # intensity stretch maps every constant image to black).
                split_name, _, row = item.key.partition("/")
                stored = npz_array(
                    str(npz.root), f"{split_name}_images", npz.root.stat().st_mtime_ns
                )
                payload = np.ascontiguousarray(stored[int(row)]).tobytes()
                size = image.size
            else:
                payload = (root / item.name).read_bytes()
                image = decode_image(payload, min_size=AUDIT_DECODE_SIZE, name=item.key)
                size = _stored_size(payload, image)
            by_digest[hashlib.sha256(payload).hexdigest()].append(item)
            dims[item.class_name].append(size)
            if not is_utf8(item.name):
                # Readable, but every step that keeps the name as text refuses it.
                unreadable[item.key] = not_utf8_reason(item.name).removeprefix(f"{item.key}: ")
        except (ImageDecodeError, OSError) as exc:
            unreadable[item.key] = str(exc).removeprefix(f"{item.key}: ")
        if task is not None and progress is not None:
            progress.advance(task)

    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(class_names, 0) for s in splits}
    groups: dict[str, set[str]] = {s: set() for s in splits}
    for item in items:
        counts[item.split][item.class_name] += 1
        groups[item.split].add(item.group)
    splits_of: dict[str, set[Split]] = defaultdict(set)
    for item in items:
        splits_of[item.group].add(item.split)
    shared = {
        g: tuple(s for s in SPLITS if s in found)
        for g, found in sorted(splits_of.items())
        if len(found) > 1
    }
    duplicates = tuple(
        DuplicateSet(
            sha256=digest,
            keys=tuple(sorted(i.key for i in copies)),
            splits=tuple(s for s in SPLITS if any(i.split == s for i in copies)),
        )
        for digest, copies in sorted(by_digest.items())
        if len(copies) > 1
    )
    sizes = {c: _size_range(dims[c]) for c in class_names if dims[c]}
    missing: dict[str, tuple[str, ...]] = {
        s: tuple(c for c in class_names if counts[s][c] == 0)
        for s in splits
        if any(counts[s][c] == 0 for c in class_names)
    }
    audit = DatasetAudit(
        root=printable(str(root)),
        kind=kind,
        class_names=class_names,
        splits=splits,
        counts=counts,
        patients={s: len(g) for s, g in groups.items()},
        shared_patients=shared,
        duplicates=duplicates,
        unreadable=unreadable,
        sizes=sizes,
        missing_classes=missing,
        ignored=ignored,
        label_scheme=scheme,
        unplaced=unplaced,
    )
    return replace(audit, warnings=_warnings(audit))


def _stored_size(payload: bytes, decoded: Any) -> tuple[int, int]:
    """Width and height from the image header (cheap: no pixel decoding); DICOM: as decoded."""
    import io

    from PIL import Image

    from featurestore.data.images import is_dicom

    if is_dicom(payload):
        width, height = decoded.size  # Pillow cannot read DICOM headers
        return int(width), int(height)
    with Image.open(io.BytesIO(payload)) as im:
        return im.size


def _size_range(dims: list[tuple[int, int]]) -> SizeRange:
    widths, heights = [w for w, _ in dims], [h for _, h in dims]
    return SizeRange(
        images=len(dims),
        width_min=min(widths),
        width_median=float(statistics.median(widths)),
        width_max=max(widths),
        height_min=min(heights),
        height_median=float(statistics.median(heights)),
        height_max=max(heights),
    )


def _warnings(audit: DatasetAudit) -> tuple[str, ...]:
    """Human lines for everything a careful user should look at."""
    lines: list[str] = []
    absent = [s for s in SPLITS if s not in audit.splits]
    if absent:
        lines.append(f"split(s) missing: {', '.join(absent)}")
    empty = [c for c in audit.class_names if all(audit.counts[s][c] == 0 for s in audit.splits)]
    lines += [f"class {c!r} has no images in any split (empty class folder?)" for c in empty]
    for split, classes in audit.missing_classes.items():
        absent_here = [c for c in classes if c not in empty]
        if absent_here:
            lines.append(f"{split} has no images of class(es) {', '.join(absent_here)}")
    if audit.shared_patients:
        lines.append(f"{len(audit.shared_patients)} patient(s) appear in more than one split")
    crossing = sum(d.cross_split for d in audit.duplicates)
    if crossing:
        lines.append(f"{crossing} set(s) of byte-identical files cross splits (leakage)")
    if audit.unreadable:
        lines.append(f"{len(audit.unreadable)} unreadable file(s)")
    if audit.unplaced:
        lines.append(
            f"{len(audit.unplaced)} PNEUMONIA file(s) name neither bacteria nor virus: "
            f"--labels kermany3 cannot place them and training refuses them "
            f"(first: {audit.unplaced[0]})"
        )
    if audit.ignored:
        lines.append(
            f"{len(audit.ignored)} file(s) in class folders are not images xray reads and are "
            f"left out (first: {audit.ignored[0]})"
        )
    medians = {c: (r.width_median, r.height_median) for c, r in audit.sizes.items()}
    if len(medians) > 1:
        for axis, name in ((0, "width"), (1, "height")):
            values = {c: m[axis] for c, m in medians.items()}
            small, large = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
            if values[small] > 0 and values[large] / values[small] > SIZE_SHORTCUT_RATIO:
                lines.append(
                    f"median image {name} differs by class ({large} {values[large]:.0f}px vs "
                    f"{small} {values[small]:.0f}px): a shortcut a model can "
                    "learn through resolution and aspect ratio even after resizing"
                )
    return tuple(lines)
