"""The `xray` Typer app: registers every command group; imports no torch (fast --help)."""

from __future__ import annotations

import typer

app = typer.Typer(
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


def _register() -> None:
    # Each module adds its commands to `app`; none imports torch at module level.
    from . import compare_cmd, data_cmd, stage1_cmd, train_cmd, use_cmd

    for module in (data_cmd, stage1_cmd, train_cmd, compare_cmd, use_cmd):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
