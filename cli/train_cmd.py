"""`xray fit-head` and `xray finetune`: train through the one trainer, print the test metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from featurestore.config import FinetuneConfig, FitHeadConfig

from .common import (
    console,
    emit_table,
    err_console,
    format_cell,
    notice,
    print_table,
    user_errors,
)
from .options import (
    DEFAULT_CACHE,
    DEFAULT_RUNS,
    CacheDir,
    ClassWeight,
    ClassWeightOpt,
    ConfigOpt,
    DataPath,
    Device,
    DeviceOpt,
    EpochsOpt,
    HeadKind,
    HeadPrecisionOpt,
    ImageSizeOpt,
    JsonFlag,
    LabelScheme,
    LabelsOpt,
    Monitor,
    MonitorOpt,
    PatienceOpt,
    PixelCacheOpt,
    PrecisionOpt,
    RehashFlag,
    RunsDir,
    SeedOpt,
    SeedsOpt,
    ShotsOpt,
    ThresholdOpt,
    TrainFractionOpt,
    Uncertain,
    UncertainOpt,
    WeightsOpt,
    bare_values,
)

if TYPE_CHECKING:
    from featurestore.runs import RunSummary

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


MULTICLASS_COLUMNS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "roc_auc_macro",
    "loss",
)


def _warn_runs(summaries: Sequence[RunSummary]) -> None:
    """Random weights or synthetic data said on stderr right after training, as compare,
    predict and explain say it (once per distinct warning)."""
    import json

    from featurestore.runs import run_warnings

    seen: list[str] = []
    for s in summaries:
        config = json.loads((s.path / "config.json").read_text())
        seen += [w for w in run_warnings(config) if w not in seen]
        seen += [f"{s.path.name}: {n}" for n in s.threshold_notes]
    for w in seen:
        err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False)


def _emit_json(title: str, summaries: Sequence[RunSummary], ats: Sequence[str]) -> None:
    """One JSON record per (run, decision rule): its test metrics as metrics.json holds them."""
    rows = [[str(s.path), s.model, s.mode, s.head, at, s.test[at]] for s in summaries for at in ats]
    emit_table(
        title,
        ["run", "model", "mode", "head", "at", "metrics"],
        rows,
        as_json=True,
        extra={"runs": [str(s.path) for s in summaries]},
    )


# Per task: the metrics.json decision keys a table shows (a column each per run), the column
# suffix of each, its title, and the headline rows (per-class or per-finding rows follow).
_DECISIONS = {
    "binary": ("at_0.5", "at_threshold"),
    "multiclass": ("argmax",),
    "multilabel": ("at_label_thresholds",),
}
_TITLES = {
    "binary": "test metrics (threshold chosen on validation)",
    "multiclass": "test metrics (multi-class, argmax)",
    "multilabel": "test metrics (multi-label, per-label thresholds chosen on validation)",
}
_HEADLINE = {
    "binary": METRIC_COLUMNS,
    "multiclass": MULTICLASS_COLUMNS,
    "multilabel": ("macro_auc", "micro_auc", "macro_average_precision", "loss"),
}


def _rows_of(kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Row name -> value of one decision's test metrics (metrics.json): the task's headline
    metrics, then each class's recall and one-vs-rest AUC (multi-class) or each finding's AUC,
    sensitivity and specificity (multi-label)."""
    rows = {m: metrics.get(m) for m in _HEADLINE[kind]}
    if kind == "multiclass":
        rows |= {k: v for k, v in metrics.items() if k.startswith(("recall_", "auc_"))}
    elif kind == "multilabel":
        for name, per in metrics["labels"].items():
            rows |= {f"{name} {m}": per[m] for m in ("auc", "sensitivity", "specificity")}
    return rows


def _best(summary: RunSummary, config: dict[str, Any]) -> str:
    if config.get("head") == "logreg" and "logreg_C" in config:  # rows are values of C
        return f"C={config['logreg_C']:g} of {summary.epochs_run} C values"
    return f"{summary.best_epoch}/{summary.epochs_run}"


