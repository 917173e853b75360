"""Every option's one default: a frozen dataclass per mode, and the choices each option takes.

The command line, the library and `xray demo` read their defaults from here and never restate
them (as LitGPT and nanoGPT keep each default once). This module imports nothing heavy, so the
CLI can read it at import time and `xray --help` stays fast. A run records `asdict(config)` in
its config.json; `--config` reads it back to repeat the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Literal

from featurestore.errors import XrayError


class Choice(str, Enum):
    """A str Enum whose str() and format() are its value (what Typer shows, what JSON stores)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


# The choices of each option, in one place: the CLI shows these enums in --help, and the library
# checks values against the tuples derived from them.
class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Monitor(Choice):
    val_auc = "val_auc"
    val_f1 = "val_f1"
    val_loss = "val_loss"


class ClassWeight(Choice):
    balanced = "balanced"
    none = "none"


class HeadKind(Choice):
    linear = "linear"
    mlp = "mlp"
    logreg = "logreg"


class FeatureDtype(Choice):
    float16 = "float16"
    float32 = "float32"


class SplitChoice(Choice):
    train = "train"
    val = "val"
    test = "test"


class ExportFormat(Choice):
    onnx = "onnx"


class Resample(Choice):
    patients = "patients"
    images = "images"


class Task(Choice):
    """What `xray data synth` writes and `xray demo` studies (`--task`)."""

    binary = "binary"
    multiclass = "multiclass"
    multilabel = "multilabel"


class Uncertain(Choice):
    """What uncertain (-1) labels of multi-label data become (`--uncertain`): Irvin et al.
    (2019), "CheXpert", AAAI: U-Zeros, U-Ones, U-Ignore."""

    zeros = "zeros"
    ones = "ones"
    ignore = "ignore"
    """Masked: left out of the loss and of every metric of that finding."""


class LabelScheme(Choice):
    """How a dataset's labels are read (`--labels`)."""

    as_given = "as-given"
    """The class folders / CSV label column as they are (2 classes binary, more multi-class)."""
    kermany3 = "kermany3"
    """Kermany's NORMAL/PNEUMONIA relabelled from file names: NORMAL, BACTERIAL, VIRAL."""


class Precision(Choice):
    """What the forward pass (and backward, when training) computes in.

    `auto`: bfloat16 autocast on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX on
    x86, BF16 on Arm), else float32; on CUDA, autocast as before (float16 for extraction,
    bfloat16 where supported for training). See `featurestore.devices.resolve_precision`.
    """

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


def values(choice: type[Choice]) -> tuple[str, ...]:
    """The values of a choice enum, in declaration order."""
    return tuple(member.value for member in choice)


DEVICES = values(Device)
MONITORS = values(Monitor)
CLASS_WEIGHTS = values(ClassWeight)
HEAD_KINDS = values(HeadKind)
FEATURE_DTYPES = values(FeatureDtype)
RESAMPLE_UNITS = values(Resample)
LABEL_SCHEMES = values(LabelScheme)
TASKS = values(Task)
UNCERTAIN_POLICIES = values(Uncertain)
PRECISIONS = values(Precision)
SCHEDULES = ("cosine", "constant")
THRESHOLD_POLICIES: tuple[str, ...] = ("youden", "f1", "sensitivity", "specificity", "fixed")
"""Kinds of operating point; `sensitivity`, `specificity` and `fixed` take a value (`kind:0.95`)."""
TARGETED_POLICIES: tuple[str, ...] = ("sensitivity", "specificity", "fixed")
THRESHOLD_HELP = "youden, f1, sensitivity:0.95, specificity:0.90 or fixed:0.5"


def parse_threshold_policy(policy: str) -> tuple[str, float | None]:
    """`"sensitivity:0.95"` -> ("sensitivity", 0.95); `"youden"` -> ("youden", None).

    `fixed` alone means `fixed:0.5` (the policy's meaning before it took a value). Targets of
    sensitivity and specificity lie in (0, 1]; a fixed threshold in [0, 1].

    Raises:
        XrayError: for an unknown kind, a missing or extra value, or a value out of range.
    """
    kind, sep, raw = str(policy).strip().partition(":")
    bad = f"unknown threshold policy {policy!r}; choose one of: {THRESHOLD_HELP}"
    if kind not in THRESHOLD_POLICIES:
        raise XrayError(bad)
    if kind == "fixed" and not sep:
        return "fixed", 0.5
    if kind not in TARGETED_POLICIES:
        if sep:
            raise XrayError(f"threshold policy {kind} takes no value, got {policy!r}")
        return kind, None
    try:
        value = float(raw)
    except ValueError:
        raise XrayError(
            f"threshold policy {kind} needs a number, as in {kind}:0.9; got {policy!r}"
        ) from None
    low_ok = value >= 0.0 if kind == "fixed" else value > 0.0
    if not (low_ok and value <= 1.0):
        span = "[0, 1]" if kind == "fixed" else "(0, 1]"
        raise XrayError(f"the value of threshold policy {kind} must lie in {span}, got {value}")
    return kind, value


