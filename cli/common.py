"""Shared CLI plumbing: consoles, one-line user errors, tables or JSON, the --data default."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table

from featurestore.errors import XrayError


def _width(stream: object) -> int | None:
    """The console width: the terminal's; in a file or pipe $COLUMNS, else wide enough that
    tables keep their natural layout (rich's 80-column default squeezed them there)."""
    isatty = getattr(stream, "isatty", None)
    if (isatty is not None and isatty()) or os.environ.get("COLUMNS"):
        return None
    return 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

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

            # Escaped: `pip install -e '.[dicom]'` is advice, not rich markup; printable: a file
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
    print_table(title, columns, [[format_cell(v) for v in row] for row in rows])


def _words(text: str) -> list[str]:
    return text.split() or [""]


def _table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> Table | None:
    """A rich table whose columns wrap only at spaces within `width`, or None if it cannot.

    Column widths are set here (from each column's longest word up to its longest line),
    since rich's own squeezing may break a word, and a number, across lines.
    """
    cells = [list(columns), *(list(r) for r in rows)]
    lo = [max(len(w) for row in cells for w in _words(row[k])) for k in range(len(columns))]
    hi = [
        max(len(line) for row in cells for line in (row[k].splitlines() or [""]))
        for k in range(len(columns))
    ]
    spare = width - (sum(lo) + 3 * len(columns) + 1)  # borders and padding: 3 per column + 1
    if spare < 0:
        return None
    widths = list(lo)
    while spare > 0 and any(w < h for w, h in zip(widths, hi, strict=True)):
        for k in range(len(widths)):
            if spare > 0 and widths[k] < hi[k]:
                widths[k] += 1
                spare -= 1
    table = Table(title=title, title_justify="left")
    for col, w in zip(columns, widths, strict=True):
        table.add_column(col, width=w, overflow="fold")  # fold, never "…": no digit lost
    for row in rows:
        table.add_row(*row)
    return table


def table_layouts(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> list[RenderableType]:
    """The layouts of one table that fit `width`, widest first: as given, transposed (one
    column per row), and vertical (one field/value table per row; always present)."""
    from rich.text import Text

    # Titles are lines of their own, never a table's title: rich wraps a title to its table's
    # width, which at 80 columns left a title folded into a 24-column strip (issue #28.10).
    heading = Text(title, style="bold")
    transposed = [[columns[k]] + [r[k] for r in rows] for k in range(1, len(columns))]
    tables = [
        _table(None, columns, rows, width),
        _table(None, [columns[0]] + [r[0] for r in rows], transposed, width),
    ]
    vertical: list[RenderableType] = [heading]
    for row in rows:
        # One field/value table per row, its header naming both columns (never blank).
        table = _table(None, [columns[0], "value"],
                       [[c, v] for c, v in zip(columns[1:], row[1:], strict=True)],
                       max(width, 40))  # fmt: skip
        if table is not None:
            vertical += [Text(f"{columns[0]}: {row[0]}"), table]
    fitting: list[RenderableType] = [Group(heading, t) for t in tables if t is not None]
    return [*fitting, Group(*vertical)]


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    legend: str | None = None,
    out: Console | None = None,
) -> None:
    """Print the first layout of table_layouts that fits the console, so that no number
    loses a digit at 80 columns (cells wrap at spaces only), then the legend."""
    out = out or console
    out.print(table_layouts(title, columns, [list(map(str, r)) for r in rows], out.width)[0])
    if legend:
        out.print(legend, highlight=False, markup=False)


def format_cell(value: Any) -> str:
    """Human format for a table cell: floats to 3 decimals, None and NaN (undefined) as a
    dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
