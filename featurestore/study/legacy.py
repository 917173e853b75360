"""`xray demo`: the whole study (backbones x {frozen, fine-tuned} + compare) in one call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.config import FinetuneConfig, FitHeadConfig, StudyConfig, TrainConfig, seeded

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
    commands: list[str] = field(default_factory=list)
    """The same study as step-by-step commands (study_commands)."""


def study_commands(
    *,
    data: Path,
    config: StudyConfig,
    weights: str,
    cache_dir: Path,
    study_runs: Path,
    stores: dict[str, Path],
) -> list[str]:
    """The commands that repeat the study step by step, with the settings it used.

    Every setting the study changes from a command's own default is spelled out (image size,
    epochs, fine-tune batch size and patience, weights, seeds, workers), so running these gives
    the same runs (on CPU, byte for byte) in `study_runs`, and `xray compare` the same table.
    """
    ft = _finetune_train(config)
    common = f"--data {data}" + (
        f" --labels {config.labels}" if config.labels != "as-given" else ""
    )
    seeds = f" --seeds {config.seeds}" if config.seeds > 1 else ""
    workers = f" --workers {config.workers}" if config.workers is not None else ""
    out = []
    for model in config.models:
        out.append(
            f"xray extract --model {model} --weights {weights} --image-size {config.image_size} "
            f"{common} --cache {cache_dir}{workers}"
        )
        out.append(
            f"xray fit-head --store {stores[model]} --head {config.head} "
            f"--epochs {config.head_epochs} --runs {study_runs}{seeds}"
        )
        if config.sweeps and config.task == "binary":
            g = config.sweep
            grid = (
                f"lr={','.join(f'{v:g}' for v in g.lrs)} "
                f"wd={','.join(f'{v:g}' for v in g.weight_decays)} head={','.join(g.heads)}"
            )
            head_run = (
                f"xray fit-head --store {stores[model]} --head {config.head} "
                f"--epochs {config.head_epochs} --runs {study_runs}{seeds}"
            )
            out.append(f'{head_run} --sweep "{grid}"')
            fractions = ",".join(f"{f:g}" for f in config.train_fractions)
            out.append(f"{head_run} --train-fraction {fractions}")
        out.append(
            f"xray finetune --model {model} --weights {weights} --image-size "
            f"{config.image_size} --epochs {ft.epochs} --batch-size {ft.batch_size} "
            f"--patience {ft.patience} {common} --runs {study_runs}{seeds}{workers}"
        )
    out.append(f"xray compare {study_runs} --bootstrap {config.n_boot}")
    return out


def _finetune_train(config: StudyConfig) -> TrainConfig:
    """The fine-tune settings of the study: fewer epochs, a small batch, patience to match."""
    return replace(
        FinetuneConfig().train,
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch_size,
        patience=max(2, config.finetune_epochs // 3),
    )


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
    """Extract + fit a head and fine-tune each model, then compare the runs into one report.

    With `config.sweeps` each model's store also gets a head sweep and label-efficiency runs
    (`config.train_fractions`), so the report shows the sweep's pick and the curve.
    """
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
    stores: dict[str, Path] = {}
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
        stores[model] = result.path
        head_base = replace(FitHeadConfig().train, epochs=config.head_epochs)
        ft_base = _finetune_train(config)
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
            if config.sweeps and manifest.task == "binary":
                # The same store, two more questions: which head settings (one batched sweep),
                # and how many labels (nested patient subsets; the run above is all of train).
                swept = fit_head_on_store(
                    store, head=config.head, config=head_cfg, runs_dir=study_runs,
                    progress=progress, console=console, sweep=config.sweep,
                )  # fmt: skip
                run_paths.append(swept.path)
                for fraction in config.train_fractions:
                    subset = fit_head_on_store(
                        store, head=config.head, config=head_cfg, runs_dir=study_runs,
                        progress=progress, console=console, train_fraction=fraction,
                    )  # fmt: skip
                    run_paths.append(subset.path)
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
    commands = study_commands(
        data=data, config=config, weights=weights, cache_dir=cache_dir, study_runs=study_runs,
        stores=stores,
    )  # fmt: skip
    if manifest.task == "multilabel":
        from featurestore.compare import compare_multilabel_runs, write_multilabel_report

        tagged = compare_multilabel_runs(run_paths, CompareConfig(n_boot=config.n_boot))
        report = write_multilabel_report(tagged, out)
        return StudyResult(weights, random_init, run_paths, report, tagged, commands)
    if manifest.task == "multiclass":
        from featurestore.compare import compare_multiclass_runs, write_multiclass_report

        multi = compare_multiclass_runs(run_paths, CompareConfig(n_boot=config.n_boot))
        report = write_multiclass_report(multi, out)
        return StudyResult(weights, random_init, run_paths, report, multi, commands)
    comparison = compare_runs(run_paths, CompareConfig(n_boot=config.n_boot))
    report = write_report(comparison, out)
    return StudyResult(weights, random_init, run_paths, report, comparison, commands)
