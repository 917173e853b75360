"""Shared CLI plumbing: consoles, one-line user errors, tables or JSON, the --data default."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from featurestore.errors import XrayError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn XrayError into one line on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except XrayError as exc:
            from rich.markup import escape

            from featurestore.data import printable

            # Escaped: `pip install 'xray[dicom]'` is advice, not rich markup; printable: a file
            # name with bytes that are not UTF-8 must not crash the error line itself.
            message = escape(printable(str(exc)))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def notice(msg: str) -> None:
    """A progress note on stderr (stdout stays clean for tables and --json)."""
    err_console.print(f"[cyan]{msg}[/]", highlight=False)


def resolve_data(data: Path | None, task: str = "binary") -> Path:
    """Apply the --data default chain; generates the synthetic set on first use."""
    from featurestore.data import resolve_data_dir

    return resolve_data_dir(data, env=os.environ.get("XRAY_DATA"), notice=notice, task=task)


def emit_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print rows as a rich table, or as one JSON document (`--json`) for scripts."""
    if as_json:
        records = [dict(zip(columns, r, strict=True)) for r in rows]
        doc: dict[str, Any] = {"title": title, "rows": records}
        if extra:
            doc.update(extra)
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(format_cell(v) for v in row))
    console.print(table)


def format_cell(value: Any) -> str:
    """Human format for a table cell: floats to 3 decimals, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
