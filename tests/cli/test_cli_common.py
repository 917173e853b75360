"""cli.common tables at 80 columns: the title on one line, no blank value header (#28.10)."""

from __future__ import annotations

import io

from featurestore.cli.common import print_table
from rich.console import Console


def _render(title: str, columns: list[str], rows: list[list[str]], width: int = 80) -> str:
    buf = io.StringIO()
    print_table(title, columns, rows, out=Console(file=buf, width=width, force_terminal=False))
    return buf.getvalue()


def test_a_narrow_table_keeps_its_title_on_one_line() -> None:
    title = "external validation of run-20240101 on site_b (threshold from the run)"
    text = _render(title, ["metric", "value"], [["roc_auc", "0.812"], ["sensitivity", "0.9"]])
    assert title in text.splitlines()  # whole, not folded to the table's width


def test_a_wide_table_falls_back_to_labelled_field_value_blocks() -> None:
    columns = ["run", *(f"metric_number_{k}" for k in range(12))]
    rows = [[f"run-{r}", *(f"0.{k}{r}12345" for k in range(12))] for r in range(8)]
    title = "test metrics of every run, threshold chosen on validation"
    text = _render(title, columns, rows)
    lines = text.splitlines()
    assert title in lines
    assert max(len(line) for line in lines) <= 80
    assert "run: run-3" in text
    header_rows = [line for line in lines if "run" in line and "value" in line]
    assert header_rows  # every block's header names both columns
    assert "0.1312345" in text  # no digit lost
