"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class XrayError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2.

    Raise it for bad input (missing folder, corrupt image, stale store, offline weights...).
    Bugs keep raising ordinary exceptions so they still show a traceback.
    """


@contextlib.contextmanager
def disk_errors(path: Path, *, kept: str = "") -> Iterator[None]:
    """A full disk (or quota) while writing `path` becomes one XrayError saying what to do."""
    try:
        yield
    except OSError as exc:
        # HDF5 reports a failed write without errno, the reason only in its message.
        if exc.errno not in DISK_FULL and "No space left on device" not in str(exc):
            raise
        raise XrayError(
            f"disk full while writing {path} (No space left on device): free space in "
            f"{Path(path).parent} and run the same command again{kept}"
        ) from None
    except RuntimeError as exc:
        # torch.save's zip writer turns ENOSPC into RuntimeError("[enforce fail at
        # inline_container.cc:672] . unexpected pos 576 vs 534"), seen on a full tmpfs.
        if "inline_container" not in str(exc) and "PytorchStreamWriter" not in str(exc):
            raise
        raise XrayError(
            f"could not write {path} (torch.save failed mid-write; is the disk full?): "
            f"free space in {Path(path).parent} and run the same command again{kept}"
        ) from None
