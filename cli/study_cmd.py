"""`xray study run|report|show`: a study declared in a TOML file, its questions answered first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import console, err_console, notice, resolve_data, user_errors
from .options import JsonFlag

study_app = typer.Typer(
    help="A study you declare: arms x seeds in a TOML file, its questions answered first "
    "(see docs/STUDY.md; `xray study show demo` prints the built-in one).",
    no_args_is_help=True,
)

StudyFile = Annotated[
    str, typer.Argument(help="The study file (TOML), or `demo` for the built-in one.")
]


def register(app: typer.Typer) -> None:
    """Add the `study` group to the app."""
    app.add_typer(study_app, name="study")


def _data(study_data: Path | None) -> Path:
    return resolve_data(study_data)


@study_app.command("run")
@user_errors
def run(
    file: StudyFile,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (extract / train / reuse); write nothing."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run every arm x seed not already done, then write the report.

    A run whose resolved config, seed, data and store are unchanged and whose folder is
    complete is reused; a changed arm reruns only that arm.

    Examples:

        xray study run study.toml --dry-run

        xray study run study.toml
    """
    from featurestore.study import load_study

    study = load_study(file)  # a bad file fails here: one line, nothing written
    data = _data(study.data)
    if dry_run:
        from featurestore.study.plan import make_plan
        from featurestore.study.run import plan_as_dict

        plan = make_plan(study, data, write_digests=False)
        if as_json:
            typer.echo(json.dumps(plan_as_dict(plan), indent=2))
        else:
            for line in plan.lines():
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    from featurestore.progress import make_progress
    from featurestore.study.report import build_report, write_study_report
    from featurestore.study.run import run_study_file

    with make_progress(err_console, transient=True) as progress:
        done = run_study_file(study, data=data, progress=progress, console=err_console,
                              notice=notice)  # fmt: skip
    report = build_report(done.plan, done.paths)
    path = write_study_report(report, done.plan.study.folder)
    summary = (
        f"{len(done.trained)} trained, {len(done.reused)} reused in {done.seconds:.1f} s; "
        f"report {path}"
    )
    _show(report, as_json=as_json, extra={"trained": len(done.trained),
          "reused": len(done.reused), "report": str(path)})  # fmt: skip
    if not as_json:
        console.print(summary, highlight=False)


def _show(report: object, *, as_json: bool, extra: dict[str, object]) -> None:
    from featurestore.study.report import StudyReport, render_markdown

    assert isinstance(report, StudyReport)
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), **extra}, indent=2, default=str))
    else:
        console.print(render_markdown(report), highlight=False, markup=False, soft_wrap=True)


@study_app.command("report")
@user_errors
def report(file: StudyFile, as_json: JsonFlag = False) -> None:
    """Answer the declared questions from the study's finished runs (writes report.md/.json).

    Examples:

        xray study report study.toml
    """
    from featurestore.study import load_study
    from featurestore.study.plan import make_plan
    from featurestore.study.report import build_report, write_study_report

    study = load_study(file)
    plan = make_plan(study, _data(study.data))
    paths = {r.key: r.reuse for r in plan.runs if r.reuse is not None}
    built = build_report(plan, paths)
    path = write_study_report(built, plan.study.folder)
    _show(built, as_json=as_json, extra={"report": str(path)})


@study_app.command("show")
@user_errors
def show(file: StudyFile) -> None:
    """Print a study file (`demo`: the built-in one, to copy and edit).

    Examples:

        xray study show demo > study.toml
    """
    from featurestore.study import load_study

    typer.echo(load_study(file).text, nl=False)
