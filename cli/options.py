"""Options shared by several commands, declared once: the same flag means the same thing everywhere.

Choices are the enums of `featurestore.config` (the library checks values against the same
enums), so `--help` lists them and the two can never disagree. Defaults are never written here:
each command reads them from its mode's config dataclass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featurestore.config import (
    THRESHOLD_HELP,
    ClassWeight,
    Device,
    FeatureDtype,
    HeadKind,
    LabelScheme,
    Monitor,
    Precision,
    Resample,
    Task,
    Uncertain,
)

__all__ = [
    "ClassWeight",
    "Device",
    "FeatureDtype",
    "HeadKind",
    "LabelScheme",
    "Monitor",
    "Precision",
    "Resample",
    "Task",
    "Uncertain",
]

DEFAULT_CACHE = Path("cache")
DEFAULT_RUNS = Path("runs")
DEFAULT_REPORTS = Path("reports")

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
]
DataPath = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Dataset: a Kermany-layout folder, a CSV manifest or a MedMNIST .npz. "
        "Default: $XRAY_DATA, else data/chest_xray if it exists, else data/synthetic "
        "(generated on first use).",
        show_default=False,
    ),
]
CacheDir = Annotated[Path, typer.Option("--cache", help="Folder of feature stores.")]
RunsDir = Annotated[Path, typer.Option("--runs", help="Folder of run folders.")]
DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where to compute: auto uses CUDA when available.")
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="Backbone weights: imagenet (torch hub cache; for timm:/hf:/txv: backbones their "
        "published weights from the library's cache, also `pretrained`), none (random init) or "
        "a state-dict PATH (hf: also a model folder).",
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of initialisation, shuffling and augmentation.")
]
SeedsOpt = Annotated[
    int,
    typer.Option(
        "--seeds", help="Repeat with seeds seed..seed+N-1 (compare reports mean and spread)."
    ),
]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="Input side in pixels.")]
LabelsOpt = Annotated[
    LabelScheme,
    typer.Option(
        "--labels",
        help="How labels are read: as-given (class folders / CSV label column; 2 classes = "
        "binary, more = multi-class) or kermany3 (Kermany NORMAL/PNEUMONIA relabelled from "
        "file names as NORMAL / BACTERIAL / VIRAL: a three-class task).",
    ),
]
UncertainOpt = Annotated[
    Uncertain,
    typer.Option(
        "--uncertain",
        help="Multi-label data (CheXpert, finding CSVs): uncertain (-1) labels count as absent "
        "(zeros), present (ones), or are masked from the loss and the metrics (ignore).",
    ),
]
TaskOpt = Annotated[
    Task,
    typer.Option(
        "--task",
        help="binary (NORMAL / PNEUMONIA), multiclass (NORMAL / BACTERIAL / VIRAL, the "
        "Kermany three-class task read with --labels kermany3) or multilabel (findings "
        "Cardiomegaly, Effusion, Opacity in a CSV, with patients and uncertain labels).",
    ),
]
RehashFlag = Annotated[
    bool,
    typer.Option(
        "--rehash",
        help="Hash every image to check the store is fresh, instead of trusting the digests "
        "recorded under the cache folder for files whose size, times and inode are unchanged.",
    ),
]
PixelCacheOpt = Annotated[
    float,
    typer.Option(
        "--pixel-cache-gb",
        help="Keep decoded, resized images in <cache>/.pixels (shared by every backbone that "
        "resizes alike and by fine-tune epochs) up to this many GB; 0: off.",
    ),
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        "--precision",
        help="What the backbone computes in: auto (bf16 on a CPU with native bf16/AMX, "
        "about twice as fast there; else fp32; autocast on CUDA), fp32 or bf16. Default: "
        "auto. Recorded; a store of another precision is another store.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Repeat a run: its config.json (or run folder) gives every option not given "
        "on the command line.",
        show_default=False,
    ),
]
ThresholdOpt = Annotated[
    str,
    typer.Option(
        "--threshold",
        help=f"Operating point, chosen on validation only: {THRESHOLD_HELP}.",
    ),
]

# The trainer's options, shared by fit-head and finetune (each command gives its own default).
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Maximum epochs.")]
PatienceOpt = Annotated[int, typer.Option("--patience", help="Early-stopping patience, in epochs.")]
MonitorOpt = Annotated[
    Monitor, typer.Option("--monitor", help="Validation metric that picks the best epoch.")
]
ClassWeightOpt = Annotated[
    ClassWeight,
    typer.Option("--class-weight", help="Loss weights from the train labels, or none."),
]
TrainFractionOpt = Annotated[
    str | None,
    typer.Option(
        "--train-fraction",
        help="Label efficiency: one run per fraction of the train patients, e.g. "
        "0.01,0.1,0.5,1 (nested, class-stratified, drawn with each run's seed).",
        show_default=False,
    ),
]
ShotsOpt = Annotated[
    str | None,
    typer.Option(
        "--shots",
        help="Label efficiency: one run per K train images per class, e.g. 5,10,50 "
        "(whole patients first, nested).",
        show_default=False,
    ),
]