def _report(summaries: Sequence[RunSummary], *, as_json: bool) -> None:
    """The runs' test metrics, one table per task (a column per run and decision rule: at 0.5
    and at the validation-chosen threshold for binary, argmax for multi-class, the per-finding
    thresholds for multi-label), then the run folders. JSON: one record per (run, decision)."""
    import json

    from featurestore.tasks import Task

    _warn_runs(summaries)
    configs = [json.loads((s.path / "config.json").read_text()) for s in summaries]
    kinds = [Task.from_record(c).kind for c in configs]
    for kind in dict.fromkeys(kinds):  # one table per task, in the order the runs came
        group = [(s, c) for s, c, k in zip(summaries, configs, kinds, strict=True) if k == kind]
        _task_report(kind, group, as_json=as_json)


def _task_report(
    kind: str, group: list[tuple[RunSummary, dict[str, Any]]], *, as_json: bool
) -> None:
    from featurestore.compare import run_labels

    runs, decisions = [s for s, _ in group], _DECISIONS[kind]
    if as_json:
        _emit_json(_TITLES[kind], runs, decisions)
        return
    labels, _ = run_labels([c for _, c in group], [s.path.name for s in runs])
    suffix = {"at_0.5": " @0.5", "argmax": "", "at_label_thresholds": ""}
    columns, cells = ["metric"], []
    for s, label in zip(runs, labels, strict=True):
        for d in decisions:
            columns.append(label + suffix.get(d, f" @{s.threshold:.3f}"))
            cells.append(_rows_of(kind, s.test[d]))
    names = list(dict.fromkeys(name for c in cells for name in c))
    table_rows: list[list[Any]] = [[name] + [c.get(name) for c in cells] for name in names]
    best = [_best(s, c) for s, c in group]
    table_rows.append(["best epoch / run"] + [b for b in best for _ in decisions])
    legend = "-: undefined on this test set (e.g. specificity without negative images)."
    swept = [c["logreg_Cs"] for _, c in group if c.get("head") == "logreg" and "logreg_Cs" in c]
    if swept:
        values = ", ".join(f"{c:g}" for c in swept[0])
        legend += f" logreg: C swept over {values}; the C with the best validation AUC is kept."
    rows = [[format_cell(v) for v in row] for row in table_rows]
    print_table(_TITLES[kind], columns, rows, legend=legend)
    for s in runs:
        console.print(f"run folder: [bold]{s.path}[/]", highlight=False)


VerboseFlag = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Print every epoch's line (train and val loss, accuracy, F1, AUC), not only "
        "the live progress line and the summary (or set XRAY_VERBOSE=1).",
    ),
]
_HEAD = FitHeadConfig()
_FT = FinetuneConfig()