PIXEL_CACHE_GB = 10.0
"""Default limit of the pixel cache in GB (see `featurestore.data.pixel_cache`): Kermany at one
resize rule takes ~0.5 GB, NIH ChestX-ray14 ~9 GB; CheXpert (~18 GB) keeps its first 10."""

DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16"]

KERMANY_DIR = Path("data/chest_xray")
"""Where the Kaggle Kermany dataset is looked for when no --data is given."""
SYNTHETIC_DIR = Path("data/synthetic")
"""Where the built-in synthetic dataset is generated when there is no other default."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (written to config.json as is).

    The defaults are the frozen mode's (heads on cached features); `FinetuneConfig.train`
    holds the fine-tune mode's.
    """

    epochs: int = 100
    """Maximum number of epochs; early stopping may end sooner."""
    lr: float = 1e-3
    """Peak AdamW learning rate of the head (reached after warmup)."""
    weight_decay: float = 1e-4
    """AdamW weight decay; never applied to biases and normalisation weights."""
    warmup_epochs: float = 1.0
    """Linear warmup from ~0 to `lr`, in epochs (fractions allowed), stepped per batch."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After warmup: cosine decay to 0 at the last epoch, or a constant rate."""
    patience: int = 10
    """Stop after this many epochs without improvement of `monitor`."""
    monitor: Literal["val_auc", "val_f1", "val_loss"] = "val_auc"
    """Validation metric that picks the best epoch and drives early stopping."""
    min_delta: float = 0.0
    """Smallest change of `monitor` that counts as an improvement."""
    class_weight: Literal["balanced", "none"] = "balanced"
    """"balanced": cross-entropy weights n / (C * n_c) from the train labels."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    seed: int = 0
    """Seeds initialisation, shuffling, augmentation and dropout."""
    batch_size: int = 256
    """Training batch size (the source batches with it)."""
    backbone_lr_mult: float = 1.0
    """Backbone (`trunk.*`) parameters train at lr * this factor."""
    threshold_policy: str = "youden"
    """How the decision threshold is chosen on validation: youden (max sensitivity +
    specificity - 1), f1, sensitivity:T (the highest threshold reaching sensitivity >= T),
    specificity:T (the lowest reaching specificity >= T) or fixed:T (fixed alone is 0.5)."""
    amp: bool = True
    """Mixed precision on CUDA (bfloat16 where supported) when `precision` is auto."""
    precision: PrecisionName | None = None
    """Forward/backward arithmetic: bf16 autocast, fp32, or auto (bf16 on a CPU that computes
    it natively, else fp32; AMP on CUDA as `amp` says). None (the default): auto on CPU, and
    AMP on CUDA as `amp` says. Parameters and the optimizer stay fp32; per-epoch validation,
    the final val/test scoring (predictions.csv), predict and explain run in the resolved
    precision (recorded as `resolved_precision`), so they agree within it. Heads on cached
    features (fit-head) resolve auto to fp32 on CPU."""
    device: DeviceName = "auto"
    """"auto" uses CUDA when available."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}"),
            (self.patience >= 1, f"--patience must be at least 1, got {self.patience}"),
            (
                self.monitor in MONITORS,
                f"unknown --monitor {self.monitor!r}; choose one of: {', '.join(MONITORS)}",
            ),
            (self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"),
            (
                self.class_weight in CLASS_WEIGHTS,
                f"--class-weight must be balanced or none, got {self.class_weight!r}",
            ),
            (self.grad_clip >= 0, f"grad clip must be >= 0, got {self.grad_clip}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (
                self.backbone_lr_mult >= 0,
                f"--backbone-lr-mult must be >= 0, got {self.backbone_lr_mult}",
            ),
            (
                self.device in DEVICES,
                f"--device must be auto, cpu or cuda, got {self.device!r}",
            ),
            (
                self.precision is None or self.precision in PRECISIONS,
                f"--precision must be auto, fp32 or bf16, got {self.precision!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise XrayError(message)
        parse_threshold_policy(self.threshold_policy)


def seeded(config: TrainConfig, seeds: int) -> list[TrainConfig]:
    """The config repeated with seeds seed, seed+1, ..., seed+seeds-1 (`--seeds N`).

    The one seed loop of the project: fit-head, finetune and the demo all repeat through it.

    Raises:
        XrayError: when `seeds` < 1.
    """
    if seeds < 1:
        raise XrayError(f"--seeds must be at least 1, got {seeds}")
    return [replace(config, seed=config.seed + i) for i in range(seeds)]


@dataclass(frozen=True)
class ExtractConfig:
    """Stage 1 (`xray extract`): how a backbone's features are computed and stored."""

    weights: str = "imagenet"
    """"imagenet" (torch hub cache), "none" (random init, seeded) or a path to a state dict."""
    image_size: int = 224
    """Center-crop side in pixels."""
    batch_size: int = 32
    """Images per forward pass."""
    workers: int | None = None
    """Decoding processes; None: 0 on CPU (images decode in a thread beside torch's, which use
    every core), cores - 1 on a GPU."""
    device: DeviceName = "auto"
    """"auto" uses CUDA when available."""
    dtype: Literal["float16", "float32"] = "float16"
    """How features are stored."""
    precision: PrecisionName | None = None
    """What the trunk computes in (see `Precision`); part of the store's identity. None (the
    default): auto on CPU (bfloat16 where the CPU computes it natively, else fp32), float16
    autocast on CUDA as before."""
    skip_bad: bool = False
    """Leave unreadable images out (listed in the store) instead of stopping."""
    labels: Literal["as-given", "kermany3"] = "as-given"
    """Label scheme (`LabelScheme`): `kermany3` reads Kermany as three classes."""
    uncertain: Literal["zeros", "ones", "ignore"] = "ignore"
    """Multi-label data: uncertain (-1) labels as absent, present, or masked (`Uncertain`)."""
    rehash: bool = False
    """Hash every image to check a finished store is fresh, instead of reusing the digests
    recorded under the cache folder for files whose stat is unchanged."""
    pixel_cache_gb: float = PIXEL_CACHE_GB
    """Limit of the pixel cache (`cache/.pixels`, decoded and resized images shared by every
    backbone that resizes alike and by fine-tune epochs), in GB; 0 turns it off."""


@dataclass(frozen=True)
class SweepConfig:
    """The grid of a head sweep (`xray fit-head --sweep`): every lr x weight decay x head.

    All members train at once as one batched module on the same batches, each stops early on
    its own, and the member with the best validation monitor becomes the run. The defaults
    bracket the single-run lr (1e-3) by 10x either way, with and without weight decay.
    """

    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    """Peak AdamW learning rates tried."""
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-2)
    """AdamW weight decays tried (decoupled; never on biases and norm weights)."""
    heads: tuple[str, ...] = ("linear", "mlp")
    """Head kinds tried: linear and/or mlp (logreg sweeps its own C and cannot be batched)."""

    def __post_init__(self) -> None:
        if not self.lrs or not self.weight_decays or not self.heads:
            raise XrayError("every --sweep axis needs at least one value")
        if any(not v > 0 for v in self.lrs):
            raise XrayError(f"--sweep lr values must be positive, got {list(self.lrs)}")
        if any(not v >= 0 for v in self.weight_decays):
            raise XrayError(f"--sweep wd values must be >= 0, got {list(self.weight_decays)}")
        bad = [h for h in self.heads if h not in ("linear", "mlp")]
        if bad:
            raise XrayError(f"--sweep head takes linear and mlp, got {', '.join(bad)}")

    def members(self) -> list[tuple[str, float, float]]:
        """(head, lr, weight decay) of every member, heads outermost, in grid order."""
        return [(h, lr, wd) for h in self.heads for lr in self.lrs for wd in self.weight_decays]


SWEEP_AXES = {"lr": "lrs", "wd": "weight_decays", "head": "heads"}


def parse_sweep(specs: Sequence[str], *, head: str, lr: float, weight_decay: float) -> SweepConfig:
    """`--sweep` values -> SweepConfig. "default" is the default grid; else `axis=v1,v2` items.

    Items may share one value ("lr=1e-4,1e-3 wd=0,1e-4") or come as repeated options. An axis
    that is not named keeps the single-run value (`--head`, `--lr`, the default weight decay).

    Raises:
        XrayError: an unknown axis, a value that is not a number, or an empty list.
    """
    items = [item for spec in specs for item in spec.split()]
    if items == ["default"]:
        return SweepConfig()
    chosen: dict[str, tuple[object, ...]] = {
        "heads": (head,),
        "lrs": (lr,),
        "weight_decays": (weight_decay,),
    }
    for item in items:
        axis, sep, raw = item.partition("=")
        if not sep or axis not in SWEEP_AXES:
            raise XrayError(
                f"--sweep takes 'default' or axis=v1,v2 items with axis one of "
                f"{', '.join(SWEEP_AXES)}; got {item!r}"
            )
        parts = [v for v in raw.split(",") if v]
        if axis == "head":
            chosen["heads"] = tuple(parts)
            continue
        try:
            chosen[SWEEP_AXES[axis]] = tuple(float(v) for v in parts)
        except ValueError:
            raise XrayError(f"--sweep {axis} values must be numbers, got {raw!r}") from None
    return SweepConfig(**chosen)  # type: ignore[arg-type]


def parse_fractions(text: str) -> tuple[float, ...]:
    """`--train-fraction 0.01,0.1,1` -> (0.01, 0.1, 1.0), sorted; each in (0, 1].

    Raises:
        XrayError: a value that is not a number in (0, 1].
    """
    try:
        values_ = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise XrayError(f"--train-fraction takes numbers in (0, 1], got {text!r}") from None
    if not values_ or any(not 0.0 < v <= 1.0 for v in values_):
        raise XrayError(f"--train-fraction takes numbers in (0, 1], got {text!r}")
    return tuple(values_)


def parse_shots(text: str) -> tuple[int, ...]:
    """`--shots 5,10,50` -> (5, 10, 50): training images per class, sorted; each >= 1.

    Raises:
        XrayError: a value that is not a whole number >= 1.
    """
    try:
        values_ = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise XrayError(f"--shots takes whole numbers >= 1, got {text!r}") from None
    if not values_ or any(v < 1 for v in values_):
        raise XrayError(f"--shots takes whole numbers >= 1, got {text!r}")
    return tuple(values_)


@dataclass(frozen=True)
class FitHeadConfig:
    """Stage 2 on cached features (`xray fit-head`): which head, how it trains, how often."""

    head: Literal["linear", "mlp", "logreg"] = "linear"
    """Linear, MLP (one hidden layer) or scikit-learn logistic regression (C chosen on val)."""
    seeds: int = 1
    """Repeats with seeds train.seed, train.seed + 1, ... (compare reports mean and spread)."""
    labels: Literal["as-given", "kermany3"] = "as-given"
    """With --data: train on the stores of this label scheme (`kermany3`: three classes)."""
    uncertain: Literal["zeros", "ones", "ignore"] = "ignore"
    """With --data and multi-label data: train on the stores of this uncertainty policy."""
    pooling: str | None = None
    """Transformer stores: the one pooling to train on (`cls`, `mean`, `map`); None: all."""
    fuse: bool = False
    """One head on all the selected stores side by side instead of one head per store."""
    rehash: bool = False
    """Hash every image to check the stores are fresh (see `ExtractConfig.rehash`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The trainer's settings (heads on cached features: many cheap epochs)."""
    train_fractions: tuple[float, ...] = ()
    """Label efficiency: train on these fractions of the train patients (nested, stratified,
    seeded by the run seed); () trains on all of train."""
    shots_per_class: tuple[int, ...] = ()
    """Label efficiency: train on K images per class (whole patients first, nested)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end fine-tuning (`xray finetune`): backbone, input, augmentation, trainer."""

    model: str = "resnet50"
    """Backbone name (see `xray models`)."""
    weights: str = "imagenet"
    """"imagenet", "none" (random init) or a path to a state dict."""
    freeze: str = "none"
    """"none", "head-only", or a stage name: freeze the backbone up to it (inclusive)."""
    image_size: int = 224
    """Crop side in pixels."""
    augment: bool = True
    """Mild rotation, scale and brightness changes on train images."""
    hflip: bool = False
    """Also flip train images horizontally (off: anatomy is not left-right symmetric)."""
    workers: int | None = None
    """Image decoders: threads of the process on CPU, loader processes on a GPU; None: one
    thread on CPU, cores - 1 processes (at most 8) on a GPU."""
    seeds: int = 1
    """Repeats with seeds train.seed, train.seed + 1, ..."""
    labels: Literal["as-given", "kermany3"] = "as-given"
    """Label scheme (`LabelScheme`): `kermany3` fine-tunes the three-class Kermany task."""
    uncertain: Literal["zeros", "ones", "ignore"] = "ignore"
    """Multi-label data: uncertain (-1) labels as absent, present, or masked (`Uncertain`)."""
    pixel_cache_gb: float = PIXEL_CACHE_GB
    """Limit of the shared pixel cache (`<cache>/.pixels`, as `extract`'s) in GB: the first
    epoch reads images an extraction at the same resize already decoded; 0 turns it off."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=10, batch_size=32, patience=3, backbone_lr_mult=0.1
        )
    )
    """The trainer's settings (few, expensive epochs; the backbone at a tenth of the lr)."""


@dataclass(frozen=True)
class CompareConfig:
    """How runs are compared (`xray compare`)."""

    n_boot: int = 2000
    """Bootstrap resamples per interval and per paired test."""
    resample: Literal["patients", "images"] = "patients"
    """Bootstrap unit: "patients" (all images of a sampled patient together) or "images"."""
    alpha: float = 0.05
    """1 - confidence level of the intervals."""
    seed: int = 0
    """Seed of the bootstrap resamples."""
    allow_different_test: bool = False
    """Compare runs evaluated on different test sets (paired tests are then skipped)."""
    min_units_per_class: int = 5
    """An interval is marked unreliable when a class its metric conditions on has fewer
    resampling units (patients, or images with --resample images) than this in the test set,
    or when more than 1% of its resamples were undefined: with 4 patients or fewer a resample
    misses the class often and the percentile interval collapses onto a few values."""

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_UNITS:
            raise XrayError(f"--resample must be patients or images, got {self.resample!r}")
        if self.n_boot < 100:
            raise XrayError(f"--bootstrap needs at least 100 resamples, got {self.n_boot}")
        if not 0.0 < self.alpha < 0.5:
            raise XrayError(f"alpha must lie in (0, 0.5), got {self.alpha}")


@dataclass(frozen=True)
class EvaluateConfig:
    """External validation (`xray evaluate`): a trained run scored on another dataset."""

    split: Literal["train", "val", "test"] = "test"
    """The other dataset's split that is scored (and reported)."""
    threshold_policy: str | None = None
    """None: the run's own threshold. A policy (as `--threshold`): chosen again on the run's
    validation predictions, or on the local calibration patients with `recalibrate`."""
    recalibrate: int = 0
    """Patients of the evaluated split taken out (seeded) to refit the recalibration and the
    threshold on the other site's data; 0: the run's own, fitted on its validation set."""
    n_boot: int = 2000
    """Bootstrap resamples per interval."""
    alpha: float = 0.05
    """1 - confidence level of the intervals."""
    seed: int = 0
    """Seed of the bootstrap and of the calibration patients."""
    batch_size: int = 32
    """Images per forward pass."""
    workers: int | None = None
    """Decoding processes of extraction (frozen runs); None: as `xray extract` chooses."""
    device: DeviceName = "auto"
    """"auto" uses CUDA when available."""
    out_dir: Path = Path("evaluations")
    """Where evaluation folders are written (compare reads them like runs)."""
    store_dir: Path = Path("evaluations/stores")
    """Feature stores of external datasets (kept apart from cache/, which fit-head trains on)."""
    labels: str | None = None
    """How the other dataset's labels are read (`LabelScheme`, as `--labels`); None: the run's
    own scheme (a Kermany-3 run relabels a NORMAL/PNEUMONIA dataset by itself)."""
    uncertain: str | None = None
    """Multi-label runs: what the other dataset's uncertain (-1) labels become (`Uncertain`);
    None: as the run's training read them."""

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels not in LABEL_SCHEMES:
            raise XrayError(
                f"--labels must be one of {', '.join(LABEL_SCHEMES)}, got {self.labels!r}"
            )
        if self.uncertain is not None and self.uncertain not in UNCERTAIN_POLICIES:
            policies = ", ".join(UNCERTAIN_POLICIES)
            raise XrayError(f"--uncertain must be one of {policies}, got {self.uncertain!r}")
        if self.split not in ("train", "val", "test"):
            raise XrayError(f"--split must be train, val or test, got {self.split!r}")
        if self.threshold_policy is not None:
            parse_threshold_policy(self.threshold_policy)
        if self.recalibrate < 0:
            raise XrayError(f"--recalibrate must be 0 or more patients, got {self.recalibrate}")
        if self.n_boot < 100:
            raise XrayError(f"--bootstrap needs at least 100 resamples, got {self.n_boot}")
        if not 0.0 < self.alpha < 0.5:
            raise XrayError(f"alpha must lie in (0, 0.5), got {self.alpha}")
        if self.batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise XrayError(f"--device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class ExportConfig:
    """`xray export`: a run's whole model as one file, checked against predictions.csv."""

    format: Literal["onnx"] = "onnx"
    """ONNX (opset 17): backbone + head + recalibration + threshold, preprocessing as metadata."""
    check: bool = True
    """Run the exported file on the run's test images and compare with predictions.csv."""
    batch_size: int = 32
    """Images per forward pass of the check."""


@dataclass(frozen=True)
class StudyConfig:
    """The study behind `xray demo`; the defaults finish in minutes on a 2-core CPU."""

    models: tuple[str, ...] = ("resnet50", "densenet121")
    """Backbones compared, each frozen (extract + head) and fine-tuned."""
    weights: str = "auto"
    """"auto" (ImageNet when every model's file is in the torch hub cache, else random
    init with a banner), "imagenet", "none" or a state-dict path."""
    image_size: int = 64
    """Input size of both modes (224 with --full)."""
    head: Literal["linear", "mlp", "logreg"] = "linear"
    """Head of the frozen mode: linear, mlp or logreg."""
    head_epochs: int = 60
    """Epochs of the head (early stopping usually ends it sooner)."""
    finetune_epochs: int = 2
    """Epochs of fine-tuning."""
    finetune_batch_size: int = 16
    """Batch size of fine-tuning."""
    seeds: int = 1
    """Repeats of each training with seeds 0..seeds-1 (compare reports mean and spread)."""
    workers: int | None = None
    """DataLoader workers for extraction and fine-tuning; None: as `xray extract` chooses."""
    n_boot: int = 1000
    """Bootstrap resamples of the comparison."""
    task: Literal["binary", "multiclass", "multilabel"] = "binary"
    """What is studied (`--task`); `multiclass` reads Kermany-layout data as three classes,
    `multilabel` a findings CSV (the built-in one by default)."""
    labels: Literal["as-given", "kermany3"] = "as-given"
    """Label scheme (`LabelScheme`): `kermany3` makes it the three-class study."""
    sweeps: bool = True
    """Also show a head sweep and a label-efficiency curve per backbone (frozen mode)."""
    precision: PrecisionName | None = None
    """What every arm's backbone computes in (extraction and training); None: auto."""
    sweep: SweepConfig = field(
        default_factory=lambda: SweepConfig(
            lrs=(1e-4, 1e-3, 1e-2), weight_decays=(0.0, 1e-4, 1e-2), heads=("linear",)
        )
    )
    """The demo's small grid: 3 lr x 3 weight decays = 9 linear heads in one module (MLP
    members multiply the cost by the hidden width; `xray fit-head --sweep default` has them)."""
    train_fractions: tuple[float, ...] = (0.25, 0.5)
    """Label-efficiency subsets of train; the head on all of train is the curve's last point."""

    def __post_init__(self) -> None:
        if any(not 0.0 < f < 1.0 for f in self.train_fractions):
            raise XrayError(f"study train fractions must lie in (0, 1), got {self.train_fractions}")
        if not self.models:
            raise XrayError("the study needs at least one model")
        if self.image_size < 32:
            raise XrayError(f"--image-size must be at least 32, got {self.image_size}")
        if self.seeds < 1:
            raise XrayError(f"--seeds must be at least 1, got {self.seeds}")
        if self.head_epochs < 1 or self.finetune_epochs < 1:
            raise XrayError("epochs must be at least 1")

    def full_size(self) -> StudyConfig:
        """The hand-written study's scale: 224 px, longer training."""
        return replace(
            self, image_size=224, head_epochs=100, finetune_epochs=10, finetune_batch_size=32
        )


@dataclass(frozen=True)
class SynthConfig:
    """The built-in synthetic dataset (`xray data synth`): seeded phantom radiographs."""

    seed: int = 0
    """Same seed, same images."""
    patients: int = 120
    """Patients across all splits."""
    min_side: int = 192
    """Smallest image side in pixels (sizes vary per image, as in real radiographs)."""
    max_side: int = 320
    """Largest image side in pixels."""
    task: Literal["binary", "multiclass", "multilabel"] = "binary"
    """`multiclass`: bacterial pneumonia drawn lobar, viral patchy (read with --labels
    kermany3); `multilabel`: a findings CSV (`data.generate_synthetic_multilabel`)."""
