"""What a run prints: one live progress line and one summary line; the epoch table on request."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from test_sweep_tasks import GRID, task_source

from featurestore.models import build_head
from featurestore.progress import make_progress
from featurestore.train import EPOCH_HEADER, VERBOSE_ENV, TrainConfig, fit, fit_sweep

CFG = TrainConfig(epochs=4, lr=1e-2, batch_size=32, patience=4, device="cpu")


def _log(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=100), buf


@pytest.mark.parametrize("verbose", [False, True])
def test_a_head_run_prints_a_summary_and_the_table_only_when_verbose(
    verbose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    console, buf = _log(terminal=False)
    torch.manual_seed(0)
    source = task_source("multiclass")
    result = fit(build_head("linear", 8, 3), source, CFG, console=console, verbose=verbose)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "training: up to 4 epochs, best epoch on val_auc"  # a log's first line
    best = result.history[result.best_epoch - 1]["val_auc"]
    assert lines[-1] == (
        f"training: 4/4 epochs, best epoch {result.best_epoch}, val_auc {best:.4f}, "
        + lines[-1].rsplit(", ", 1)[1]
    )
    assert (EPOCH_HEADER in lines) is verbose
    assert len(lines) == (2 + 1 + 4 if verbose else 2)


def test_the_environment_asks_for_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "1")
    console, buf = _log(terminal=True)
    torch.manual_seed(0)
    fit(build_head("linear", 8, 2), task_source("binary"), CFG, console=console)
    out = buf.getvalue()
    assert EPOCH_HEADER in out and "training: up to" not in out  # a terminal has its live bar


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_a_sweep_prints_one_summary_line_naming_the_chosen_member(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    console, buf = _log(terminal=False)
    with make_progress(console) as progress:
        swept = fit_sweep(task_source(kind), CFG, GRID, progress=progress, console=console)
    lines = buf.getvalue().splitlines()
    # The log's first line says the work started and what the sweep is, once.
    assert lines[0] == "sweep: 4 heads, up to 4 epochs, each selecting its best epoch on val_auc"
    assert not any("sweep epoch" in line for line in lines)
    row = swept.rows[swept.chosen]
    assert lines[-1].startswith("sweep: 4 heads, ") and lines[-1].endswith(
        f"chosen member {swept.chosen} (linear, lr {row['lr']:g}, wd {row['weight_decay']:g}): "
        f"best epoch {row['best_epoch']}, val_auc {row['val_auc']:.4f}"
    )
    assert len(lines) == 2  # a job shorter than the log interval writes no periodic lines