def fit_head(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Train on the cached stores of this backbone only."),
    ] = None,
    store: Annotated[
        list[Path] | None,
        typer.Option("--store", help="Train on this store file (repeat for several; see --fuse)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Dataset the stores came from: only its stores are used and each is checked "
            "against it (default: the dataset folder recorded in each store, when present).",
            show_default=False,
        ),
    ] = None,
    cache: CacheDir = DEFAULT_CACHE,
    runs: RunsDir = DEFAULT_RUNS,
    head: Annotated[HeadKind, typer.Option("--head", help="The head on the features.")] = (
        HeadKind(_HEAD.head)
    ),
    epochs: EpochsOpt = _HEAD.train.epochs,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = (
        _HEAD.train.lr
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = (
        _HEAD.train.batch_size
    ),
    patience: PatienceOpt = _HEAD.train.patience,
    monitor: MonitorOpt = Monitor(_HEAD.train.monitor),
    class_weight: ClassWeightOpt = ClassWeight(_HEAD.train.class_weight),
    threshold_policy: ThresholdOpt = _HEAD.train.threshold_policy,
    seed: SeedOpt = _HEAD.train.seed,
    seeds: SeedsOpt = _HEAD.seeds,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="Train a grid of heads at once and keep the best on validation: 'default' "
            "(lr 1e-4..1e-2 x wd 0,1e-4,1e-2 x linear,mlp), or axis=v1,v2 items among lr, wd, "
            "head (repeat the option or quote them together); an axis left out keeps --lr/--head. "
            "A bare --sweep means 'default'.",
            metavar="[GRID]",
            show_default=False,
        ),
    ] = None,
    train_fraction: TrainFractionOpt = None,
    shots: ShotsOpt = None,
    device: DeviceOpt = Device(_HEAD.train.device),
    precision: HeadPrecisionOpt = None,
    pooling: Annotated[
        str | None,
        typer.Option(
            "--pooling",
            help="Transformer stores: train on one pooling (cls, mean, or map for SigLIP) of "
            "the stored cls+mean features; default: all of them.",
            show_default=False,
        ),
    ] = _HEAD.pooling,
    fuse: Annotated[
        bool,
        typer.Option(
            "--fuse",
            help="One head on the --store files side by side (same dataset, rows checked).",
        ),
    ] = _HEAD.fuse,
    rehash: RehashFlag = _HEAD.rehash,
    config_file: ConfigOpt = None,
    as_json: JsonFlag = False,
    labels: LabelsOpt = LabelScheme(_HEAD.labels),
    uncertain: UncertainOpt = Uncertain(_HEAD.uncertain),
    verbose: VerboseFlag = False,
) -> None:
    """Stage 2: train a head on cached features, one run folder per feature store.

    Bare `xray fit-head` trains on every complete store in the cache folder. Features are
    standardised with train statistics; the decision threshold is chosen on validation.

    Examples:

    * `xray fit-head`
    * `xray fit-head --model resnet50 --head mlp --seed 1`
    * `xray fit-head --threshold sensitivity:0.95` (the operating point, chosen on validation)
    * `xray fit-head --store cache/chest_xray/densenet121-imagenet-224px.h5 --json`
    * `xray fit-head --config runs/20261128-101500-resnet50-frozen-s0 --seed 1`
    * `xray fit-head --data data/chest_xray --labels kermany3` (the three-class stores)
    * `xray fit-head --model rad-dino --pooling cls`
    * `xray fit-head --fuse --store cache/x/densenet121-imagenet-224px.h5
      --store cache/x/rad-dino-pretrained-224px-cls+mean.h5`
    * `xray fit-head --sweep default` (or `--sweep "lr=1e-4,1e-3,1e-2 wd=0,1e-4"`)
    * `xray fit-head --train-fraction 0.01,0.05,0.1,0.25,0.5,1 --seeds 3`
    """
    from featurestore.config import parse_fractions, parse_shots, parse_sweep
    from featurestore.progress import make_progress
    from featurestore.train import TrainConfig, fit_heads
    from featurestore.train.loop import VERBOSE_ENV

    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the trainer and the sweep (epoch_table_wanted)
    given = from_config(ctx, config_file, locals())
    config = TrainConfig(
        epochs=given["epochs"],
        lr=given["lr"],
        batch_size=given["batch_size"],
        patience=given["patience"],
        monitor=str(given["monitor"]),  # type: ignore[arg-type]
        class_weight=str(given["class_weight"]),  # type: ignore[arg-type]
        threshold_policy=given["threshold_policy"],
        seed=given["seed"],
        device=str(given["device"]),  # type: ignore[arg-type]
        precision=str(given["precision"]) if given["precision"] else None,  # type: ignore[arg-type]
    )
    grid = None
    if sweep:
        grid = parse_sweep(sweep, head=str(given["head"]), lr=config.lr,
                           weight_decay=config.weight_decay)  # fmt: skip
    fractions = parse_fractions(train_fraction) if train_fraction is not None else ()
    shot_counts = parse_shots(shots) if shots is not None else ()
    with make_progress(err_console, transient=True) as progress:
        summaries = fit_heads(
            model=given["model"], store=given["store"], data=data, cache_dir=cache, runs_dir=runs,
            head=str(given["head"]), config=config, progress=progress, console=err_console,
            notice=notice, seeds=seeds, labels=str(given["labels"]),
            uncertain=str(given["uncertain"]), pooling=given["pooling"], fuse=fuse,
            sweep=grid, train_fractions=fractions, shots=shot_counts, rehash=rehash,
        )  # fmt: skip
    _report(summaries, as_json=as_json)


