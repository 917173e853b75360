"""`xray demo`: the whole study (backbones x {frozen, fine-tuned} + compare) in one call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.config import FinetuneConfig, FitHeadConfig, StudyConfig, seeded

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.compare import Comparison, MulticlassComparison, MultilabelComparison

Notice = Callable[[str], None]


@dataclass(frozen=True)
class StudyResult:
    """Where the study's runs and report are, and what it compared."""

    weights: str
    random_init: bool
    runs: list[Path]
    report: Path
    comparison: Comparison | MulticlassComparison | MultilabelComparison
    """Binary runs: Comparison; multi-class runs (`labels="kermany3"`): MulticlassComparison."""


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
    from featurestore.train import finetune, fit_head_on_store

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
    manifest = load_manifest(data, labels=config.labels)
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
        head_base = replace(FitHeadConfig().train, epochs=config.head_epochs)
        ft_base = replace(
            FinetuneConfig().train,
            epochs=config.finetune_epochs,
            batch_size=config.finetune_batch_size,
            patience=max(2, config.finetune_epochs // 3),
        )
        for head_cfg, ft_cfg in zip(
            seeded(head_base, config.seeds), seeded(ft_base, config.seeds), strict=True
        ):
            summary = fit_head_on_store(
                store,
                head=config.head,
                config=head_cfg,
                runs_dir=study_runs,
                progress=progress,
                console=console,
            )
            run_paths.append(summary.path)
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
    out = reports_dir / f"study-{stamp}"
    if manifest.task == "multilabel":
        from featurestore.compare import compare_multilabel_runs, write_multilabel_report

        tagged = compare_multilabel_runs(run_paths, CompareConfig(n_boot=config.n_boot))
        return StudyResult(
            weights, random_init, run_paths, write_multilabel_report(tagged, out), tagged
        )
    if manifest.task == "multiclass":
        from featurestore.compare import compare_multiclass_runs, write_multiclass_report

        multi = compare_multiclass_runs(run_paths, CompareConfig(n_boot=config.n_boot))
        return StudyResult(
            weights, random_init, run_paths, write_multiclass_report(multi, out), multi
        )
    comparison = compare_runs(run_paths, CompareConfig(n_boot=config.n_boot))
    report = write_report(comparison, out)
    return StudyResult(weights, random_init, run_paths, report, comparison)
