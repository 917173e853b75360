"""Options shared by several commands, declared once: the same flag means the same thing everywhere.

Choices are the enums of `featurestore.config` (the library checks values against the same
enums), so `--help` lists them and the two can never disagree. Defaults are never written here:
each command reads them from its mode's config dataclass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

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
    "BareValueCommand",
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
    "bare_values",
    "tidy_command",
    "tidy_metavars",
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
        "auto. Recorded with the features and the run; a bf16 store is kept beside an fp32 "
        "one (its file name ends in -bf16), never over it.",
        show_default=False,
    ),
]
HeadPrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        "--precision",
        help="What the head trains in: auto (fp32 on CPU, where a head's small matrix "
        "products gain nothing from bf16; autocast on CUDA), fp32 or bf16. The features are "
        "the store's, in the precision they were extracted in. Default: auto.",
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


# --- How options read in `--help` and on the command line --------------------------------------

_LIST = re.compile(r"list\[(?P<item>.+)\]")


def tidy_metavars(params: Iterable[Any]) -> None:
    """Metavars that read well at 80 columns, set on each parameter that has none of its own.

    Typer 0.29 labels every option with its Python type, flags included (`--fuse <bool>`,
    though a flag takes no value), and joins choices without spaces (`<val_auc|val_f1|
    val_loss>`), which rich can only break mid-word in a narrow column. Here a flag gets no
    label, choices are spaced (`val_auc | val_f1 | val_loss`: rich wraps at the spaces) and a
    repeatable parameter names its item (`<path>`, not `<list[Path]>`; its help says "repeat").
    """
    for param in params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag or param.count else _label(param)
        elif isinstance(param, TyperArgument) and (label := _label(param)) is not None:
            # An argument's metavar is its name; Typer reads the type label from this method.
            param.display_type_rich = _constant(label)  # type: ignore[method-assign, assignment]


def _constant(label: str) -> Callable[[Any], str]:
    return lambda ctx: label


def _label(param: TyperOption | TyperArgument) -> str | None:
    """The tidied type label of a parameter, or None to keep Typer's."""
    shown = param.display_type(None)  # type: ignore[arg-type]  # ctx is used for choices only
    if not shown:
        return None
    inner = shown[1:-1] if shown.startswith("<") and shown.endswith(">") else shown
    listed = _LIST.fullmatch(inner)
    item = listed["item"] if listed else inner
    if "|" in item:
        return " | ".join(item.split("|"))
    return f"<{item.lower()}>" if listed else None


def tidy_command(command: Any) -> None:
    """`tidy_metavars` on every option of `command`, its `--help` included (click makes that one
    on first use, and Typer labels it `<bool>` too), and of its subcommands (`xray data check`)."""
    ctx = command.context_class(command, **(command.context_settings or {}))
    tidy_metavars(command.get_params(ctx))
    for sub in getattr(command, "commands", {}).values():
        tidy_command(sub)


class BareValueCommand(TyperCommand):
    """A command some of whose options may be given without a value (`--sweep` alone).

    Typer 0.29 parses options itself and has no optional values (click's `flag_value` with
    `is_flag=False` is not passed on), so the value is filled in before parsing: an option in
    `bare` that ends the command line, or is followed by another option, gets its bare value.
    """

    bare: ClassVar[Mapping[str, str]] = {}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, fill_bare_values(args, self.bare))


def fill_bare_values(args: Sequence[str], bare: Mapping[str, str]) -> list[str]:
    """`args` with each bare option of `bare` followed by its value:
    `["--sweep", "--json"]` -> `["--sweep", "default", "--json"]`; a value given is kept, and
    nothing after `--` is touched."""
    out: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        out.append(arg)
        if arg == "--":
            return out + rest
        if arg in bare and (not rest or rest[0].startswith("-")):
            out.append(bare[arg])
    return out


def bare_values(values: Mapping[str, str]) -> type[BareValueCommand]:
    """The command class for `app.command(cls=...)` whose options `values` (flag -> value it
    means when given alone) may be given bare."""
    return type("BareValueCommand", (BareValueCommand,), {"bare": dict(values)})
