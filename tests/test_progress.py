"""Progress when stderr is a log file: periodic plain lines, few of them (#13 item 14)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from featurestore.cli.main import app
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from featurestore import progress as progress_module
from featurestore.progress import LogProgress, make_progress


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=60), buffer


def test_a_terminal_gets_the_live_bar_and_a_log_gets_plain_lines() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(make_progress(terminal), LogProgress)
    assert isinstance(make_progress(terminal), Progress)
    assert isinstance(make_progress(_log_console()[0]), LogProgress)


def test_lines_say_what_how_far_and_how_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    console, buffer = _log_console()
    with LogProgress(console, interval=30.0, get_time=lambda: clock[0]) as bar:
        task = bar.add_task("extract resnet50", total=1000, unit="img")
        for _ in range(100):  # 100 s at 10 img/s, one advance a second
            clock[0] += 1.0
            bar.advance(task, 10)
    lines = buffer.getvalue().splitlines()
    # The start, one line per 30 s, and the final one: few enough for a log, never silent.
    assert len(lines) == 5, lines
    assert lines[0] == "extract resnet50: started, 1,000 img"
    assert lines[1].startswith("extract resnet50: 300/1,000 img (30%), 10.0 img/s")
    assert "0:00:30 elapsed" in lines[1] and "~0:01:10 left" in lines[1]
    assert lines[-1].startswith("extract resnet50: 1,000/1,000 img (100%)")
    assert all(len(line) > 60 for line in lines[1:])  # never hard-wrapped to the console width


def test_a_short_task_writes_its_start_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job shorter than the interval still says what it did (issue #27: a 20-s job left a
    log with no progress at all); no final line repeats it."""
    console, buffer = _log_console()
    with LogProgress(console, interval=30.0) as bar:
        task = bar.add_task("fingerprint", total=20, unit="img")
        for _ in range(20):
            bar.advance(task)
    assert buffer.getvalue().splitlines() == ["fingerprint: started, 20 img"]


def test_the_start_line_comes_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    console, buffer = _log_console()
    with LogProgress(console, interval=5.0, get_time=lambda: clock[0]) as bar:
        bar.add_task("training", total=100, completed=3, unit="epoch")
        assert buffer.getvalue() == "training: started, 100 epoch (3 done before)\n"
        bar.add_task("warm-up", total=None)
        assert buffer.getvalue().splitlines()[-1] == "warm-up: started"
        before = buffer.getvalue()
        bar.add_task("sweep", total=4, unit="epochs", announced=True)  # its caller's own line
        assert buffer.getvalue() == before
        task = bar.add_task("extract resnet50", total=1000, unit="img")
        for _ in range(20):  # 20 s: one line at 5, 10, 15, 20 s after the start line
            clock[0] += 1.0
            bar.advance(task, 10)
    lines = [x for x in buffer.getvalue().splitlines() if x.startswith("extract")]
    assert lines[0] == "extract resnet50: started, 1,000 img" and len(lines) == 5, lines
    assert "0:00:05 elapsed" in lines[1] and "0:00:20 elapsed" in lines[-1]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAY_PROGRESS_SECONDS", "5")
    assert progress_module.log_interval() == 5.0
    monkeypatch.setenv("XRAY_PROGRESS_SECONDS", "often")
    assert progress_module.log_interval() == progress_module.DEFAULT_LOG_INTERVAL


def test_a_command_with_stderr_redirected_prints_progress_lines(
    tiny_data_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XRAY_PROGRESS_SECONDS", "0")  # every step, to see it in a short run
    result = CliRunner().invoke(app, ["data", "check", "--data", str(tiny_data_ro)])
    assert result.exit_code == 0, result.output
    assert "checking images: started, 30 img" in result.output
    assert "checking images: 30/30 img (100%)" in result.output
    assert "img/s" in result.output
