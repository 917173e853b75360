"""Label schemes such as Kermany-3 (the task itself is `featurestore.tasks.Task`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path, PurePosixPath

from featurestore.config import LabelScheme
from featurestore.data.manifest import POSITIVE_CLASS, Manifest, Record, sorted_records
from featurestore.errors import XrayError

SYNTHETIC_MULTICLASS_DIR = Path("data/synthetic-3class")
"""Where the built-in three-class set is generated (`xray data synth --task multiclass`)."""
KERMANY3_CLASSES: tuple[str, ...] = ("NORMAL", "BACTERIAL", "VIRAL")
"""Class order of the Kermany three-class task (label indices 0, 1, 2)."""


def kermany3_class(filename: str) -> str:
    """BACTERIAL or VIRAL from a Kermany PNEUMONIA file name (`person1_bacteria_1.jpeg`).

    Kermany et al. (Cell 2018) encode the pneumonia type in the name; an image whose name says
    neither raises XrayError naming it (the three-class task cannot place it).
    """
    name = PurePosixPath(filename).name.lower()
    has_bacteria, has_virus = "bacteria" in name, "virus" in name
    if has_bacteria == has_virus:
        raise XrayError(
            f"{filename}: --labels kermany3 needs 'bacteria' or 'virus' in every PNEUMONIA file "
            "name (Kermany naming); rename it or use --labels as-given"
        )
    return "BACTERIAL" if has_bacteria else "VIRAL"


def check_kermany3_layout(class_names: tuple[str, ...], kind: str, where: object) -> None:
    """Raise XrayError unless a dataset of `kind` with `class_names` can be read as kermany3:
    a folder or CSV dataset of exactly NORMAL and PNEUMONIA (the type is in the file names)."""
    if set(class_names) != {"NORMAL", POSITIVE_CLASS} or kind == "npz":
        raise XrayError(
            f"--labels kermany3 needs a Kermany-layout dataset with classes NORMAL and PNEUMONIA "
            f"and file names; {where} has {', '.join(class_names)} ({kind})"
        )


def apply_label_scheme(m: Manifest, scheme: LabelScheme | str) -> Manifest:
    """The manifest relabelled by `scheme`; `as-given` returns it unchanged.

    `kermany3` needs exactly the classes NORMAL and PNEUMONIA in a folder or CSV dataset; the
    result's name gets a `-kermany3` suffix so its feature stores live apart from the binary ones.
    """
    scheme = LabelScheme(scheme)
    if scheme is LabelScheme.as_given:
        return m
    check_kermany3_layout(m.class_names, m.kind, m.source or m.root)
    if m.carve is not None:
        raise ValueError("relabel before carving the validation set (the carve is stratified)")
    normal = m.class_names.index("NORMAL")
    records: list[Record] = []
    for r in m.records:
        name = "NORMAL" if r.label == normal else kermany3_class(r.key)
        records.append(replace(r, label=KERMANY3_CLASSES.index(name)))
    return replace(
        m,
        class_names=KERMANY3_CLASSES,
        records=sorted_records(records),
        name=f"{m.name}-{scheme.value}" if m.name else m.name,
        label_scheme=scheme.value,
    )
