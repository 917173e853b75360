"""`xray predict` and `xray explain`: use a trained run on new radiographs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featurestore.config import ExportConfig, ExportFormat

from .common import console, emit_table, err_console, user_errors
from .options import Device, DeviceOpt, JsonFlag

RunPath = Annotated[
    Path, typer.Option("--run", help="Run folder written by `xray fit-head` or `xray finetune`.")
]
Images = Annotated[list[Path], typer.Argument(help="Image files and/or folders (recursive).")]
# Not extract's `--weights imagenet|none|PATH` (which weights to build a backbone with): a run
# records its weights itself, and only a frozen run extracted from a state-dict file needs that
# file back. `--weights` stays a second name of this option for old scripts.
RunWeights = Annotated[
    Path | None,
    typer.Option(
        "--weights-file",
        "--weights",
        help="Only for frozen runs whose features were extracted with a state-dict file "
        "(extract --weights PATH): that same file, to rebuild the backbone (its sha256 must "
        "match the run's record). Runs on imagenet or random weights need nothing.",
        show_default=False,
    ),
]


def short_paths(paths: list[str]) -> tuple[list[str], str | None]:
    """Paths relative to their common folder (for narrow tables), and that folder."""
    import os

    if len(paths) < 2:
        return paths, None
    base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    if base == os.path.sep:
        return paths, None
    return [os.path.relpath(os.path.abspath(p), base) for p in paths], base


def warn_about(warnings: list[str]) -> list[str]:
    """Print a run's warnings (random weights, synthetic data) on stderr; return them for
    --json, so they travel with the numbers either way."""
    for w in warnings:
        err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False, markup=True)
    return warnings


def register(app: typer.Typer) -> None:
    """Add `predict`, `explain` and `export` to the app."""
    app.command("predict")(predict)
    app.command("explain")(explain)
    app.command("export")(export)


@user_errors
def predict(
    images: Images,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Run folder written by `xray fit-head` or `xray finetune`.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Instead of --run: a model exported by `xray export` (.onnx, through "
            "onnxruntime).",
            show_default=False,
        ),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Also write path,probability,prediction,error to this CSV.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 32,
    weights: RunWeights = None,
    device: DeviceOpt = Device.auto,
    as_json: JsonFlag = False,
) -> None:
    """Probabilities and the predicted class (or findings) for new images.

    Binary runs: P(positive) and the class at the run's validation-chosen threshold.
    Multi-class runs: P(class) for every class and the most probable class. Multi-label runs:
    P(finding) for every finding and the findings at their own thresholds. Frozen runs rebuild the
    backbone from the feature store's provenance; fine-tune runs load the whole model.
    Unreadable files are listed with their error; the exit code is then 1.

    Examples:

        xray predict --run runs/20261128-101500-resnet50-frozen-s0 scan1.jpeg scan2.png

        xray predict --run runs/20261128-102000-resnet50-finetune-s0 data/new --csv preds.csv

        xray predict --model model.onnx data/new
    """
    from featurestore.errors import XrayError
    from featurestore.progress import make_progress
    from featurestore.runs import run_warnings
    from featurestore.use import (
        OnnxModel,
        Predictor,
        count_predictions,
        expand_inputs,
        load_predictor,
        write_predictions_csv,
    )

    if (run is None) == (model is None):
        raise XrayError("pass --run RUN_FOLDER or --model EXPORTED.onnx (one of them)")
    paths = expand_inputs(images)
    predictor: Predictor | OnnxModel
    if model is not None:
        predictor = OnnxModel(model)
        name = model.name
    else:
        assert run is not None
        predictor = load_predictor(run, weights=weights, device=str(device))
        name = predictor.run.name
    with make_progress(err_console, transient=True) as progress:
        rows = predictor.predict(
            paths, batch_size=batch_size, progress=progress if len(paths) > batch_size else None
        )
    if csv_path is not None:
        write_predictions_csv(csv_path, rows, predictor.class_names)
    counts = count_predictions(rows, predictor.class_names)
    failed = counts["unreadable"]
    warnings = warn_about(
        predictor.warnings
        if isinstance(predictor, OnnxModel)
        else run_warnings(predictor.run.config)
    )
    shown, base = short_paths([r.path for r in rows]) if not as_json else ([], None)
    where = f"\npaths in {base}" if base else ""
    if predictor.task != "binary":  # one probability column per class / finding
        names = list(predictor.class_names)
        title = f"{name}: P(class), the most probable class{where}"
        if predictor.task == "multilabel":
            title = f"{name}: P(finding), findings at their thresholds{where}"
        columns = ["path", *(f"P({c})" for c in names), "prediction", "error"]
        table = [
            [shown[i] if shown else r.path]
            + [(r.probabilities or {}).get(c) for c in names]
            + [r.prediction, r.error]
            for i, r in enumerate(rows)
        ]
    else:
        title = (
            f"{name}: P({predictor.class_names[predictor.positive_index]}), "
            f"class at threshold {predictor.threshold:.3f}{where}"
        )
        columns = ["path", "probability", "prediction", "error"]
        table = [
            [shown[i] if shown else r.path, r.probability, r.prediction, r.error]
            for i, r in enumerate(rows)
        ]
    emit_table(
        title,
        columns,
        table,
        as_json=as_json,
        extra={
            "run": str(run) if run is not None else None,
            "model": str(model) if model is not None else None,
            "threshold": None if predictor.task != "binary" else predictor.threshold,
            "label_thresholds": predictor.label_thresholds,
            "counts": counts,
            "failed": failed,
            "csv": str(csv_path) if csv_path else None,
            "warnings": warnings,
        },
    )
    if not as_json:
        summary = ", ".join(f"{name} {n}" for name, n in counts.items())
        console.print(f"{len(rows)} images: {summary}", highlight=False)
        if csv_path is not None:
            console.print(f"csv: [bold]{csv_path}[/]")
    if failed:
        err_console.print(f"[yellow]{failed} file(s) could not be read[/]", highlight=False)
        raise typer.Exit(1)


@user_errors
def explain(
    images: Images,
    run: RunPath,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the heatmap PNGs and contact sheet.")
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward/backward pass.")
    ] = 8,
    weights: RunWeights = None,
    device: DeviceOpt = Device.auto,
    as_json: JsonFlag = False,
    target_class: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="Explain this class (a name from the run's classes or findings). Default: the "
            "positive class of a binary run, each image's predicted class of a multi-class run, "
            "each finding present (else the most probable) of a multi-label run.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Grad-CAM heatmaps: where the run's model looks for a class.

    The class explained: the positive class (binary), each image's predicted class or --class
    NAME (multi-class), each finding present or the most probable one, or the --class NAME
    finding for every image (multi-label).

    One PNG per image at the image's own size (the radiograph in gray, heat in colour;
    margins the center crop removed get no heat) plus contact_sheet.png. Frozen runs are
    explained as backbone + head, one model. Exit code 1 when some files could not be read.

    Examples:

        xray explain --run runs/20261128-102000-resnet50-finetune-s0 scan1.jpeg --out heat/

        xray explain --run runs/20261128-101500-densenet121-frozen-s0 data/new --out heat/ --json

        xray explain --run runs/20261128-103000-resnet50-frozen-s0 a.jpeg --out h/ --class VIRAL
    """
    from featurestore.progress import make_progress
    from featurestore.runs import run_warnings
    from featurestore.use import expand_inputs, explain_run

    paths = expand_inputs(images)
    with make_progress(err_console, transient=True) as progress:
        result = explain_run(
            run,
            paths,
            out,
            weights=weights,
            device=str(device),
            batch_size=batch_size,
            progress=progress,
            target_class=target_class,
        )
    import json

    rows = result.rows
    warnings = warn_about(run_warnings(json.loads((Path(run) / "config.json").read_text())))
    shown, base = short_paths([r.path for r in rows]) if not as_json else ([], None)
    emit_table(
        f"Grad-CAM heatmaps in {out}" + (f"\nimages in {base}" if base else ""),
        ["path", "map of", "probability", "prediction", "heatmap", "error"],
        [
            [
                shown[i] if shown else r.path,
                r.explained,
                r.probability,
                r.prediction,
                Path(r.heatmap).name if r.heatmap and not as_json else r.heatmap,
                r.error,
            ]
            for i, r in enumerate(rows)
        ],
        as_json=as_json,
        extra={
            "contact_sheet": str(result.contact_sheet) if result.contact_sheet else None,
            "peaks": {r.path: r.peak for r in rows if r.peak is not None},
            "warnings": warnings,
        },
    )
    failed = sum(r.error is not None for r in rows)
    if not as_json and result.contact_sheet is not None:
        console.print(f"contact sheet: [bold]{result.contact_sheet}[/]")
    if failed:
        err_console.print(f"[yellow]{failed} file(s) could not be read[/]", highlight=False)
        raise typer.Exit(1)


