"""Progress for every long-running step: rich bars on a terminal, plain lines in a log."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PROGRESS_SECONDS_ENV = "XRAY_PROGRESS_SECONDS"
DEFAULT_LOG_INTERVAL = 30.0
"""Seconds between plain progress lines of one task when stderr is not a terminal (after the
line it starts with): a 20-minute job writes ~40 lines per task, enough to see it move, too
few to flood a log."""


class ThroughputColumn(ProgressColumn):
    """Items per second, with the task's unit (`img/s`, `batch/s`)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


class LogProgress(Progress):
    """Progress for a console that is not a terminal (`xray demo 2>log`, nohup, a scheduler).

    rich draws nothing there until the end, so a long job looks dead. This prints one plain
    line when a task starts (`extract resnet50: started, 5,232 img`: a job shorter than the
    interval still leaves a trace; none for a task added with `announced=True`, whose caller
    prints its own first line), then at most one every `interval` seconds, the last when
    the task finishes:
    `extract resnet50: 1,200/5,232 img (23%), 41.2 img/s, 0:00:29 elapsed, ~0:01:38 left`.
    """

    def __init__(self, console: Console, *, interval: float, **kwargs: Any) -> None:
        super().__init__(console=console, disable=True, **kwargs)
        self.interval = interval
        self._started: dict[TaskID, float] = {}
        self._last_line: dict[TaskID, float] = {}
        self._closed: set[TaskID] = set()

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._started[task_id] = self._last_line[task_id] = time.monotonic()
        with self._lock:
            task = self._tasks[task_id]
        if not task.fields.get("announced"):  # the caller printed its own, fuller first line
            self.console.print(start_line(task), markup=False, highlight=False, soft_wrap=True)
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_log(task_id)

    def _maybe_log(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or task_id in self._closed:
            return
        now = time.monotonic()
        if task.total is not None and task.completed >= task.total:
            self._closed.add(task_id)
            # A task done within one interval says nothing (a log of short steps stays
            # short); a longer one ends with its final line.
            if now - self._started.get(task_id, now) < self.interval:
                return
        elif now - self._last_line.get(task_id, now) < self.interval:
            return
        self._last_line[task_id] = now
        self.console.print(progress_line(task), markup=False, highlight=False, soft_wrap=True)


def start_line(task: Task) -> str:
    """The line a task starts with: what, and how many items (and how many are done already,
    for a resumed one)."""
    unit = task.fields.get("unit", "it")
    line = f"{task.description}: started"
    if task.total is not None:
        line += f", {task.total:,.0f} {unit}"
        if task.completed:
            line += f" ({task.completed:,.0f} done before)"
    return line


def progress_line(task: Task) -> str:
    """One plain line: what, how far, how fast, how long so far and to go."""
    unit = task.fields.get("unit", "it")
    done = f"{task.completed:,.0f}"
    if task.total:
        done += f"/{task.total:,.0f} {unit} ({task.completed / task.total:.0%})"
    else:
        done += f" {unit}"
    speed = task.finished_speed or task.speed
    parts = [f"{task.description}: {done}"]
    if speed:
        parts.append(f"{speed:,.1f} {unit}/s")
    elapsed = task.finished_time if task.finished else task.elapsed
    if elapsed is not None:
        parts.append(f"{datetime.timedelta(seconds=round(elapsed))} elapsed")
    remaining = task.time_remaining
    if remaining is not None and not task.finished and task.completed:
        parts.append(f"~{datetime.timedelta(seconds=round(remaining))} left")
    return ", ".join(parts)


def log_interval() -> float:
    """Seconds between plain progress lines: $XRAY_PROGRESS_SECONDS, else 30."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_LOG_INTERVAL
    except ValueError:
        return DEFAULT_LOG_INTERVAL


def make_progress(console: Console | None = None, *, transient: bool = False) -> Progress:
    """A progress display: description, bar, done/total, throughput, elapsed, remaining.

    On a console that is not a terminal (stderr redirected to a file) it is a `LogProgress`:
    periodic plain lines instead of a live bar nobody sees.
    """
    if console is not None and not console.is_terminal and not console.is_jupyter:
        return LogProgress(console, interval=log_interval())
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ThroughputColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
