"""Which files are images, and file names that are not UTF-8 as printable text (#13 items 6, 9)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from featurestore.data import IMAGE_SUFFIXES, has_dicom_magic, is_image_file, is_utf8, printable


def test_a_latin1_file_name_round_trips_to_printable_text(tmp_path: Path) -> None:
    (Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))).write_bytes(b"x")
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert not is_utf8(name)
    shown = printable(name)
    assert shown == "caf\\xe9.png" and is_utf8(shown)
    json.dumps(shown, ensure_ascii=False).encode("utf-8")  # no UnicodeEncodeError
    assert printable("café.png") == "café.png" and is_utf8("café.png")


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_known_suffixes_are_images_without_reading_them(tmp_path: Path, suffix: str) -> None:
    assert is_image_file(tmp_path / f"missing{suffix.upper()}")  # the name is enough


def test_other_files_are_images_only_with_the_dicom_magic(tmp_path: Path) -> None:
    dicom = tmp_path / "1.2.840.113619.2"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    short = tmp_path / "IM0001"
    short.write_bytes(b"DICM")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a radiograph " * 20)
    assert has_dicom_magic(dicom) and is_image_file(dicom)
    assert not is_image_file(short) and not is_image_file(notes)
    assert not is_image_file(tmp_path / "gone")