_EXPORT = ExportConfig()


@user_errors
def export(
    run: RunPath,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="File format of the exported model.")
    ] = ExportFormat(_EXPORT.format),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write it. Default: RUN/model.onnx.", show_default=False
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The run's dataset, for the check (default: the one the run recorded).",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Run the exported model on the run's test images and compare with "
            "predictions.csv.",
        ),
    ] = _EXPORT.check,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward pass of the check.")
    ] = _EXPORT.batch_size,
    weights: RunWeights = None,
    as_json: JsonFlag = False,
) -> None:
    """Export a run's whole model (backbone + head) to ONNX for use outside xray.

    The graph takes preprocessed images (N, 3, S, S). Binary runs: it returns P(positive),
    the probability recalibrated by the run's Platt scaling, and the class at the run's
    threshold. Multi-class runs: the softmax probabilities (N, C) and the argmax class.
    Multi-label runs: a sigmoid per finding (N, L) and each finding at its own threshold (no
    recalibration for these two). The task, decision rule, preprocessing, thresholds and class
    names are in its metadata. The export is checked by scoring the run's test images through
    onnxruntime and comparing every probability column with predictions.csv. Needs the `onnx`
    extra.

    Examples:

        xray export --run runs/20261128-101500-resnet50-frozen-s0

        xray export --run runs/20261128-102000-resnet50-finetune-s0 --out model.onnx --json

        xray predict --model model.onnx scan1.jpeg
    """
    import json

    from featurestore.progress import make_progress
    from featurestore.use import export_run

    with make_progress(err_console, transient=True) as progress:
        result = export_run(
            run, out, fmt=str(fmt), weights=weights, data=data, check=check,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
    doc = {
        "model": str(result.path),
        "checked_images": result.checked_images,
        "max_abs_difference": result.max_abs_difference,
        "predictions_agree": result.predictions_agree,
        "reference": result.reference,
        "recorded_max_abs_difference": result.recorded_max_abs_difference,
        "recorded_decisions_differ": result.recorded_decisions_differ,
        "recorded_precision": result.recorded_precision,
        "metadata": result.metadata,
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    console.print(f"exported: [bold]{result.path}[/]", highlight=False)
    meta = result.metadata
    crop = meta["preprocessing"]["crop"]
    if meta.get("task", "binary") == "binary":
        console.print(
            f"threshold {meta['threshold']:.4f}, temperature {meta['temperature']:.4g}, "
            f"input (N, 3, {crop}, {crop})",
            highlight=False,
        )
    else:
        console.print(
            f"{meta['task']}: {meta['decision_rule']}; input (N, 3, {crop}, {crop})",
            highlight=False,
        )
        console.print(meta["calibration"]["note"], highlight=False)
    if result.max_abs_difference is not None:
        binary = meta.get("task", "binary") == "binary"
        columns = "" if binary else " over every probability column"
        decided = "findings" if meta.get("task") == "multilabel" else "classes"
        console.print(
            f"check on {result.checked_images} test images: max abs difference from "
            f"{result.reference} {result.max_abs_difference:.2e}{columns}; {decided} "
            f"{'all agree' if result.predictions_agree else 'DIFFER'}",
            highlight=False,
        )
        if result.reference != "predictions.csv":
            # A bf16/fp16 run's figures are not the float32 file's: say by how much, never hide it.
            precision = result.recorded_precision
            other = "other findings" if decided == "findings" else "another class"
            console.print(
                f"[yellow]against predictions.csv (the run's reported figures, computed in "
                f"{precision}): max abs difference {result.recorded_max_abs_difference:.2e}; "
                f"{result.recorded_decisions_differ} of {result.checked_images} test images get "
                f"{other}; the float32 file reproduces the run's model, not its {precision} "
                "numbers[/]",
                highlight=False,
            )
