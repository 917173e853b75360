"""The `xray` app itself: --version, and usage mistakes as one `error:` line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from featurestore import __version__


def xray(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it (the app's own main, not CliRunner)."""
    code = "from featurestore.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    result = xray("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"xray {__version__}"


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["explain", "--run", "runs/x"], "Missing argument 'images'"),
        (["explain", "--run", "runs/x", "a.png"], "Missing option '--out'"),
        (["predict", "a.png"], "pass --run RUN_FOLDER or --model"),
    ],
)
def test_missing_required_options_are_one_error_line(args: list[str], missing: str) -> None:
    """Issue 14.7: the same one line and exit code 2 as every other mistake."""
    result = xray(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + missing), result.stderr
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr + result.stdout
