"""`xray demo`: the whole study (backbones x {frozen, fine-tuned} + compare) in one call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import XrayError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.compare import Comparison

Notice = Callable[[str], None]


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings; the defaults finish in minutes on a 2-core CPU."""

    models: tuple[str, ...] = ("resnet50", "densenet121")
    """Backbones compared, each frozen (extract + head) and fine-tuned."""
    weights: str = "auto"
    """"auto" (ImageNet when every model's file is in the torch hub cache, else random
    init with a banner), "imagenet", "none" or a state-dict path."""
    image_size: int = 64
    """Input size of both modes (224 with --full)."""
    head: str = "linear"
    """Head of the frozen mode: linear, mlp or logreg."""
    head_epochs: int = 60
    """Epochs of the head (early stopping usually ends it sooner)."""
    finetune_epochs: int = 2
    """Epochs of fine-tuning."""
    finetune_batch_size: int = 16
    """Batch size of fine-tuning."""
    seeds: int = 1
    """Repeats of each training with seeds 0..seeds-1 (compare reports mean and spread)."""
    workers: int = 0
    """DataLoader workers for extraction and fine-tuning."""
    n_boot: int = 1000
    """Bootstrap resamples of the comparison."""

    def __post_init__(self) -> None:
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
class StudyResult:
    """Where the study's runs and report are, and what it compared."""

    weights: str
    random_init: bool
    runs: list[Path]
    report: Path
    comparison: Comparison


def resolve_study_weights(models: tuple[str, ...], weights: str) -> str:
    """ "auto" -> "imagenet" when every model's ImageNet file is cached offline, else "none"."""
    from featurestore.models import imagenet_available

    if weights != "auto":
        return weights
    return "imagenet" if all(imagenet_available(m) for m in models) else "none"


def run_study(
    *,
    data: Path,
    config: StudyConfig,
    cache_dir: Path = Path("cache"),
    runs_dir: Path = Path("runs"),
    reports_dir: Path = Path("reports"),
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
) -> StudyResult:
    """Extract + fit a head and fine-tune each model, then compare the runs into one report."""
    from featurestore.compare import CompareConfig, compare_runs, write_report
    from featurestore.data import load_manifest
    from featurestore.store import extract_features, open_store
    from featurestore.train import TrainConfig, finetune, fit_head_on_store

    say = notice or (lambda _msg: None)
    weights = resolve_study_weights(config.models, config.weights)
    random_init = weights == "none"
    if random_init:
        say(
            "ImageNet weights are not in the torch hub cache: this study uses RANDOMLY "
            "INITIALISED backbones. It checks the pipeline end to end; its numbers say nothing "
            "about pretrained transfer. Put the weights in the cache (see `xray models`) for "
            "a real study."
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    study_runs = runs_dir / f"study-{stamp}"
    manifest = load_manifest(data)
    run_paths: list[Path] = []
    for model in config.models:
        result = extract_features(
            manifest,
            model=model,
            weights=weights,
            cache_dir=cache_dir,
            image_size=config.image_size,
            workers=config.workers,
            progress=progress,
            notice=say,
        )
        say(f"{model}: store {result.path} ({result.status})")
        # extract_features just checked the store against this manifest: no second hashing.
        store = open_store(result.path)
        for seed in range(config.seeds):
            head_cfg = TrainConfig(epochs=config.head_epochs, seed=seed)
            summary = fit_head_on_store(
                store,
                head=config.head,
                config=head_cfg,
                runs_dir=study_runs,
                progress=progress,
                console=console,
            )
            run_paths.append(summary.path)
            ft_cfg = TrainConfig(
                epochs=config.finetune_epochs,
                batch_size=config.finetune_batch_size,
                patience=max(2, config.finetune_epochs // 3),
                backbone_lr_mult=0.1,
                seed=seed,
            )
            summary = finetune(
                data=data,
                model=model,
                weights=weights,
                image_size=config.image_size,
                workers=config.workers,
                runs_dir=study_runs,
                config=ft_cfg,
                progress=progress,
                console=console,
                notice=say,
                manifest=manifest,
                fingerprint=str(store.attrs["dataset_fingerprint"]),
            )
            run_paths.append(summary.path)
    comparison = compare_runs(run_paths, CompareConfig(n_boot=config.n_boot))
    report = write_report(comparison, reports_dir / f"study-{stamp}")
    return StudyResult(weights, random_init, run_paths, report, comparison)
