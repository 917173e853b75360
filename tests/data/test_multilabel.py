"""Multi-label readers (NIH ChestX-ray14, CheXpert, per-finding CSV) and uncertainty policies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore.data import (
    CHEXPERT_FINDINGS,
    NIH_FINDINGS,
    dataset_fingerprint,
    load_manifest,
    target_value,
)
from featurestore.errors import XrayError


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    ("raw", "policy", "expected"),
    [("1", "ignore", 1.0), ("0", "ones", 0.0), ("", "ones", 0.0), ("1.0", "zeros", 1.0),
     ("-1", "zeros", 0.0), ("-1", "ones", 1.0), ("-1.0", "ignore", math.nan)],
)  # fmt: skip
def test_uncertainty_policies(raw: str, policy: str, expected: float) -> None:
    got = target_value(raw, policy, "here")  # type: ignore[arg-type]
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_a_bad_cell_is_one_line_naming_it() -> None:
    with pytest.raises(XrayError, match="here: label 'maybe'"):
        target_value("maybe", "zeros", "here")  # type: ignore[arg-type]


def write_nih(root: Path, *, drop: str | None = None) -> Path:
    """Six images of four patients; two findings co-occur; official split lists."""
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 1),
        ("00000001_001.png", "No Finding", 1),
        ("00000002_000.png", "Mass", 2),
        ("00000003_000.png", "Effusion", 3),
        ("00000004_000.png", "No Finding", 4),
        ("00000004_001.png", "Pneumonia|Infiltration", 4),
    ]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"]
    for i, (name, findings, patient) in enumerate(rows):
        lines.append(f"{name},{findings},0,{patient},50")
        if name != drop:
            _png(root / f"images_00{1 + i % 2}" / "images" / name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows[:4]) + "\n")
    (root / "test_list.txt").write_text("\n".join(r[0] for r in rows[4:]) + "\n")
    return root


def test_nih_reader(tmp_path: Path) -> None:
    m = load_manifest(write_nih(tmp_path / "nih"), val_min=0)
    assert m.task == "multilabel" and m.class_names == NIH_FINDINGS
    by_name = {Path(r.key).name: r for r in m.records}
    r = by_name["00000001_000.png"]
    on = {f for f, t in zip(m.class_names, r.targets or (), strict=True) if t == 1.0}
    assert on == {"Cardiomegaly", "Effusion"} and r.group == "nih00001"
    assert sum(by_name["00000001_001.png"].targets or ()) == 0.0  # No Finding: all absent
    assert {Path(r.key).name for r in m.split("test")} == {"00000004_000.png", "00000004_001.png"}
    assert by_name["00000003_000.png"].key == "images_002/images/00000003_000.png"


def test_nih_reader_refuses_missing_images(tmp_path: Path) -> None:
    root = write_nih(tmp_path / "nih", drop="00000002_000.png")
    with pytest.raises(XrayError, match=r"1 image.*00000002_000\.png"):
        load_manifest(root, val_min=0)
    (root / "test_list.txt").unlink()
    with pytest.raises(XrayError, match=r"test_list\.txt missing"):
        load_manifest(root, val_min=0)


def write_chexpert(base: Path) -> Path:
    root = base / "CheXpert-v1.0-small"
    head = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_FINDINGS)
    for split, file, patients in (("train", "train.csv", (1, 2, 3)), ("valid", "valid.csv", (9,))):
        lines = [head]
        for p in patients:
            rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study1/view1_frontal.jpg"
            _png(base / rel)
            cells = [""] * len(CHEXPERT_FINDINGS)
            cells[CHEXPERT_FINDINGS.index("Edema")] = "-1.0" if p == 1 else "1.0"
            cells[CHEXPERT_FINDINGS.index("Cardiomegaly")] = "0.0"
            lines.append(f"{rel},Male,60,Frontal,AP," + ",".join(cells))
        (root / file).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(("policy", "edema"), [("zeros", 0.0), ("ones", 1.0), ("ignore", None)])
def test_chexpert_reader_and_policies(tmp_path: Path, policy: str, edema: float | None) -> None:
    root = write_chexpert(tmp_path)
    m = load_manifest(root, uncertain=policy, val_min=0)
    assert m.task == "multilabel" and m.class_names == CHEXPERT_FINDINGS
    assert m.name == f"CheXpert-v1.0-small-u{policy}" and m.label_scheme == f"uncertain-{policy}"
    first = next(r for r in m.records if r.group == "patient00001")
    value = (first.targets or ())[CHEXPERT_FINDINGS.index("Edema")]
    assert math.isnan(value) if edema is None else value == edema
    assert (first.targets or ())[CHEXPERT_FINDINGS.index("Fracture")] == 0.0  # blank
    assert {r.group for r in m.split("test")} == {"patient00009"}  # valid.csv is the test set
    assert first.key == "train/patient00001/study1/view1_frontal.jpg"


def test_policies_give_different_fingerprints_and_store_names(tmp_path: Path) -> None:
    root = write_chexpert(tmp_path)
    a, b = (load_manifest(root, uncertain=p, val_min=0) for p in ("zeros", "ignore"))
    assert dataset_fingerprint(a) != dataset_fingerprint(b) and a.name != b.name
    # The scheme a store records reads the dataset back the same way.
    again = load_manifest(root, labels=b.label_scheme, val_min=0)
    assert dataset_fingerprint(again) == dataset_fingerprint(b)


def write_findings_csv(root: Path, *, piped: bool = False) -> Path:
    rows = []
    for i in range(8):
        _png(root / "img" / f"{i}.png")
        split = "test" if i >= 6 else "train"
        a, b = i % 2, int(i % 3 == 0)
        rows.append((f"img/{i}.png", split, f"pt{i // 2}", a, b))
    path = root / "labels.csv"
    if piped:
        found = ("|".join(n for n, v in (("Effusion", a), ("Mass", b)) if v) or "No Finding"
                 for _, _, _, a, b in rows)  # fmt: skip
        body = [f"{p},{s},{pt},{f}" for (p, s, pt, _, _), f in zip(rows, found, strict=True)]
        path.write_text("path,split,patient,findings\n" + "\n".join(body) + "\n")
    else:
        body = [f"{p},{s},{pt},{a},{-1 if p.endswith('1.png') else b}" for p, s, pt, a, b in rows]
        path.write_text("path,split,patient,Effusion,Mass\n" + "\n".join(body) + "\n")
    return path


@pytest.mark.parametrize("piped", [False, True])
def test_generic_findings_csv(tmp_path: Path, piped: bool) -> None:
    m = load_manifest(write_findings_csv(tmp_path, piped=piped), val_min=0)
    assert m.task == "multilabel" and m.class_names == ("Effusion", "Mass")
    by_key = {r.key: r.targets for r in m.records}
    assert by_key["img/3.png"] == (1.0, 1.0) and by_key["img/4.png"] == (0.0, 0.0)
    if not piped:
        assert math.isnan((by_key["img/1.png"] or (0.0, 0.0))[1])  # -1 under ignore: masked
    assert {r.group for r in m.split("test")} == {"pt3"}


def test_generic_csv_errors(tmp_path: Path) -> None:
    path = write_findings_csv(tmp_path)
    path.write_text(path.read_text().replace("img/2.png", "../escape.png"))
    with pytest.raises(XrayError, match="outside the CSV's folder"):
        load_manifest(path, val_min=0)
    with pytest.raises(ValueError):
        load_manifest(write_findings_csv(tmp_path / "b"), uncertain="maybe", val_min=0)
    with pytest.raises(XrayError, match="kermany3"):
        load_manifest(write_findings_csv(tmp_path / "c"), labels="kermany3", val_min=0)
