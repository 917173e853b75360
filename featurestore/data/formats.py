"""Which files are images xray reads, and file names as text that can always be printed."""

from __future__ import annotations

from pathlib import Path

PILLOW_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
"""Formats decoded by Pillow (TIFF and PNG up to 16 bits, float TIFF, BMP, WebP, JPEG)."""
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = PILLOW_SUFFIXES | DICOM_SUFFIXES
"""Suffixes read as images; DICOM files are also recognised by content, whatever their name."""
READ_FORMATS = ".jpeg/.jpg/.png/.tif/.tiff/.bmp/.webp/.dcm, or DICOM under any name"
"""The formats read, in words, for messages."""
DICOM_MAGIC_OFFSET = 128
"""DICOM Part 10 files: a 128-byte preamble, then `DICM` (PS3.10 section 7.1)."""
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
"""Operating-system litter in folders: never an image, not worth a line in the audit."""


def has_dicom_magic(path: Path) -> bool:
    """True when the file holds `DICM` at byte 128 (PACS exports often have no extension)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def is_image_file(path: Path) -> bool:
    """A file xray reads: a known image suffix, or DICOM content under any other name.

    Only files with another suffix are sniffed (132 bytes), so JPEG/PNG datasets cost nothing.
    """
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return path.name.lower() not in IGNORED_NAMES and has_dicom_magic(path)


def is_utf8(text: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    r"""`text` with bytes that are not UTF-8 written as `\xe9`: safe to print, JSON, CSV, HDF5.

    Linux hands Python undecodable file-name bytes as lone surrogates (PEP 383); printing or
    encoding those raises UnicodeEncodeError, so every message naming a file goes through this.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def not_utf8_reason(name: str) -> str:
    """One line naming a path (or key) that is not valid UTF-8 and saying what to do."""
    return (
        f"{printable(name)}: the name is not valid UTF-8 (zips made on Windows do this): "
        "rename it, e.g. `convmv -f cp1252 -t utf8 --notest -r FOLDER`"
    )
