"""`xray study run|report|show` (a study declared in a TOML file, its questions answered first)
and `xray demo` (the built-in study file, run on the default data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from featurestore.config import StudyConfig

from .common import console, err_console, notice, resolve_data, user_errors
from .options import (
    DEFAULT_CACHE,
    CacheDir,
    DataPath,
    JsonFlag,
    Precision,
    PrecisionOpt,
    SeedsOpt,
    Task,
    TaskOpt,
)

study_app = typer.Typer(
    help="A study you declare: arms x seeds in a TOML file, its questions answered first "
    "(see docs/STUDY.md; `xray study show demo` prints the built-in one).",
    no_args_is_help=True,
)

StudyFile = Annotated[
    str, typer.Argument(help="The study file (TOML), or `demo` for the built-in one.")
]


_STUDY = StudyConfig()


def register(app: typer.Typer) -> None:
    """Add the `study` group and `demo` to the app."""
    app.add_typer(study_app, name="study")
    app.command("demo")(demo)


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


def _replace_some(config: StudyConfig, **changes: Any) -> StudyConfig:
    """dataclasses.replace with the options the user actually gave."""
    from dataclasses import replace

    given = {k: v for k, v in changes.items() if v is not None}
    return replace(config, **given) if given else config


@user_errors
def demo(
    data: DataPath = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help=f"Backbones to compare (repeatable) [default: {', '.join(_STUDY.models)}].",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="auto (ImageNet if cached offline, else random init with a banner), "
            "imagenet, none or a state-dict PATH.",
        ),
    ] = _STUDY.weights,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help=f"Input side in pixels [default: {_STUDY.image_size}; "
            f"{_STUDY.full_size().image_size} with --full].",
            show_default=False,
        ),
    ] = None,
    head_epochs: Annotated[
        int | None,
        typer.Option(
            "--head-epochs",
            help=f"Head epochs [default: {_STUDY.head_epochs}; "
            f"{_STUDY.full_size().head_epochs} with --full].",
            show_default=False,
        ),
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            "--finetune-epochs",
            help=f"Fine-tune epochs [default: {_STUDY.finetune_epochs}; "
            f"{_STUDY.full_size().finetune_epochs} with --full].",
            show_default=False,
        ),
    ] = None,
    seeds: SeedsOpt = _STUDY.seeds,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Decoding processes (default: 0 on CPU, CPU cores - 1 on a GPU).",
            show_default=False,
        ),
    ] = _STUDY.workers,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="The hand-written study's scale: 224 px, 100 head / 10 fine-tune epochs."
        ),
    ] = False,
    sweeps: Annotated[
        bool,
        typer.Option(
            "--sweeps/--no-sweeps",
            help="Also a head sweep and a label-efficiency curve per backbone.",
        ),
    ] = _STUDY.sweeps,
    cache: CacheDir = DEFAULT_CACHE,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder of study folders [default: studies].", show_default=False
        ),
    ] = None,
    as_json: JsonFlag = False,
    task: TaskOpt = Task(_STUDY.task),
    precision: PrecisionOpt = _STUDY.precision and Precision(_STUDY.precision),
) -> None:
    """The built-in study: each backbone frozen and fine-tuned, its two questions answered.

    This runs the study file `xray study show demo` prints (each option edits it; the file
    run is kept as studies/demo/study.toml): the declared questions first (Holm over them
    only), then the table of arms, then the other pairs, marked as not corrected for. Each
    frozen backbone also gets a head sweep (9 linear heads in one module)
    and a label-efficiency curve on quarter and half of the train patients (`--no-sweeps`
    leaves them out). A second `xray demo` retrains nothing. At the end: the same study as
    step-by-step commands.

    On the default data (generated on first use) with small images and few epochs it
    finishes in minutes on a 2-core CPU; `--full` runs it at the hand-written study's scale.

    Examples:

        xray demo

        xray demo --data data/chest_xray --full

        xray demo --model resnet18 --seeds 3 --json

        xray demo --task multiclass   (NORMAL / BACTERIAL / VIRAL: --labels kermany3)

        xray demo --task multilabel   (Cardiomegaly, Effusion, Opacity; masked uncertain labels)

        xray demo --precision fp32   (a rerun repeats it to the byte)
    """
    from featurestore.models import get_spec
    from featurestore.progress import make_progress
    from featurestore.study import run_demo

    chosen = tuple(models) if models else _STUDY.models
    for name in chosen:
        get_spec(name)  # an unknown name fails before any data is read or generated
    base = StudyConfig(
        models=chosen, weights=weights, seeds=seeds, workers=workers, task=task.value,
        labels="kermany3" if task is Task.multiclass else "as-given", sweeps=sweeps,
        precision=None if precision is None else precision.value,
    )  # fmt: skip
    base = base.full_size() if full else base
    config = _replace_some(
        base, image_size=image_size, head_epochs=head_epochs, finetune_epochs=finetune_epochs
    )
    resolved = resolve_data(data, task=task.value)
    with make_progress(err_console, transient=True) as progress:
        result = run_demo(
            config, data=resolved, given_data=data is not None,
            cache=cache if cache != DEFAULT_CACHE else None, out=out,
            progress=progress, console=err_console, notice=notice,
        )  # fmt: skip
    done = result.run
    folder = done.plan.study.folder
    if as_json:
        extra = {"trained": len(done.trained), "reused": len(done.reused),
                 "report": str(result.path), "study_file": str(folder / "study.toml"),
                 "commands": result.commands}  # fmt: skip
        _show(result.report, as_json=True, extra=extra)
        return
    if done.plan.random_init:
        err_console.print(
            "[bold yellow on red] RANDOM-INIT BACKBONES: a pipeline check, not a result [/]"
        )
    _show(result.report, as_json=False, extra={})
    console.print(
        f"{len(done.trained)} trained, {len(done.reused)} reused in {done.seconds:.1f} s; "
        f"report {result.path}; the study file it ran: {folder / 'study.toml'}",
        highlight=False,
    )
    console.print("\n[bold]The same study, step by step[/] (same settings, same runs):")
    for command in result.commands:
        console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        "\n[bold]Next:[/] `xray study show demo > study.toml`, edit it (your data, your "
        "backbones, your questions), then `xray study run study.toml`; `xray demo --data DIR` "
        "runs the demo on your own radiographs (see README).",
        highlight=False,
    )
