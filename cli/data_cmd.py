"""`xray data check` and `xray data synth`: audit a dataset, write the built-in synthetic one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from featurestore.config import SYNTHETIC_DIR, LabelScheme, SynthConfig

from .common import console, emit_table, err_console, user_errors
from .options import DataPath, JsonFlag, LabelsOpt, Task, TaskOpt

_SYNTH = SynthConfig()

if TYPE_CHECKING:
    from featurestore.data import DatasetAudit

data_app = typer.Typer(
    help="Datasets: audit one for leakage and bad files, or write the built-in synthetic one.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _split_rows(
    counts: Mapping[str, Mapping[str, int]], patients: Mapping[str, int], classes: list[str]
) -> list[list[Any]]:
    """One row per split: images per class, total images, patients."""
    return [
        [split, *(per_class.get(c, 0) for c in classes), sum(per_class.values()), patients[split]]
        for split, per_class in counts.items()
    ]


@data_app.command("check")
@user_errors
def check(
    data: DataPath = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with code 1 when patients or identical files are shared between splits, "
            "files cannot be decoded, or (--labels kermany3) a PNEUMONIA file cannot be placed.",
        ),
    ] = False,
    labels: LabelsOpt = LabelScheme.as_given,
    as_json: JsonFlag = False,
) -> None:
    """Audit a dataset: images per split and class, patients, leakage, duplicates, bad files.

    Reads the splits as given on disk (no validation carving). Every image is decoded, so a
    corrupt or truncated file is reported, never a crash.

    Examples:

    * `xray data check --data data/chest_xray`
    * `xray data check --data ../shared/realsample --strict`
    * `xray data check --data manifest.csv --json > audit.json`
    * `xray data check --data data/chest_xray --labels kermany3` (NORMAL / BACTERIAL / VIRAL,
      as the three-class task reads them)
    """
    from featurestore.data import audit_dataset
    from featurestore.progress import make_progress

    from .common import resolve_data

    path = resolve_data(data)
    with make_progress(err_console, transient=True) as progress:
        audit = audit_dataset(path, labels=labels, progress=progress)

    classes = list(audit.class_names)
    emit_table(
        f"images per split and class: {audit.root}",
        ["split", *classes, "images", "patients"],
        _split_rows(audit.counts, audit.patients, classes),
        as_json=as_json,
        extra=audit.as_dict(),
    )
    if not as_json:
        _print_details(audit)
    if strict and (audit.leakage or audit.unreadable or audit.unplaced):
        err_console.print(
            "[bold red]strict:[/] leakage, unreadable or unplaced files found (see above)",
            highlight=False,
        )
        raise typer.Exit(1)


def _print_details(audit: DatasetAudit) -> None:
    """The tables beyond counts (sizes, leakage, duplicates, unreadable), then the warnings."""
    emit_table(
        "image size (pixels) per class",
        ["class", "images", "width min / median / max", "height min / median / max"],
        [
            [
                c,
                r.images,
                f"{r.width_min} / {r.width_median:.0f} / {r.width_max}",
                f"{r.height_min} / {r.height_median:.0f} / {r.height_max}",
            ]
            for c, r in audit.sizes.items()
        ],
        as_json=False,
    )
    if audit.shared_patients:
        emit_table(
            "patients shared between splits",
            ["patient", "splits"],
            [[p, ", ".join(s)] for p, s in audit.shared_patients.items()],
            as_json=False,
        )
    # Paths are listed one per line, never cut to fit a table column.
    if audit.duplicates:
        console.print("[bold]byte-identical files[/]")
        for d in audit.duplicates:
            where = "[red]across splits[/]" if d.cross_split else "within one split"
            console.print(f"  sha256 {d.sha256[:12]} in {', '.join(d.splits)} ({where}):")
            for key in d.keys:
                console.print(f"    {key}", highlight=False, soft_wrap=True)
    if audit.unreadable:
        console.print("[bold]unreadable files[/]")
        for key, why in audit.unreadable.items():
            console.print(f"  {key}: {why}", highlight=False, soft_wrap=True, markup=False)
    if audit.unplaced:
        console.print("[bold]PNEUMONIA files --labels kermany3 cannot place (not counted)[/]")
        for key in audit.unplaced:
            console.print(f"  {key}", highlight=False, soft_wrap=True, markup=False)
    if audit.ignored:
        console.print("[bold]files left out (not an image format xray reads)[/]")
        for key in audit.ignored:
            console.print(f"  {key}", highlight=False, soft_wrap=True, markup=False)
    for line in audit.warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if not audit.leakage and not audit.unreadable:
        console.print("[green]no leakage between splits, every file decodes[/]")


@data_app.command("synth")
@user_errors
def synth(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder to write [default: data/synthetic; data/synthetic-3class for "
            "multiclass; data/synthetic-multilabel for multilabel].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed: same seed, same images.")
    ] = _SYNTH.seed,
    patients: Annotated[
        int, typer.Option("--patients", help="Patients across all splits.")
    ] = _SYNTH.patients,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the folder if it already holds a dataset.")
    ] = False,
    as_json: JsonFlag = False,
    task: TaskOpt = Task(_SYNTH.task),
) -> None:
    """Write the built-in synthetic dataset: seeded phantom chest radiographs, Kermany layout.

    `--task multiclass` draws bacterial pneumonia (`_bacteria_` file names) as lobar and viral
    (`_virus_`) as patchy opacity: read it with `--labels kermany3` for three classes.
    `--task multilabel` writes labels.csv (Cardiomegaly, Effusion, Opacity; co-occurring,
    8% uncertain -1 cells) and images/: pass the CSV as `--data`.

    Examples:

    * `xray data synth`
    * `xray data synth --out data/synth-s1 --seed 1 --patients 300`
    * `xray data synth --overwrite --json`
    * `xray data synth --task multiclass`
    * `xray data synth --task multilabel`
    """
    from featurestore.data import (
        SYNTHETIC_MULTICLASS_DIR,
        SYNTHETIC_MULTILABEL_DIR,
        generate_synthetic_multilabel,
        synth,
    )
    from featurestore.progress import make_progress

    default = {
        Task.binary: SYNTHETIC_DIR,
        Task.multiclass: SYNTHETIC_MULTICLASS_DIR,
        Task.multilabel: SYNTHETIC_MULTILABEL_DIR,
    }
    out = out or default[task]
    with make_progress(err_console, transient=True) as progress:
        if task is Task.multilabel:
            summary = generate_synthetic_multilabel(
                out, seed=seed, patients=patients, overwrite=overwrite, progress=progress
            )
        else:
            summary = synth.generate_synthetic(
                out, seed=seed, patients=patients, overwrite=overwrite, progress=progress,
                task=task.value,
            )  # fmt: skip
    if task is Task.multilabel:  # positives per finding (they co-occur), then images
        findings = [c for c in next(iter(summary.counts.values())) if c != "images"]
        emit_table(
            f"synthetic multi-label dataset: {summary.root} (labels.csv)",
            ["split", *findings, "images", "patients"],
            [
                [split, *(c[f] for f in findings), c["images"], summary.patients[split]]
                for split, c in summary.counts.items()
            ],
            as_json=as_json,
            extra={"root": str(summary.root), "csv": str(summary.root / "labels.csv")},
        )
        return
    classes = sorted({c for per_class in summary.counts.values() for c in per_class})
    emit_table(
        f"synthetic dataset: {summary.root}",
        ["split", *classes, "images", "patients"],
        _split_rows(summary.counts, summary.patients, classes),
        as_json=as_json,
        extra={"root": str(summary.root), "seed": seed},
    )


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the app."""
    app.add_typer(data_app, name="data")
