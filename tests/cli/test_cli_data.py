"""Tests for `xray data check` and `xray data synth` through the Typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def test_check_prints_tables(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro)])
    assert result.exit_code == 0, result.output
    assert "images per split and class" in result.stdout
    assert "image size (pixels) per class" in result.stdout
    assert "no leakage between splits" in result.stdout


def test_check_json(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"][0] == {
        "split": "train",
        "NORMAL": 8,
        "PNEUMONIA": 12,
        "images": 20,
        "patients": 10,
    }
    assert doc["counts"]["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert doc["leakage"] is False


def test_check_uses_xray_data(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--json"], env={"XRAY_DATA": str(tiny_data_ro)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["root"] == str(tiny_data_ro)


def test_strict_exits_one_on_leakage(tiny_data: Path) -> None:
    source = tiny_data / "train" / "NORMAL" / "IM-1001-0001.jpeg"
    shutil.copy(source, tiny_data / "test" / "NORMAL" / "IM-0001-0001.jpeg")
    shutil.copy(source, tiny_data / "val" / "NORMAL" / "NORMAL2-IM-1002-0001.jpeg")
    relaxed = runner.invoke(app, ["data", "check", "--data", str(tiny_data)])
    assert relaxed.exit_code == 0, relaxed.output
    assert "patients shared between" in relaxed.stdout
    assert "IM-1002 │ train, val" in relaxed.stdout
    assert "val/NORMAL/NORMAL2-IM-1002-0001.jpeg" in relaxed.stdout  # folded, not cut
    assert "byte-identical files" in relaxed.stdout
    assert "warning:" in relaxed.stdout
    strict = runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--strict"])
    assert strict.exit_code == 1
    assert "strict:" in strict.stderr


def test_strict_exits_one_on_unreadable_file(tiny_data: Path) -> None:
    (tiny_data / "train" / "NORMAL" / "IM-0005-0001.jpeg").write_bytes(b"\xff\xd8\xff")
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--strict"])
    assert result.exit_code == 1
    assert "unreadable files" in result.stdout
    assert "IM-0005-0001.jpeg" in result.stdout


def test_strict_passes_on_clean_data(tiny_data_ro: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data_ro), "--strict"])
    assert result.exit_code == 0, result.output


def test_check_user_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["check", "synth"])
def test_help_has_examples(command: str) -> None:
    result = runner.invoke(app, ["data", command, "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert f"xray data {command}" in result.stdout


def test_synth_passes_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featurestore.data.synth

    seen: dict[str, object] = {}

    def fake_generate(out_dir: Path, **kwargs: object) -> featurestore.data.synth.SynthSummary:
        seen.update(kwargs, out_dir=out_dir)
        return featurestore.data.synth.SynthSummary(
            root=out_dir,
            counts={"train": {"NORMAL": 3, "PNEUMONIA": 9}, "val": {"NORMAL": 1, "PNEUMONIA": 1}},
            patients={"train": 5, "val": 2},
        )

    monkeypatch.setattr(featurestore.data.synth, "generate_synthetic", fake_generate)
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--seed", "3", "--patients", "40", "--overwrite"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert seen["out_dir"] == out
    assert (seen["seed"], seen["patients"], seen["overwrite"]) == (3, 40, True)
    doc = json.loads(result.stdout)
    assert doc["rows"][0] == {
        "split": "train",
        "NORMAL": 3,
        "PNEUMONIA": 9,
        "images": 12,
        "patients": 5,
    }
    assert doc["seed"] == 3


def test_synth_writes_a_checkable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--patients", "12", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    check = runner.invoke(app, ["data", "check", "--data", str(out), "--json", "--strict"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["rows"] == written["rows"]
    again = runner.invoke(app, ["data", "synth", "--out", str(out), "--patients", "12"])
    assert again.exit_code == 2
    assert "--overwrite" in again.stderr


# --- #13 items 6, 7, 9, 10: odd file names, undecodable DICOM, other formats, unzip roots ------

LATIN1_NAME = b"caf\xe9-IM-0001-0001.png"  # a name a Windows zip tool wrote in cp1252


def _one_error_line(result: object) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def _non_utf8_dataset(tiny_data: Path) -> Path:
    import os

    folder = os.fsencode(tiny_data / "train" / "NORMAL")
    shutil.copy(next((tiny_data / "train" / "NORMAL").glob("*.jpeg")), folder + b"/" + LATIN1_NAME)
    return tiny_data


def test_check_reports_a_file_name_that_is_not_utf8(tiny_data: Path) -> None:
    data = _non_utf8_dataset(tiny_data)
    result = runner.invoke(app, ["data", "check", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (key,) = [k for k in doc["unreadable"] if "caf" in k]
    assert key == "train/NORMAL/caf\\xe9-IM-0001-0001.png"
    assert "not valid UTF-8" in doc["unreadable"][key]
    table = runner.invoke(app, ["data", "check", "--data", str(data), "--strict"])
    assert table.exit_code == 1 and "caf\\xe9" in table.stdout, table.output


@pytest.mark.parametrize("command", [["extract", "--cache"], ["finetune", "--runs"]])
def test_stages_refuse_a_file_name_that_is_not_utf8_with_one_line(
    tiny_data: Path, tmp_path: Path, command: list[str]
) -> None:
    data = _non_utf8_dataset(tiny_data)
    result = runner.invoke(
        app,
        [command[0], "--model", "resnet18", "--weights", "none", "--data", str(data),
         command[1], str(tmp_path / "c")],
    )  # fmt: skip
    line = _one_error_line(result)
    assert "train/NORMAL/caf\\xe9-IM-0001-0001.png" in line and "not valid UTF-8" in line
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.h5"))


def test_a_class_folder_name_that_is_not_utf8_is_refused_by_name(tiny_data: Path) -> None:
    import os

    os.rename(
        os.fsencode(tiny_data / "test" / "NORMAL"), os.fsencode(tiny_data / "test") + b"/NORM\xc9"
    )
    result = runner.invoke(app, ["extract", "-m", "resnet18", "--data", str(tiny_data)])
    assert "test/NORM\\xc9/" in _one_error_line(result)


def test_csv_that_is_not_utf8_is_one_line(tiny_data: Path) -> None:
    manifest = tiny_data / "m.csv"
    manifest.write_bytes(b"path,label,split\ntrain/NORMAL/caf\xe9.jpeg,NORMAL,train\n")
    result = runner.invoke(app, ["extract", "--data", str(manifest), "--model", "resnet18"])
    assert "line 2 is not valid UTF-8" in _one_error_line(result)


def test_check_reads_other_formats_and_lists_what_it_leaves_out(tiny_data: Path) -> None:
    from PIL import Image

    normal = tiny_data / "train" / "NORMAL"
    source = Image.open(next(normal.glob("*.jpeg")))
    for suffix in (".tif", ".bmp", ".webp"):
        source.save(normal / f"IM-7001-0001{suffix}")
    (normal / "notes.txt").write_text("reader's notes")
    (normal / "scan.gif").write_bytes(b"GIF89a")
    (normal / "Thumbs.db").write_bytes(b"\0" * 10)  # operating-system litter: not worth a line
    (tiny_data / "train" / "IM-7002-0001.png").write_bytes(b"beside the class folders")
    doc = json.loads(
        runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--json"]).stdout
    )
    assert doc["counts"]["train"]["NORMAL"] == 8 + 3
    assert doc["ignored"] == [
        "train/IM-7002-0001.png", "train/NORMAL/notes.txt", "train/NORMAL/scan.gif"
    ]  # fmt: skip
    assert any("left out" in w for w in doc["warnings"])
    text = runner.invoke(app, ["data", "check", "--data", str(tiny_data)]).stdout
    assert "train/NORMAL/notes.txt" in text and "left out" in text


def test_check_lists_an_undecodable_dicom_with_the_extra_to_install(tiny_data: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3not really a jpeg\xff\xd9"])
    ds.save_as(tiny_data / "train" / "NORMAL" / "IM-8001-0001.dcm", enforce_file_format=True)
    # A PACS export without an extension is read too (good DICOM, by its magic).
    good = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    good.save_as(tiny_data / "train" / "NORMAL" / "IM-8002-0001", enforce_file_format=True)
    result = runner.invoke(app, ["data", "check", "--data", str(tiny_data), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["counts"]["train"]["NORMAL"] == 8 + 2
    assert list(doc["unreadable"]) == ["train/NORMAL/IM-8001-0001.dcm"]
    why = doc["unreadable"]["train/NORMAL/IM-8001-0001.dcm"]
    assert ".[dicom-codecs]" in why or "unreadable DICOM" in why
    assert doc["ignored"] == []
    text = runner.invoke(app, ["data", "check", "--data", str(tiny_data)]).stdout
    assert ".[dicom-codecs]" in text or "unreadable DICOM" in text  # not eaten as markup


def test_the_unzip_root_names_the_folder_that_looks_like_the_dataset(tiny_data: Path) -> None:
    unzip_root = tiny_data.parent  # holds chest_xray/ ...
    (unzip_root / "__MACOSX" / "chest_xray" / "train").mkdir(parents=True)  # ... and litter
    line = _one_error_line(
        runner.invoke(app, ["extract", "-m", "resnet18", "--data", str(unzip_root)])
    )
    assert f"{tiny_data} looks like the dataset: pass --data {tiny_data}" in line
    check = runner.invoke(app, ["data", "check", "--data", str(unzip_root)])
    assert f"pass --data {tiny_data}" in _one_error_line(check)


def test_a_dataset_folder_whose_path_is_not_utf8(tiny_data: Path) -> None:
    import os

    moved = os.fsencode(tiny_data.parent) + b"/d\xe9"
    os.rename(os.fsencode(tiny_data), moved)
    data = os.fsdecode(moved)
    check = runner.invoke(app, ["data", "check", "--data", data])
    assert check.exit_code == 0 and "d\\xe9" in check.stdout, check.output
    line = _one_error_line(runner.invoke(app, ["extract", "-m", "resnet18", "--data", data]))
    assert "d\\xe9: the name is not valid UTF-8" in line


def test_check_counts_the_three_classes_with_labels_kermany3(tmp_path: Path) -> None:
    """`--labels kermany3` audits the classes the three-class task trains on, as it reads them."""
    from conftest import write_tiny_kermany3

    from featurestore.data import load_manifest

    data = write_tiny_kermany3(tmp_path / "chest_xray")
    result = runner.invoke(app, ["data", "check", "--data", str(data), "--labels", "kermany3",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert doc["label_scheme"] == "kermany3" and doc["unplaced"] == []
    m = load_manifest(data, labels="kermany3", val_min=0)  # as given: nothing carved
    for split, per_class in doc["counts"].items():
        for k, name in enumerate(m.class_names):
            assert per_class[name] == sum(r.label == k for r in m.split(split)), (split, name)
    # A PNEUMONIA file whose name says neither type is listed, and --strict fails on it.
    victim = next((data / "train" / "PNEUMONIA").glob("*bacteria*"))
    victim.rename(victim.with_name("person9999_1.jpeg"))
    strict = runner.invoke(app, ["data", "check", "--data", str(data), "--labels", "kermany3",
                                 "--strict"])  # fmt: skip
    assert strict.exit_code == 1
    assert "cannot place" in strict.stdout and "person9999_1.jpeg" in strict.stdout


def test_check_labels_kermany3_on_other_classes_is_one_line(tmp_path: Path) -> None:
    for cls in ("CAT", "DOG"):
        (tmp_path / "d" / "train" / cls).mkdir(parents=True)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "d"),
                                 "--labels", "kermany3"])  # fmt: skip
    assert result.exit_code != 0
    assert "--labels kermany3 needs a Kermany-layout dataset" in result.output
    assert "Traceback" not in result.output


def test_check_reads_the_real_sample_as_three_classes(realsample: Path) -> None:
    result = runner.invoke(app, ["data", "check", "--data", str(realsample), "--labels",
                                 "kermany3", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    total = sum(sum(c.values()) for c in doc["counts"].values())
    assert total + len(doc["unplaced"]) == sum(1 for _ in realsample.rglob("*.jpeg"))
    assert all(sum(c.values()) for c in doc["counts"].values())
