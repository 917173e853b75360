"""The dataset audit (featurestore.data.audit) reports problems instead of failing on them."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore.data import audit_dataset
from featurestore.errors import XrayError
from featurestore.progress import make_progress


def new_image(path: Path, size: int = 40, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path, quality=95)
    return path


def test_clean_tiny_dataset(tiny_data: Path) -> None:
    audit = audit_dataset(tiny_data)
    assert audit.kind == "folder"
    assert audit.splits == ("train", "val", "test")
    assert audit.counts == {
        "train": {"NORMAL": 8, "PNEUMONIA": 12},
        "val": {"NORMAL": 1, "PNEUMONIA": 1},
        "test": {"NORMAL": 4, "PNEUMONIA": 4},
    }
    assert audit.patients == {"train": 10, "val": 2, "test": 4}
    assert audit.shared_patients == {}
    assert audit.duplicates == ()
    assert audit.unreadable == {}
    assert audit.missing_classes == {}
    assert not audit.leakage
    assert audit.warnings == ()
    assert audit.sizes["NORMAL"].width_min == audit.sizes["NORMAL"].width_max == 40
    assert audit.sizes["PNEUMONIA"].images == 12 + 1 + 4


def test_shared_patients_are_listed(tiny_data: Path) -> None:
    new_image(tiny_data / "test" / "PNEUMONIA" / "person1005_bacteria_9.jpeg")  # train patient
    new_image(tiny_data / "val" / "NORMAL" / "NORMAL2-IM-1001-0001.jpeg", value=30)  # = IM-1001
    audit = audit_dataset(tiny_data)
    assert audit.shared_patients == {"IM-1001": ("train", "val"), "person1005": ("train", "test")}
    assert audit.duplicates == ()
    assert audit.leakage
    assert any("2 patient(s)" in w for w in audit.warnings)


def test_duplicates_within_and_across_splits(tiny_data: Path) -> None:
    source = tiny_data / "train" / "NORMAL" / "IM-1001-0001.jpeg"
    shutil.copy(source, tiny_data / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    audit = audit_dataset(tiny_data)
    (dup,) = audit.duplicates
    assert dup.keys == ("train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-1001-0001.jpeg")
    assert not dup.cross_split
    assert not audit.leakage

    shutil.copy(source, tiny_data / "test" / "NORMAL" / "IM-0002-0001.jpeg")
    audit = audit_dataset(tiny_data)
    (dup,) = audit.duplicates
    assert len(dup.keys) == 3
    assert dup.splits == ("train", "test")
    assert dup.cross_split
    assert audit.shared_patients == {}  # other names: only the bytes give it away
    assert audit.leakage


def test_corrupt_and_empty_files_are_reported_not_raised(tiny_data: Path) -> None:
    target = tiny_data / "test" / "PNEUMONIA" / "person1015_bacteria_0.jpeg"
    target.write_bytes(target.read_bytes()[:300])
    (tiny_data / "train" / "NORMAL" / "IM-0003-0001.jpeg").write_bytes(b"")
    (tiny_data / "val" / "NORMAL" / "IM-0004-0001.png").write_text("not a png")
    audit = audit_dataset(tiny_data)
    assert set(audit.unreadable) == {
        "test/PNEUMONIA/person1015_bacteria_0.jpeg",
        "train/NORMAL/IM-0003-0001.jpeg",
        "val/NORMAL/IM-0004-0001.png",
    }
    assert "truncated" in audit.unreadable["test/PNEUMONIA/person1015_bacteria_0.jpeg"]
    assert "0 bytes" in audit.unreadable["train/NORMAL/IM-0003-0001.jpeg"]
    assert audit.counts["train"]["NORMAL"] == 9  # counted, flagged
    assert audit.sizes["NORMAL"].images == 8 + 1 + 4  # sizes only from readable files
    assert any("3 unreadable" in w for w in audit.warnings)


def test_empty_class_missing_split_and_class_absent_from_test(tiny_data: Path) -> None:
    (tiny_data / "train" / "COVID").mkdir()
    shutil.rmtree(tiny_data / "val")
    shutil.rmtree(tiny_data / "test" / "NORMAL")
    audit = audit_dataset(tiny_data)
    assert audit.class_names == ("COVID", "NORMAL", "PNEUMONIA")
    assert audit.splits == ("train", "test")
    assert audit.missing_classes == {"train": ("COVID",), "test": ("COVID", "NORMAL")}
    assert audit.counts["test"] == {"COVID": 0, "NORMAL": 0, "PNEUMONIA": 4}
    text = "\n".join(audit.warnings)
    assert "split(s) missing: val" in text
    assert "class 'COVID' has no images in any split" in text
    assert "test has no images of class(es) NORMAL" in text
    assert "train has no images" not in text  # COVID is reported once, as empty


def test_size_shortcut_warning(tiny_data: Path) -> None:
    for path in (tiny_data / "train" / "NORMAL").iterdir():
        new_image(path, size=64)
    audit = audit_dataset(tiny_data)
    assert audit.sizes["NORMAL"].width_median == 64
    assert audit.sizes["PNEUMONIA"].width_median == 40
    assert any("median image width differs by class" in w for w in audit.warnings)


def test_errors_for_what_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(XrayError, match="does not exist"):
        audit_dataset(tmp_path / "missing")
    with pytest.raises(XrayError, match="no train/, val/ or test/"):
        audit_dataset(tmp_path)


def test_progress_and_json(tiny_data_ro: Path) -> None:
    progress = make_progress(transient=True)
    with progress:
        audit = audit_dataset(tiny_data_ro, progress=progress)
    (task,) = progress.tasks
    assert task.completed == task.total == 30
    doc = json.loads(json.dumps(audit.as_dict()))
    assert doc["counts"]["val"] == {"NORMAL": 1, "PNEUMONIA": 1}
    assert doc["leakage"] is False
    assert doc["sizes"]["NORMAL"]["height_max"] == 40


def test_csv_and_npz_audits(tiny_data: Path, tmp_path: Path) -> None:
    manifest = tiny_data / "m.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "patient"])
        writer.writerow(["train/NORMAL/IM-1001-0001.jpeg", "NORMAL", "train", "a"])
        writer.writerow(["val/NORMAL/IM-1011-0001.jpeg", "NORMAL", "val", "a"])
    audit = audit_dataset(manifest)
    assert audit.kind == "csv"
    assert audit.splits == ("train", "val")  # as given: no carving
    assert audit.shared_patients == {"a": ("train", "val")}

    images = np.zeros((4, 8, 8), dtype=np.uint8)
    images[1] = 7
    npz = tmp_path / "d.npz"
    np.savez(npz, train_images=images, train_labels=np.array([0, 1, 0, 1]))
    audit = audit_dataset(npz)
    assert audit.kind == "npz"
    assert audit.counts == {"train": {"NORMAL": 2, "PNEUMONIA": 2}}
    (dup,) = audit.duplicates  # rows 0, 2 and 3 are identical
    assert dup.keys == ("train/000000", "train/000002", "train/000003")


def test_realsample_audit(realsample: Path) -> None:
    with (realsample / "index.csv").open() as handle:
        index = list(csv.DictReader(handle))
    audit = audit_dataset(realsample)
    expected = Counter((row["split"], row["label"]) for row in index)
    assert {(s, c): n for s, row in audit.counts.items() for c, n in row.items()} == expected
    assert audit.patients == {
        split: len({row["patient_id"] for row in index if row["split"] == split})
        for split in ("train", "test")
    }
    assert audit.patients == {"train": 24, "test": 14}
    assert audit.unreadable == {}
    assert audit.shared_patients == {}
    assert audit.duplicates == ()
    widths = [int(row["width"]) for row in index if row["label"] == "PNEUMONIA"]
    assert audit.sizes["PNEUMONIA"].width_min == min(widths)
    assert audit.sizes["PNEUMONIA"].width_max == max(widths)
    assert any("width differs by class" in w for w in audit.warnings)  # NORMAL ~2x larger
    assert "split(s) missing: val" in audit.warnings


def test_audit_of_a_multilabel_csv_counts_images_with_and_without_findings(
    tmp_path: Path,
) -> None:
    from conftest import write_tiny_multilabel

    from featurestore.data import audit_dataset

    audit = audit_dataset(write_tiny_multilabel(tmp_path / "ml"))
    assert audit.class_names == ("No Finding", "any finding")
    total = sum(sum(per.values()) for per in audit.counts.values())
    assert total == 76 and not audit.leakage
