"""The `xray` Typer app: registers every command group; imports no torch (fast --help)."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 vendors click as typer._click; older Typer uses click itself.
    from typer._click.exceptions import BadParameter, ClickException
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import (  # type: ignore[no-redef, assignment, unused-ignore]
        BadParameter,
        ClickException,
    )


_NOT_ONE_OF = re.compile(r"'(?P<given>[^']*)' is not one of (?P<choices>.+?)\.?$")


def usage_error_line(exc: ClickException) -> str:
    """A command-line mistake as the one `error:` line every other mistake gets.

    A value outside an option's choices reads like the library's own refusals
    ("unknown --monitor 'x'; choose one of: a, b"), whichever of Typer or the library caught it.
    """
    message = exc.format_message().strip()
    param = getattr(exc, "param", None)
    found = _NOT_ONE_OF.search(message)
    if isinstance(exc, BadParameter) and param is not None and found:
        flag = max(param.opts, key=len) if param.opts else param.name
        choices = found["choices"].replace("'", "")
        return f"unknown {flag} {found['given']!r}; choose one of: {choices}"
    hint = " (see --help)" if "option" in message.lower() or "argument" in message.lower() else ""
    return f"{message.rstrip('.')}{hint}"


class OneLineErrors(TyperGroup):
    """The app's group: usage mistakes (a missing option, a bad choice) exit 2 with one line;
    every command's options get metavars that read well at 80 columns (`tidy_metavars`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from .options import tidy_command

        tidy_command(self)  # and every command under it

    def add_command(self, cmd: Any, name: str | None = None) -> None:
        from .options import tidy_command

        tidy_command(cmd)
        super().add_command(cmd, name)

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except ClickException as exc:
            from .common import err_console

            err_console.print(
                f"[bold red]error:[/] {usage_error_line(exc)}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="xray",
    help="Transfer learning for chest X-ray classification.\n\n"
    "Stage 1 `extract` runs a frozen backbone once per image into an HDF5 feature store; "
    "stage 2 `fit-head` trains heads on the cached features in seconds; `finetune` streams "
    "images end to end through the same trainer; `compare` turns run folders into one report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


def _print_version(value: bool) -> None:
    if value:
        from featurestore import __version__

        typer.echo(f"xray {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options of `xray` itself (the commands have their own)."""


def _register() -> None:
    # Each module adds its commands to `app`; none imports torch at module level.
    from . import compare_cmd, data_cmd, evaluate_cmd, stage1_cmd, study_cmd, train_cmd, use_cmd

    for module in (data_cmd, stage1_cmd, train_cmd, compare_cmd, use_cmd, evaluate_cmd, study_cmd):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