def finetune(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", help="Backbone name (see `xray models`).")
    ] = _FT.model,
    data: DataPath = None,
    weights: WeightsOpt = _FT.weights,
    freeze: Annotated[
        str,
        typer.Option(
            "--freeze", help="none, head-only, or a stage name: freeze up to it (inclusive)."
        ),
    ] = _FT.freeze,
    backbone_lr_mult: Annotated[
        float, typer.Option("--backbone-lr-mult", help="Backbone learning rate = lr x this.")
    ] = _FT.train.backbone_lr_mult,
    image_size: ImageSizeOpt = _FT.image_size,
    augment: Annotated[
        bool,
        typer.Option("--augment/--no-augment", help="Mild rotation/scale/brightness on train."),
    ] = _FT.augment,
    hflip: Annotated[
        bool, typer.Option("--hflip", help="Also flip train images horizontally.")
    ] = _FT.hflip,
    epochs: EpochsOpt = _FT.train.epochs,
    lr: Annotated[
        float, typer.Option("--lr", help="Peak learning rate of the head (AdamW).")
    ] = _FT.train.lr,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Training batch size (per process under torchrun).")
    ] = _FT.train.batch_size,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Image decoders: threads on CPU (default 1, beside torch's threads), loader "
            "processes on a GPU (default CPU cores - 1, at most 8).",
            show_default=False,
        ),
    ] = _FT.workers,
    patience: PatienceOpt = _FT.train.patience,
    monitor: MonitorOpt = Monitor(_FT.train.monitor),
    class_weight: ClassWeightOpt = ClassWeight(_FT.train.class_weight),
    threshold_policy: ThresholdOpt = _FT.train.threshold_policy,
    seed: SeedOpt = _FT.train.seed,
    seeds: SeedsOpt = _FT.seeds,
    train_fraction: TrainFractionOpt = None,
    shots: ShotsOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run with the same settings.")
    ] = False,
    device: DeviceOpt = Device(_FT.train.device),
    precision: PrecisionOpt = None,
    runs: RunsDir = DEFAULT_RUNS,
    config_file: ConfigOpt = None,
    as_json: JsonFlag = False,
    labels: LabelsOpt = LabelScheme(_FT.labels),
    uncertain: UncertainOpt = Uncertain(_FT.uncertain),
    cache: Annotated[
        Path, typer.Option("--cache", help="xray's cache folder (its .pixels: decoded images).")
    ] = DEFAULT_CACHE,
    pixel_cache_gb: PixelCacheOpt = _FT.pixel_cache_gb,
    verbose: VerboseFlag = False,
) -> None:
    """Fine-tune a backbone end to end on streamed images, through the same trainer.

    A checkpoint is written after every epoch; after an interruption, the same command with
    `--resume` continues where it stopped. AMP and channels_last are used on CUDA. Under
    torchrun it trains with DDP (NCCL on GPUs, gloo on CPUs); rank 0 alone writes and prints.

    Examples:

    * `xray finetune`
    * `xray finetune --model densenet121 --freeze layer3 --epochs 20`
    * `xray finetune --model resnet18 --weights none --image-size 64 --resume`
    * `xray finetune --config runs/20261128-102000-resnet50-finetune-s0 --seed 1`
    * `xray finetune --model resnet50 --labels kermany3` (NORMAL / BACTERIAL / VIRAL)
    * `xray finetune --model resnet18 --train-fraction 0.1,0.5 --seeds 2`
    * `torchrun --standalone --nproc-per-node 4 $(which xray) finetune --model resnet50`
    """
    from featurestore import distributed
    from featurestore.config import parse_fractions, parse_shots, seeded
    from featurestore.models import get_spec
    from featurestore.progress import make_progress
    from featurestore.train import TrainConfig
    from featurestore.train import finetune as run_finetune
    from featurestore.train.loop import VERBOSE_ENV

    from .common import resolve_data

    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the trainer (epoch_table_wanted)

    given = from_config(ctx, config_file, locals())
    get_spec(given["model"])  # an unknown name fails before any data is read or generated
    config = TrainConfig(
        epochs=given["epochs"],
        lr=given["lr"],
        batch_size=given["batch_size"],
        patience=given["patience"],
        monitor=str(given["monitor"]),  # type: ignore[arg-type]
        class_weight=str(given["class_weight"]),  # type: ignore[arg-type]
        threshold_policy=given["threshold_policy"],
        seed=given["seed"],
        backbone_lr_mult=given["backbone_lr_mult"],
        device=str(given["device"]),  # type: ignore[arg-type]
        precision=str(given["precision"]) if given["precision"] else None,  # type: ignore[arg-type]
    )
    subsets: list[tuple[float | None, int | None]] = [
        *((f, None) for f in (parse_fractions(train_fraction) if train_fraction else ())),
        *((None, k) for k in (parse_shots(shots) if shots else ())),
    ] or [(None, None)]
    summaries = []
    with (
        distributed.process_group(config.device) as launch,
        make_progress(err_console, transient=True) as progress,
    ):
        if launch is not None and launch.rank != 0:
            err_console.quiet = True  # rank 0 speaks for all: every rank's errors reach it
        path = distributed.on_main(lambda: resolve_data(data))  # rank 0 may generate it
        from featurestore.data import synth_label_hint

        hint = synth_label_hint(path, str(given["labels"]))
        if hint is not None:
            notice(hint)
        for cfg in seeded(config, seeds):
            for fraction, k in subsets:
                summaries.append(run_finetune(
                    data=path, model=given["model"], weights=given["weights"],
                    freeze=given["freeze"], image_size=given["image_size"],
                    augment=given["augment"], hflip=given["hflip"], workers=workers,
                    runs_dir=runs, config=cfg, resume=resume, progress=progress,
                    console=err_console, notice=notice, labels=str(given["labels"]),
                    uncertain=str(given["uncertain"]), train_fraction=fraction, shots=k,
                    pixel_cache_dir=cache, pixel_cache_gb=pixel_cache_gb,
                ))  # fmt: skip
    if launch is None or launch.rank == 0:
        _report(summaries, as_json=as_json)


