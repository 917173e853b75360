"""Atomic writes: a failure leaves the destination as it was and no temporary behind."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from featurestore.errors import XrayError
from featurestore.fileio import atomic_dir, atomic_path, atomic_write_bytes, file_digest


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_a_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_full_disk_is_one_line_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    with (
        pytest.raises(XrayError, match="disk full while writing") as info,
        atomic_path(target, kept=" (kept)") as tmp,
    ):
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value).endswith("(kept)")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with pytest.raises(KeyError), atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (final / "config.json").is_file()
    with pytest.raises(FileExistsError), atomic_dir(final):
        pass
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "report.md").write_text("# new")
    assert sorted(p.name for p in final.iterdir()) == ["report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_file_digest_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * (1 << 20) + 17)  # crosses block boundaries
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, algorithm="blake2b") == hashlib.blake2b(data).hexdigest()
