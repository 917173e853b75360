"""Task types and label schemes: N class folders are multi-class, Kermany relabelled to 3."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_tiny_dataset, write_tiny_kermany3

from featurestore.data import (
    KERMANY3_CLASSES,
    LabelScheme,
    apply_label_scheme,
    dataset_fingerprint,
    kermany3_class,
    load_manifest,
    read_folder,
)
from featurestore.errors import XrayError


def test_kermany3_class_from_file_names() -> None:
    assert kermany3_class("train/PNEUMONIA/person1_bacteria_1.jpeg") == "BACTERIAL"
    assert kermany3_class("person1222_virus_2071.jpeg") == "VIRAL"
    with pytest.raises(XrayError, match="bacteria' or 'virus'"):
        kermany3_class("train/PNEUMONIA/scan_007.jpeg")


def test_kermany3_relabels_pneumonia_by_name_and_keeps_normal(tmp_path: Path) -> None:
    data = write_tiny_kermany3(tmp_path / "chest_xray")
    given = read_folder(data)
    assert given.task == "binary"
    m = apply_label_scheme(given, LabelScheme.kermany3)
    assert m.class_names == KERMANY3_CLASSES == ("NORMAL", "BACTERIAL", "VIRAL")
    assert m.task == "multiclass" and m.label_scheme == "kermany3"
    assert m.name == "chest_xray-kermany3"  # its stores live apart from the binary ones
    for r in m.records:
        expected = "NORMAL" if "/NORMAL/" in r.key else kermany3_class(r.key)
        assert m.class_names[r.label] == expected
    # Same files, same patients and splits; only labels differ, so the fingerprint differs.
    assert [(r.key, r.group, r.split) for r in m.records] == [
        (r.key, r.group, r.split) for r in given.records
    ]
    assert dataset_fingerprint(m) != dataset_fingerprint(given)
    assert apply_label_scheme(given, "as-given") is given


def test_load_manifest_relabels_before_carving(tmp_path: Path) -> None:
    data = write_tiny_kermany3(tmp_path / "chest_xray")
    m = load_manifest(data, labels="kermany3", val_min=100)
    assert m.carve is not None
    val_labels = {m.class_names[r.label] for r in m.split("val")}
    assert val_labels == set(KERMANY3_CLASSES)  # the carve is stratified on the three classes
    train_groups = {r.group for r in m.split("train")}
    assert not train_groups & {r.group for r in m.split("val")}


def test_kermany3_refuses_other_layouts(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "chest_xray")
    first = sorted((data / "train" / "PNEUMONIA").iterdir())[0]
    first.rename(first.with_name("scan.jpeg"))
    with pytest.raises(XrayError, match=r"scan\.jpeg"):
        load_manifest(data, labels="kermany3")
    (data / "train" / "OTHER").mkdir()
    first = sorted((data / "train" / "NORMAL").iterdir())[0]
    first.rename(data / "train" / "OTHER" / "x.jpeg")
    with pytest.raises(XrayError, match="NORMAL and PNEUMONIA"):
        load_manifest(data, labels="kermany3")
    with pytest.raises(ValueError):
        load_manifest(data, labels="nine-classes")


def test_three_class_folders_are_multiclass(tmp_path: Path) -> None:
    data = write_tiny_kermany3(tmp_path / "chest_xray")
    m = apply_label_scheme(read_folder(data), "kermany3")
    # The same three classes as folders: read as given, a multi-class task.
    for r in m.records:
        target = tmp_path / "three" / r.split / m.class_names[r.label] / Path(r.key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((data / r.key).read_bytes())
    three = read_folder(tmp_path / "three")
    assert three.class_names == ("BACTERIAL", "NORMAL", "VIRAL") and three.task == "multiclass"


def test_kermany3_reads_the_real_radiographs_by_their_names(realsample: Path) -> None:
    m = apply_label_scheme(read_folder(realsample), "kermany3")
    assert m.class_names == KERMANY3_CLASSES
    for r in m.records:
        name = Path(r.key).name
        expected = (
            "BACTERIAL" if "_bacteria_" in name else "VIRAL" if "_virus_" in name else "NORMAL"
        )
        assert m.class_names[r.label] == expected
    assert {m.class_names[r.label] for r in m.split("test")} == set(KERMANY3_CLASSES)