# Options a run's config.json can give back (`--config`): the settings that decide the result.
# Paths, devices' availability and output choices stay the command line's.
REPEATABLE = (
    "model", "pooling", "head", "epochs", "lr", "batch_size", "patience", "monitor", "class_weight",
    "seed", "device", "weights", "freeze", "backbone_lr_mult", "image_size", "augment", "hflip",
    "threshold_policy", "precision",
)  # fmt: skip


def from_config(
    ctx: typer.Context, config_file: Path | None, given: dict[str, Any]
) -> dict[str, Any]:
    """The options, with those left at their default taken from a run's config.json.

    An option typed on the command line always wins; without `--config` nothing changes.
    Raises XrayError for a missing or unreadable file.
    """
    import json

    from featurestore.errors import XrayError

    values = {k: v for k, v in given.items() if k not in ("ctx", "config_file")}
    if config_file is None:
        return values
    path = config_file / "config.json" if config_file.is_dir() else config_file
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise XrayError(f"--config {config_file}: no config.json there") from None
    except (OSError, ValueError) as exc:
        raise XrayError(f"--config {path} is not a readable config.json ({exc})") from None
    if not isinstance(recorded, dict):
        raise XrayError(f"--config {path} is not a run's config.json (not a JSON object)")
    if recorded.get("backbone_name"):  # a run on one pooling is labelled `rad-dino-cls`
        recorded = {**recorded, "model": recorded["backbone_name"]}
    for name in REPEATABLE:
        source = ctx.get_parameter_source(name)
        if name in values and name in recorded and (source is None or source.name == "DEFAULT"):
            current = values[name]
            values[name] = (
                type(current)(recorded[name]) if isinstance(current, Enum) else recorded[name]
            )
    # A frozen run repeats on the store it trained on, not on every store of its backbone.
    store_doc = recorded.get("store")
    store_path = str(store_doc.get("path") or "") if isinstance(store_doc, dict) else ""
    sources = [ctx.get_parameter_source(k) for k in ("store", "model")]
    untouched = all(s is None or s.name == "DEFAULT" for s in sources)
    if "store" in values and untouched and store_path and Path(store_path).is_file():
        values["store"], values["model"] = [Path(store_path)], None
    return values


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    # A bare `--sweep` means `--sweep default`.
    app.command("fit-head", cls=bare_values({"--sweep": "default"}))(user_errors(fit_head))
    app.command("finetune")(user_errors(finetune))
