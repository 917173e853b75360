"""The digest cache: an unchanged dataset costs a stat per file; any change is still detected."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from featurestore.data import (
    DIGESTS_FOLDER,
    DigestCache,
    dataset_fingerprint,
    file_digest,
    load_manifest,
)
from featurestore.errors import XrayError

OLD = 10.0  # seconds in the past: older than the racy window, so entries are trusted


def age(files: list[Path], seconds: float = OLD) -> None:
    """Set every file's mtime `seconds` back (as a dataset copied long ago would be)."""
    when = time.time() - seconds
    for f in files:
        os.utime(f, (when, when))


def images(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpeg"))


def counts(cache_dir: Path, root: Path, *, rehash: bool = False) -> tuple[int, int]:
    """(hashed, reused) when every image of `root` is asked for once, then saved."""
    cache = DigestCache(cache_dir / DIGESTS_FOLDER, root, rehash=rehash)
    for f in images(root):
        assert cache.digest(f.relative_to(root).as_posix()) == file_digest(f)
    cache.save()
    return cache.hashed, cache.reused


def test_unchanged_dataset_is_answered_by_stat(tiny_data: Path, tmp_path: Path) -> None:
    n = len(images(tiny_data))
    age(images(tiny_data))
    assert counts(tmp_path, tiny_data) == (n, 0)  # first time: every file hashed
    assert counts(tmp_path, tiny_data) == (0, n)  # then: stat only
    assert counts(tmp_path, tiny_data, rehash=True) == (n, 0)  # --rehash: all hashed again
    # The cache lives under the cache folder only, one JSON file per dataset root.
    assert [p.suffix for p in (tmp_path / DIGESTS_FOLDER).iterdir()] == [".json"]


def _changed_fingerprint(data: Path, cache: Path, change: object) -> tuple[str, str, str]:
    m = load_manifest(data)
    before = dataset_fingerprint(m, cache_dir=cache)
    assert dataset_fingerprint(m, cache_dir=cache) == before  # cached: the same answer
    change()  # type: ignore[operator]
    after = dataset_fingerprint(load_manifest(data), cache_dir=cache)
    return before, after, dataset_fingerprint(load_manifest(data))  # uncached reference


def test_modified_image_same_size_new_mtime_is_detected(tiny_data: Path, tmp_path: Path) -> None:
    age(images(tiny_data))
    image = images(tiny_data)[3]

    def flip_a_byte() -> None:
        data = bytearray(image.read_bytes())
        data[-3] ^= 0xFF
        image.write_bytes(bytes(data))  # same size, mtime now

    before, after, truth = _changed_fingerprint(tiny_data, tmp_path, flip_a_byte)
    assert after != before and after == truth


def test_modified_image_same_mtime_other_size_is_detected(tiny_data: Path, tmp_path: Path) -> None:
    age(images(tiny_data))
    image = images(tiny_data)[5]

    def append_keep_mtime() -> None:
        st = image.stat()
        image.write_bytes(image.read_bytes() + b"\0")
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back

    before, after, truth = _changed_fingerprint(tiny_data, tmp_path, append_keep_mtime)
    assert after != before and after == truth


def test_same_size_and_mtime_put_back_is_detected_by_ctime(tiny_data: Path, tmp_path: Path) -> None:
    """Restoring mtime after an edit cannot restore ctime (the kernel sets it)."""
    age(images(tiny_data))
    image = images(tiny_data)[7]

    def edit_and_hide() -> None:
        st = image.stat()
        data = bytearray(image.read_bytes())
        data[-3] ^= 0xFF
        time.sleep(0.01)  # the ctime tick must differ from the original one
        image.write_bytes(bytes(data))
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))

    before, after, truth = _changed_fingerprint(tiny_data, tmp_path, edit_and_hide)
    assert after != before and after == truth


def test_recently_modified_files_are_not_trusted(tiny_data: Path, tmp_path: Path) -> None:
    """A file written just before it was hashed could change again within the same mtime
    tick: like git's racy entries, it is hashed again next time."""
    n = len(images(tiny_data))  # written just now by the fixture
    assert counts(tmp_path, tiny_data) == (n, 0)
    assert counts(tmp_path, tiny_data) == (n, 0)


def test_torn_cache_file_is_ignored(tiny_data: Path, tmp_path: Path) -> None:
    age(images(tiny_data))
    n = len(images(tiny_data))
    counts(tmp_path, tiny_data)
    (cache_file,) = (tmp_path / DIGESTS_FOLDER).iterdir()
    cache_file.write_text('{"format": 1, "root": ')  # a torn write by someone else
    assert counts(tmp_path, tiny_data) == (n, 0)
    assert counts(tmp_path, tiny_data) == (0, n)  # rewritten whole


def test_unreadable_image_is_one_line(tiny_data: Path, tmp_path: Path) -> None:
    m = load_manifest(tiny_data)
    images(tiny_data)[0].unlink()
    with pytest.raises(XrayError, match=r"cannot read .*jpeg to check the dataset"):
        dataset_fingerprint(m, cache_dir=tmp_path)
