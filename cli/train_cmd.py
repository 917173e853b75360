"""`xray fit-head` and `xray finetune`: train through the one trainer, print the test metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .common import (
    CacheOption,
    DataOption,
    JsonOption,
    RunsOption,
    console,
    emit_table,
    err_console,
    notice,
    user_errors,
)

if TYPE_CHECKING:
    from featurestore.runs import RunSummary
    from featurestore.train import TrainConfig

METRIC_COLUMNS = (
    "accuracy",
    "f1_macro",
    "f1_positive",
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
    "loss",
)


def _report(summaries: Sequence[RunSummary], *, as_json: bool) -> None:
    """Test metrics at 0.5 and at the validation threshold, then the run folders.

    The table has one column per (run, threshold) so it fits a terminal; JSON has one record
    per (run, threshold) for scripts.
    """
    title = "test metrics (threshold chosen on validation)"
    if as_json:
        rows: list[list[Any]] = []
        for s in summaries:
            for at in ("at_0.5", "at_threshold"):
                rows.append([str(s.path), s.model, s.mode, s.head, at, s.test[at]])
        emit_table(
            title,
            ["run", "model", "mode", "head", "at", "metrics"],
            rows,
            as_json=True,
            extra={"runs": [str(s.path) for s in summaries]},
        )
        return
    columns = ["metric"]
    for s in summaries:
        label = f"{s.model} {s.mode} {s.head}"
        columns += [f"{label} @0.5", f"{label} @{s.threshold:.3f}"]
    table_rows = [
        [name] + [s.test[at][name] for s in summaries for at in ("at_0.5", "at_threshold")]
        for name in METRIC_COLUMNS
    ]
    table_rows.append(
        ["best epoch / run"]
        + [f"{s.best_epoch}/{s.epochs_run}" for s in summaries for _ in range(2)]
    )
    emit_table(title, columns, table_rows, as_json=False)
    for s in summaries:
        console.print(f"run folder: [bold]{s.path}[/]", highlight=False)


def fit_head(
    model: str | None = typer.Option(
        None, "--model", help="Train on the cached stores of this backbone only."
    ),
    store: Path | None = typer.Option(None, "--store", help="Train on this store file."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Dataset the stores came from: only its stores are used and each is checked "
        "against it (default: the dataset folder recorded in each store, when present).",
        show_default=False,
    ),
    cache: Path = CacheOption,
    runs: Path = RunsOption,
    head: str = typer.Option("linear", "--head", help="linear, mlp or logreg."),
    epochs: int = typer.Option(100, "--epochs", help="Maximum epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Training batch size."),
    patience: int = typer.Option(10, "--patience", help="Early-stopping patience, in epochs."),
    monitor: str = typer.Option("val_auc", "--monitor", help="val_auc, val_f1 or val_loss."),
    class_weight: str = typer.Option(
        "balanced", "--class-weight", help="balanced or none (loss weights from train labels)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and shuffling."),
    seeds: int = typer.Option(
        1, "--seeds", help="Repeat with seeds seed..seed+N-1 (compare reports mean and spread)."
    ),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    as_json: bool = JsonOption,
) -> None:
    """Stage 2: train a head on cached features, one run folder per feature store.

    Bare `xray fit-head` trains on every complete store in the cache folder. Features are
    standardised with train statistics; the decision threshold is chosen on validation.

    Examples:

    * `xray fit-head`
    * `xray fit-head --model resnet50 --head mlp --seed 1`
    * `xray fit-head --store cache/chest_xray/densenet121-imagenet-224px.h5 --json`
    """
    from featurestore.progress import make_progress
    from featurestore.train import TrainConfig, fit_heads

    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        patience=patience,
        monitor=monitor,  # type: ignore[arg-type]
        class_weight=class_weight,  # type: ignore[arg-type]
        seed=seed,
        device=device,  # type: ignore[arg-type]
    )
    with make_progress(err_console, transient=True) as progress:
        summaries = fit_heads(
            model=model, store=store, data=data, cache_dir=cache, runs_dir=runs, head=head,
            config=config, progress=progress, console=err_console, notice=notice, seeds=seeds,
        )  # fmt: skip
    _report(summaries, as_json=as_json)


def finetune(
    model: str = typer.Option("resnet50", "--model", help="Backbone name (see `xray models`)."),
    data: Path | None = DataOption,
    weights: str = typer.Option("imagenet", "--weights", help="imagenet, none or a PATH."),
    freeze: str = typer.Option(
        "none", "--freeze", help="none, head-only, or a stage name: freeze up to it (inclusive)."
    ),
    backbone_lr_mult: float = typer.Option(
        0.1, "--backbone-lr-mult", help="Backbone learning rate = lr x this."
    ),
    image_size: int = typer.Option(224, "--image-size", help="Crop side in pixels."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Mild rotation/scale/brightness on train."
    ),
    hflip: bool = typer.Option(False, "--hflip", help="Also flip train images horizontally."),
    epochs: int = typer.Option(10, "--epochs", help="Maximum epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate of the head (AdamW)."),
    batch_size: int = typer.Option(
        32, "--batch-size", help="Training batch size (per process under torchrun)."
    ),
    workers: int = typer.Option(2, "--workers", help="Image decoding processes."),
    patience: int = typer.Option(3, "--patience", help="Early-stopping patience, in epochs."),
    monitor: str = typer.Option("val_auc", "--monitor", help="val_auc, val_f1 or val_loss."),
    class_weight: str = typer.Option("balanced", "--class-weight", help="balanced or none."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, shuffling, augmentation."),
    seeds: int = typer.Option(
        1, "--seeds", help="Repeat with seeds seed..seed+N-1 (compare reports mean and spread)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run with the same settings."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    runs: Path = RunsOption,
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune a backbone end to end on streamed images, through the same trainer.

    A checkpoint is written after every epoch; after an interruption, the same command with
    `--resume` continues where it stopped. AMP and channels_last are used on CUDA. Under
    torchrun it trains with DDP (NCCL on GPUs, gloo on CPUs); rank 0 alone writes and prints.

    Examples:

    * `xray finetune`
    * `xray finetune --model densenet121 --freeze layer3 --epochs 20`
    * `xray finetune --model resnet18 --weights none --image-size 64 --resume`
    * `torchrun --standalone --nproc-per-node 4 $(which xray) finetune --model resnet50`
    """
    from featurestore import distributed
    from featurestore.models import get_spec
    from featurestore.progress import make_progress
    from featurestore.train import TrainConfig
    from featurestore.train import finetune as run_finetune

    from .common import resolve_data

    get_spec(model)  # an unknown name fails before any data is read or generated
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        patience=patience,
        monitor=monitor,  # type: ignore[arg-type]
        class_weight=class_weight,  # type: ignore[arg-type]
        seed=seed,
        backbone_lr_mult=backbone_lr_mult,
        device=device,  # type: ignore[arg-type]
    )
    summaries = []
    with (
        distributed.process_group(device) as launch,
        make_progress(err_console, transient=True) as progress,
    ):
        if launch is not None and launch.rank != 0:
            err_console.quiet = True  # rank 0 speaks for all: every rank's errors reach it
        path = distributed.on_main(lambda: resolve_data(data))  # rank 0 may generate it
        for cfg in seeded(config, seeds):
            summaries.append(run_finetune(
                data=path, model=model, weights=weights, freeze=freeze, image_size=image_size,
                augment=augment, hflip=hflip, workers=workers, runs_dir=runs, config=cfg,
                resume=resume, progress=progress, console=err_console, notice=notice,
            ))  # fmt: skip
    if launch is None or launch.rank == 0:
        _report(summaries, as_json=as_json)


def seeded(config: TrainConfig, seeds: int) -> list[TrainConfig]:
    """The config repeated with seeds seed, seed+1, ... (`--seeds N`)."""
    from dataclasses import replace

    from featurestore.errors import XrayError

    if seeds < 1:
        raise XrayError(f"--seeds must be at least 1, got {seeds}")
    return [replace(config, seed=config.seed + i) for i in range(seeds)]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("fit-head")(user_errors(fit_head))
    app.command("finetune")(user_errors(finetune))
