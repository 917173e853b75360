"""`xray evaluate`: a trained run scored on another hospital's labelled radiographs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from featurestore.config import EvaluateConfig, LabelScheme, SplitChoice, Uncertain

from .common import console, emit_table, err_console, notice, user_errors
from .options import Device, DeviceOpt, JsonFlag
from .use_cmd import RunPath

_EVAL = EvaluateConfig()
SHOWN = ("accuracy", "sensitivity", "specificity", "f1_positive", "roc_auc", "pr_auc", "brier")


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the app."""
    app.command("evaluate")(evaluate)


@user_errors
def evaluate(
    run: RunPath,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="The other labelled dataset: a Kermany-layout folder, a CSV manifest or a "
            "MedMNIST .npz.",
        ),
    ],
    split: Annotated[
        SplitChoice, typer.Option("--split", help="The other dataset's split to score.")
    ] = SplitChoice(_EVAL.split),
    threshold_policy: Annotated[
        str | None,
        typer.Option(
            "--threshold",
            help="Default: the run's own threshold (multi-label: one per finding). A policy "
            "(youden, f1, sensitivity:0.95, specificity:0.90, fixed:0.5) is chosen again on the "
            "run's validation predictions, or on the local patients of --recalibrate; never on "
            "the evaluated split. Multi-class runs decide by argmax and refuse it.",
            show_default=False,
        ),
    ] = _EVAL.threshold_policy,
    recalibrate: Annotated[
        int,
        typer.Option(
            "--recalibrate",
            help="Take N patients out of the evaluated split (seeded, by patient) and refit the "
            "recalibration (binary: Platt; multi-class: one temperature; multi-label: Platt per "
            "finding) and the threshold(s) on them; 0: the run's own.",
        ),
    ] = _EVAL.recalibrate,
    out: Annotated[
        Path, typer.Option("--out", help="Folder of evaluation folders.")
    ] = _EVAL.out_dir,
    store_dir: Annotated[
        Path,
        typer.Option(
            "--stores", help="Feature stores of external datasets (frozen runs; not cache/)."
        ),
    ] = _EVAL.store_dir,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples.")
    ] = _EVAL.n_boot,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the bootstrap and the local patients.")
    ] = _EVAL.seed,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward pass.")
    ] = _EVAL.batch_size,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Decoding processes (frozen runs).", show_default=False),
    ] = _EVAL.workers,
    labels: Annotated[
        LabelScheme | None,
        typer.Option(
            "--labels",
            help="How the other dataset's labels are read; default: as the run read its own "
            "(a kermany3 run relabels a NORMAL/PNEUMONIA dataset from its file names; a CSV "
            "already holding the run's classes is read as given).",
            show_default=False,
        ),
    ] = None,
    uncertain: Annotated[
        Uncertain | None,
        typer.Option(
            "--uncertain",
            help="Multi-label runs: uncertain (-1) labels of the other dataset as absent "
            "(zeros), present (ones) or masked (ignore); default: as the run's training.",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights-file",
            "--weights",
            help="Frozen runs whose backbone was extracted with a weights file: that "
            "state-dict file (its sha256 is checked against the run's).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = Device(_EVAL.device),
    as_json: JsonFlag = False,
) -> None:
    """External validation: score a trained run on another labelled dataset.

    Every task: binary runs at their threshold, multi-class runs by argmax (classes matched by
    name; a kermany3 run relabels the other dataset itself), multi-label runs with each finding
    at its own threshold (findings matched by name; those the dataset lacks are left out, said).

    Frozen runs extract the other dataset's features once with the run's backbone (cached and
    provenance-checked like any store); fine-tuned runs score its images directly. Writes an
    evaluation folder that `xray compare` reads like a run's test result: predictions.csv,
    metrics.json (patient-bootstrap intervals at the threshold, ECE and Brier, the difference
    from the run's internal test result), plots/ (reliability diagram, ROC, confusion).

    Examples:

        xray evaluate --run runs/20261128-101500-resnet50-frozen-s0 --data /data/hospital_b

        xray evaluate --run runs/20261128-102000-resnet50-finetune-s0 --data other.csv --split val

        xray evaluate --run runs/20261128-101500-resnet50-frozen-s0 --data /data/hospital_b \\
            --recalibrate 20 --threshold sensitivity:0.95

        xray compare evaluations/*-on-hospital_b-test
    """
    from featurestore.compare import evaluate_run
    from featurestore.progress import make_progress

    config = EvaluateConfig(
        split=split.value,
        threshold_policy=threshold_policy,
        recalibrate=recalibrate,
        n_boot=bootstrap,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        device=str(device),  # type: ignore[arg-type]
        out_dir=out,
        store_dir=store_dir,
        labels=None if labels is None else labels.value,
        uncertain=None if uncertain is None else uncertain.value,
    )
    with make_progress(err_console, transient=True) as progress:
        result = evaluate_run(
            run, data, config=config, weights=weights, progress=progress, notice=notice
        )
    t = result.threshold
    if result.task == "binary":
        rule = f"threshold {t['value']:.3f} ({t['policy']}, chosen on {t.get('chosen_on', 'val')})"
    elif result.task == "multiclass":
        rule = "argmax decisions (no threshold)"
    else:
        rule = f"per-finding thresholds ({t['policy']}, chosen on {t.get('chosen_on', 'val')})"
    title = (
        f"{result.run} on {result.dataset} {result.split}: {result.images} images, "
        f"{result.patients} patients; {rule}"
    )
    rows: list[list[Any]] = []
    for name in result.shown or SHOWN:
        iv = result.intervals[name]
        d = result.difference.get(name)
        rows.append([
            name, iv["estimate"], iv["lo"], iv["hi"],
            d["internal"] if d else None, d["difference"] if d else None,
            d["lo"] if d else None, d["hi"] if d else None,
        ])  # fmt: skip
    cal = result.calibration
    emit_table(
        title,
        ["metric", "external", "lo", "hi", "internal", "difference", "diff lo", "diff hi"],
        rows,
        as_json=as_json,
        extra={
            "evaluation": str(result.path),
            "threshold": t,
            "calibration": cal,
            "local_calibration": result.local,
            **({"notes": list(result.notes)} if result.notes else {}),
        },
    )
    if as_json:
        return
    for line in result.notes:
        console.print(f"note: {line}", highlight=False)
    before, after = cal["test"]["ece_before"], cal["test"]["ece_after"]
    shift = "n/a" if before is None or after is None else f"{before:.3f} -> {after:.3f}"
    fitted = cal["method"]
    if fitted == "temperature":
        fitted += f" (T = {cal['temperature']:.3f})"
    ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
    brier = "n/a" if cal["brier"] is None else f"{cal['brier']:.3f}"
    console.print(
        f"calibration: ECE {ece}, Brier {brier} ({cal['reported_probability']}); {fitted} "
        f"recalibration fitted on {cal['fitted_on']}: test ECE {shift}"
        + (f" ({cal['note']})" if cal.get("note") and result.task != "multilabel" else ""),
        highlight=False,
    )
    if result.local is not None:
        console.print(
            f"local calibration: {result.local['patients']} patients ({result.local['images']} "
            f"images) taken out of {result.split} by patient; the metrics above exclude them",
            highlight=False,
        )
    console.print(
        "intervals: 95% percentile bootstrap over patients; difference = external - internal "
        "test (two independent patient bootstraps)",
        highlight=False,
    )
    console.print(f"evaluation folder: [bold]{result.path}[/]", highlight=False)
