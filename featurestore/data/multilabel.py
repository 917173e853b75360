"""Multi-label datasets: NIH ChestX-ray14, CheXpert and a generic one-column-per-finding CSV.

Each image gets `Record.targets`, one float per finding: 1.0 present, 0.0 absent, NaN masked
(an uncertain label under the `ignore` policy: left out of the loss and the metrics).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import cast

from featurestore.data.formats import IMAGE_SUFFIXES
from featurestore.data.manifest import SPLITS, Manifest, Record, Split, sorted_records
from featurestore.errors import XrayError


class UncertainPolicy(str, Enum):
    """What an uncertain label (CheXpert's -1) becomes: Irvin et al. (2019), "CheXpert",
    AAAI, sec. "Uncertainty approaches" (U-Zeros, U-Ones, U-Ignore)."""

    zeros = "zeros"
    """Uncertain counts as absent."""
    ones = "ones"
    """Uncertain counts as present."""
    ignore = "ignore"
    """Masked: left out of the loss and of every metric of that finding."""


NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
"""The 14 findings of NIH ChestX-ray14 (Wang et al., CVPR 2017), spelled as `Finding Labels`."""
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 observations of CheXpert (Irvin et al., AAAI 2019), as its CSV columns name them."""
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")
_NIH_ENTRY = "Data_Entry_2017*.csv"


def target_value(raw: str, policy: UncertainPolicy, where: str) -> float:
    """One CSV cell as a target: 1 -> 1.0, 0 or blank -> 0.0, -1 -> by `policy` (NaN: masked).

    Blank counts as absent: in CheXpert a blank means the report did not mention the finding,
    which the CheXpert paper trains as negative. Anything else raises XrayError naming `where`.
    """
    value = raw.strip()
    if value in ("", "0", "0.0"):
        return 0.0
    if value in ("1", "1.0"):
        return 1.0
    if value in ("-1", "-1.0"):
        return {"zeros": 0.0, "ones": 1.0, "ignore": math.nan}[UncertainPolicy(policy).value]
    raise XrayError(f"{where}: label {raw!r} is not 1, 0, -1 or blank")


def _manifest(
    root: Path,
    source: Path,
    name: str,
    findings: tuple[str, ...],
    records: Iterable[Record],
    *,
    uncertain: str | None = None,
) -> Manifest:
    """The Manifest; `uncertain` (the policy, when the data held uncertain labels) names the
    scheme `uncertain-<policy>` and suffixes the name, so each policy gets its own stores."""
    records = tuple(records)
    if not records:
        raise XrayError(f"{source} lists no images")
    return Manifest(
        root,
        "csv",
        findings,
        sorted_records(records),
        name=f"{name}-u{uncertain}" if uncertain else name,
        source=source.resolve(),
        label_scheme=f"uncertain-{uncertain}" if uncertain else "as-given",
    )


def _has_uncertain(rows: list[dict[str, str]], columns: Iterable[str]) -> bool:
    return any((row.get(c) or "").strip() in ("-1", "-1.0") for row in rows for c in columns)


def _record(key: str, targets: tuple[float, ...], split: Split, patient: str, where: str) -> Record:
    if not any(t == t for t in targets):  # every finding masked: nothing to learn from
        raise XrayError(f"{where}: every finding is uncertain under --uncertain ignore")
    return Record(key, 0, split, patient, split, targets=targets)


def read_multilabel_csv(path: Path, *, uncertain: UncertainPolicy | str = "ignore") -> Manifest:
    """A `path,split[,patient]` CSV plus either one column per finding (1, 0, -1 uncertain,
    blank) or a `findings` column of `|`-separated names (`No Finding` or empty: none).

    Paths are relative to the CSV's folder and must stay inside it; a patient column keeps
    patients together when carving validation, else the file stem is the patient.
    """
    path = Path(path)
    root = path.parent.resolve()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        rows = list(reader)
    lower = {c.lower(): c for c in columns}
    missing = [c for c in ("path", "split") if c not in lower]
    if missing:
        raise XrayError(f"{path}: missing column(s) {', '.join(missing)}")
    meta = {lower[c] for c in ("path", "split", "patient", "findings") if c in lower}
    piped = "findings" in lower
    if piped:
        names = {
            f.strip()
            for row in rows
            for f in (row.get(lower["findings"]) or "").split("|")
            if f.strip() and f.strip() != "No Finding"
        }
        findings = tuple(sorted(names))
    else:
        findings = tuple(c for c in columns if c not in meta)
    if len(findings) < 1:
        raise XrayError(f"{path}: no finding columns (one 0/1 column per finding, or `findings`)")
    records = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{path} line {line}"
        raw = (row.get(lower["path"]) or "").strip()
        split = (row.get(lower["split"]) or "").strip().lower()
        if split not in SPLITS:
            raise XrayError(f"{where}: unknown split {split!r} (use train, val or test)")
        key = _checked_key(root, raw, where)
        if key in seen:
            raise XrayError(f"{where}: {raw!r} is listed twice")
        seen.add(key)
        if piped:
            present = {f.strip() for f in (row.get(lower["findings"]) or "").split("|")}
            targets = tuple(1.0 if f in present else 0.0 for f in findings)
        else:
            targets = tuple(
                target_value(row.get(f) or "", UncertainPolicy(uncertain), f"{where} {f}")
                for f in findings
            )
        patient = (row.get(lower.get("patient", "")) or "").strip() or Path(key).stem
        records.append(_record(key, targets, cast(Split, split), patient, where))
    had = not piped and _has_uncertain(rows, findings)
    policy = UncertainPolicy(uncertain).value if had else None
    return _manifest(root, path, path.stem, findings, records, uncertain=policy)


def is_multilabel_csv(path: Path) -> bool:
    """A CSV with `path` and `split` columns, no `label` column, and finding columns (or a
    `findings` column). A bare `path,split[,patient]` is a single-label manifest missing its
    label column, and is left to `read_csv` to say so."""
    # Only the header line is decoded here: read_csv names any badly encoded line later.
    with Path(path).open("rb") as handle:
        first = handle.readline().decode("utf-8-sig", errors="replace")
    header = next(csv.reader([first]), [])
    names = {c.strip().lower() for c in header}
    extra = names - {"path", "split", "patient"}
    return {"path", "split"} <= names and "label" not in names and bool(extra)


def _checked_key(root: Path, raw: str, where: str) -> str:
    if not raw:
        raise XrayError(f"{where}: empty path")
    full = Path(os.path.normpath(raw if Path(raw).is_absolute() else root / raw))
    if not full.is_relative_to(root):
        raise XrayError(f"{where}: {raw!r} is outside the CSV's folder {root}")
    if not full.is_file():
        raise XrayError(f"{where}: file {raw!r} not found (paths are relative to {root})")
    return full.relative_to(root).as_posix()


def is_nih_folder(root: Path) -> bool:
    """A folder holding NIH's `Data_Entry_2017*.csv`."""
    return Path(root).is_dir() and any(Path(root).glob(_NIH_ENTRY))


def read_nih(root: Path) -> Manifest:
    """NIH ChestX-ray14: `Data_Entry_2017*.csv` (`Image Index`, `Finding Labels` such as
    `Cardiomegaly|Effusion` or `No Finding`, `Patient ID`), the official `train_val_list.txt`
    (train; validation is carved from it by patient) and `test_list.txt` (test), and the images
    anywhere under ROOT (NIH ships them in `images_001/images/` ... folders).

    Every listed image must be on disk: a missing one is an error naming how many are missing.
    """
    root = Path(root).resolve()
    entries = sorted(root.glob(_NIH_ENTRY))
    if not entries:
        raise XrayError(f"{root}: no Data_Entry_2017*.csv (the NIH ChestX-ray14 label file)")
    lists: dict[Split, set[str]] = {}
    official: tuple[tuple[Split, str], ...] = (
        ("train", "train_val_list.txt"),
        ("test", "test_list.txt"),
    )
    for given, name in official:
        file = root / name
        if not file.is_file():
            raise XrayError(
                f"{root}: {name} missing: put NIH's official split lists beside the CSV"
            )
        lists[given] = {ln.strip() for ln in file.read_text().splitlines() if ln.strip()}
    on_disk = {
        p.name: p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    }
    with entries[0].open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    records, missing = [], []
    for line, row in enumerate(rows, start=2):
        where = f"{entries[0]} line {line}"
        name = (row.get("Image Index") or "").strip()
        split: Split | None = next((s for s, names in lists.items() if name in names), None)
        if split is None:
            continue  # in neither official list: not part of the benchmark
        if name not in on_disk:
            missing.append(name)
            continue
        present = {f.strip() for f in (row.get("Finding Labels") or "").split("|")}
        unknown = present - set(NIH_FINDINGS) - {"No Finding", ""}
        if unknown:
            raise XrayError(f"{where}: unknown finding(s) {', '.join(sorted(unknown))}")
        targets = tuple(1.0 if f in present else 0.0 for f in NIH_FINDINGS)
        patient = (row.get("Patient ID") or "").strip()
        if not patient:
            raise XrayError(f"{where}: empty Patient ID")
        key = on_disk[name].relative_to(root).as_posix()
        records.append(_record(key, targets, split, f"nih{int(patient):05d}", where))
    if missing:
        raise XrayError(
            f"{len(missing)} image(s) listed in {entries[0].name} and the split lists are not "
            f"under {root} (first: {missing[0]}); add them, or list the images you have in a "
            "CSV manifest (path,split,patient,findings)"
        )
    # The source is the folder: the reader needs the split lists and images beside the CSV.
    return _manifest(root, root, root.name, NIH_FINDINGS, records)


def is_chexpert_folder(root: Path) -> bool:
    """A folder holding CheXpert's `train.csv` and `valid.csv`."""
    root = Path(root)
    return (root / "train.csv").is_file() and (root / "valid.csv").is_file()


def read_chexpert(root: Path, *, uncertain: UncertainPolicy | str = "ignore") -> Manifest:
    """CheXpert: `train.csv` (train; validation carved from it by patient) and `valid.csv`
    (test: the 234 radiologist-labelled images, since the official test set is withheld).

    `Path` is as CheXpert writes it (`CheXpert-v1.0-small/train/patient00001/study1/
    view1_frontal.jpg`), found relative to ROOT's parent or to ROOT; the patient is
    `patientNNNNN`. The 14 observations take 1, 0, -1 (uncertain, by `uncertain`) or blank (0).
    """
    root = Path(root).resolve()
    policy = UncertainPolicy(uncertain)
    records = []
    had = False
    files: tuple[tuple[Split, str], ...] = (("train", "train.csv"), ("test", "valid.csv"))
    for split, name in files:
        file = root / name
        if not file.is_file():
            raise XrayError(f"{root}: {name} missing (CheXpert layout: train.csv and valid.csv)")
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            absent = [c for c in ("Path", *CHEXPERT_FINDINGS) if c not in (reader.fieldnames or [])]
            if absent:
                raise XrayError(f"{file}: missing CheXpert column(s) {', '.join(absent)}")
            rows = list(reader)
        had = had or _has_uncertain(rows, CHEXPERT_FINDINGS)
        for line, row in enumerate(rows, start=2):
            where = f"{file} line {line}"
            raw = (row.get("Path") or "").strip()
            key = _chexpert_key(root, raw, where)
            match = _CHEXPERT_PATIENT.search(raw)
            if match is None:
                raise XrayError(f"{where}: no patientNNNNN in the path {raw!r}")
            targets = tuple(
                target_value(row.get(f) or "", policy, f"{where} {f}") for f in CHEXPERT_FINDINGS
            )
            records.append(_record(key, targets, split, match.group(1), where))
    return _manifest(
        root, root, root.name, CHEXPERT_FINDINGS, records, uncertain=policy.value if had else None
    )


def _chexpert_key(root: Path, raw: str, where: str) -> str:
    """The image's key relative to ROOT: `Path` relative to ROOT's parent, or to ROOT, or with
    its first folder (the dataset's own name) dropped."""
    parts = Path(raw).parts
    for candidate in (root.parent / raw, root / raw, root.joinpath(*parts[1:]) if parts else root):
        full = Path(os.path.normpath(candidate))
        if full.is_relative_to(root) and full.is_file():
            return full.relative_to(root).as_posix()
    raise XrayError(f"{where}: image {raw!r} not found under {root}")
