"""One library function per training command: `fit_heads` (frozen mode) and `finetune`."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore import library_versions
from featurestore.data import SPLITS
from featurestore.errors import XrayError
from featurestore.trainer import TrainConfig

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from torch import nn

    from featurestore.sources import FeatureSource
    from featurestore.store import FeatureStore
    from featurestore.trainer import FitResult

Notice = Callable[[str], None]


@dataclass(frozen=True)
class RunSummary:
    """What a training command reports: where the run is and its test metrics."""

    path: Path
    model: str
    mode: str
    head: str
    threshold: float
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    test: dict[str, Any]
    """{"at_0.5": {...}, "at_threshold": {...}} as in metrics.json."""


def _summary(path: Path, model: str, mode: str, head: str, result: FitResult) -> RunSummary:
    return RunSummary(
        path=path,
        model=model,
        mode=mode,
        head=head,
        threshold=float(result.threshold["value"]),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds_per_epoch=result.seconds_per_epoch,
        test=result.test,
    )


def class_counts(
    class_names: Sequence[str], labels: dict[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Images per split and class (config.json; compare's majority baseline uses train's)."""
    return {
        split: {name: int(np.sum(y == i)) for i, name in enumerate(class_names)}
        for split, y in labels.items()
    }


def _run_config(
    config: TrainConfig, model: nn.Module, *, mode: str, backbone: str, head: str, **extra: Any
) -> dict[str, Any]:
    """config.json: the resolved TrainConfig plus what identifies the run."""
    from featurestore.heads import count_params

    trainable, total = count_params(model)
    names = list(extra.pop("class_names"))
    pos = int(extra.pop("positive_index"))
    return {
        **asdict(config),
        "mode": mode,
        "model": backbone,
        "head": head,
        "seed": config.seed,
        "versions": library_versions(),
        "class_names": names,
        "positive_index": pos,
        "positive_class": names[pos],
        "trainable_params": trainable,
        "total_params": total,
        **extra,
    }


def select_stores(
    *, cache_dir: Path, model: str | None, store: Path | None, data: Path | None
) -> list[Path]:
    """The stores `fit-head` trains on: --store, else the cache's complete stores (of --model)."""
    from featurestore.store import find_stores, read_attrs

    if model is not None and store is not None:
        raise XrayError("pass either --model or --store, not both")
    if store is not None:
        return [Path(store)]
    paths = find_stores(cache_dir)
    if data is not None:
        # Stores live in cache/<dataset name>/: keep the given dataset's folder only.
        paths = [p for p in paths if p.parent.name == _dataset_name(data)]
    if model is not None:
        paths = [p for p in paths if read_attrs(p).get("backbone") == model]
    if not paths:
        what = f" for {model}" if model else ""
        hint = model or "resnet50"
        raise XrayError(
            f"no complete feature store{what} in {cache_dir}: run `xray extract --model {hint}` "
            "first (or pass --store FILE)"
        )
    return paths


def _dataset_name(data: Path) -> str:
    """The folder name `xray extract` files this dataset's stores under."""
    from featurestore.data import load_manifest

    manifest = load_manifest(data)
    return manifest.name or manifest.root.stem


def open_checked_store(
    path: Path,
    *,
    data: Path | None,
    progress: Progress | None,
    notice: Notice,
    fingerprints: dict[Path, str] | None = None,
) -> FeatureStore:
    """open_store, checked against its dataset (--data, else the recorded root) when present.

    `fingerprints` memoises dataset fingerprints (they hash every file) across stores.
    """
    from featurestore.data import dataset_fingerprint, load_manifest
    from featurestore.store import open_store, read_attrs

    if not Path(path).is_file():
        raise XrayError(f"no feature store at {path}: run `xray extract` first")
    attrs = read_attrs(path)
    # dataset_path is the CSV itself for CSV datasets (dataset_root is its folder).
    recorded = str(attrs.get("dataset_path") or attrs.get("dataset_root") or "")
    root = data if data is not None else Path(recorded)
    if data is None and (not recorded or not root.exists()):
        notice(f"dataset of {path.name} not found ({root}): its freshness is not checked")
        return open_store(path)
    memo = fingerprints if fingerprints is not None else {}
    key = root.resolve()
    if key not in memo:
        # The fingerprint covers files, labels and given splits, not the validation carving.
        memo[key] = dataset_fingerprint(load_manifest(root), progress=progress)
    return open_store(path, expect_fingerprint=memo[key])


def fit_heads(
    *,
    model: str | None = None,
    store: Path | None = None,
    data: Path | None = None,
    cache_dir: Path = Path("cache"),
    runs_dir: Path = Path("runs"),
    head: str = "linear",
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
) -> list[RunSummary]:
    """Train a head on each selected feature store (all complete ones by default); one run each."""
    from featurestore.heads import HEAD_KINDS

    config = config or TrainConfig()
    say = notice or (lambda _msg: None)
    if head not in HEAD_KINDS:
        raise XrayError(f"unknown --head {head!r}; choose one of: {', '.join(HEAD_KINDS)}")
    paths = select_stores(cache_dir=cache_dir, model=model, store=store, data=data)
    # Check every store before training any: a stale one stops the command up front.
    memo: dict[Path, str] = {}
    stores = [
        open_checked_store(p, data=data, progress=progress, notice=say, fingerprints=memo)
        for p in paths
    ]
    return [
        fit_head_on_store(s, head=head, config=config, runs_dir=runs_dir, progress=progress,
                          console=console)
        for s in stores
    ]  # fmt: skip


def fit_head_on_store(
    store: FeatureStore,
    *,
    head: str,
    config: TrainConfig,
    runs_dir: Path,
    progress: Progress | None = None,
    console: Console | None = None,
) -> RunSummary:
    """Frozen mode: a head on one store's cached features; writes and returns its run folder."""
    import torch

    from featurestore.sources import FeatureSource

    torch.manual_seed(config.seed)
    source = FeatureSource.from_store(store, batch_size=config.batch_size, seed=config.seed)
    with one_thread_on_cpu(config.device):
        return _fit_head(store, source, head=head, config=config, runs_dir=runs_dir,
                         progress=progress, console=console)  # fmt: skip


@contextmanager
def one_thread_on_cpu(device: str) -> Iterator[None]:
    """Heads on cached features run on one CPU thread.

    Their matmuls are tiny ((256, D) x (D, 2)): a second thread only adds synchronisation,
    measured 0.13 s vs 0.9 s per Kermany-sized epoch on a busy 2-core machine.
    """
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_head(
    store: FeatureStore,
    source: FeatureSource,
    *,
    head: str,
    config: TrainConfig,
    runs_dir: Path,
    progress: Progress | None,
    console: Console | None,
) -> RunSummary:

    from featurestore.heads import build_head, export_head, fit_logreg
    from featurestore.runs import write_run
    from featurestore.trainer import conclude, fit

    if console is not None:
        console.print(
            f"[bold]{store.backbone}[/] frozen, {head} head on {store.path} "
            f"({source.feature_dim} features)"
        )
    extra: dict[str, Any] = {}
    if head == "logreg":
        began = time.perf_counter()
        logreg = fit_logreg(source, seed=config.seed, balanced=config.class_weight == "balanced")
        net: nn.Module = logreg.head
        best = next(int(r["epoch"]) for r in logreg.history if r["lr"] == logreg.C)
        result = conclude(
            net,
            source,
            config,
            best_state={k: v.clone() for k, v in net.state_dict().items()},
            history=logreg.history,
            best_epoch=best,
            stopped_early=False,
            seconds_per_epoch=(time.perf_counter() - began) / len(logreg.history),
        )
        extra = {"logreg_C": logreg.C, "history_rows": "one per C tried; the lr column holds C"}
    else:
        net = build_head(head, source.feature_dim, len(source.class_names))
        result = fit(net, source, config, run_dir=None, progress=progress, console=console)
    exported = export_head(net.cpu(), source.mean, source.std)
    doc = _run_config(
        config,
        net,
        mode="frozen",
        backbone=store.backbone,
        head=head,
        class_names=store.class_names,
        positive_index=store.positive_index,
        dataset_fingerprint=store.attrs.get("dataset_fingerprint"),
        store={"path": str(store.path), **store.attrs},
        extraction_seconds=store.attrs.get("extraction_seconds"),
        class_counts=class_counts(
            store.class_names, {s: store.split(s).labels for s in store.counts}
        ),
        checkpoint="best.pt: standardize.{mean,std} then head.* over backbone features",
        **extra,
    )
    path = write_run(
        runs_dir, model=store.backbone, mode="frozen", config=doc, result=result,
        state_dict=exported.state_dict(),
    )  # fmt: skip
    return _summary(path, store.backbone, "frozen", head, result)


def finetune(
    *,
    data: Path,
    model: str = "resnet50",
    weights: str = "imagenet",
    freeze: str = "none",
    image_size: int = 224,
    augment: bool = True,
    hflip: bool = False,
    workers: int = 0,
    runs_dir: Path = Path("runs"),
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
) -> RunSummary:
    """Fine-tune backbone + linear head on streamed images; resumable from runs/.inprogress.

    Under torchrun (a process group set up by the caller) it trains with DDP, `batch_size`
    per rank; rank 0 alone writes the checkpoint and the run folder, whose path every rank gets.
    """
    import torch

    from featurestore import distributed
    from featurestore.backbones import load_backbone, preprocessing_for
    from featurestore.data import dataset_fingerprint, load_manifest
    from featurestore.heads import TrunkHead, apply_freeze, build_head
    from featurestore.runs import inprogress_dir, write_run
    from featurestore.sources import ImageSource
    from featurestore.trainer import fit, resolve_device

    config = config or TrainConfig(epochs=10, batch_size=32, patience=3, backbone_lr_mult=0.1)
    say = notice or (lambda _msg: None)
    manifest = load_manifest(data)
    fingerprint = distributed.on_main(lambda: dataset_fingerprint(manifest, progress=progress))
    torch.manual_seed(config.seed)  # random-init trunks and the head repeat per seed
    loaded = load_backbone(model, weights)
    pre = preprocessing_for(model, weights, image_size)
    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, 2))
    apply_freeze(net, loaded.spec.stages, freeze)
    source = ImageSource(
        manifest,
        pre,
        batch_size=config.batch_size,
        workers=workers,
        seed=config.seed,
        augment=augment,
        hflip=hflip,
        pin_memory=resolve_device(config.device).type == "cuda",
    )
    settings = {
        **{k: v for k, v in asdict(config).items() if k != "device"},
        "weights_id": loaded.weights_id,
        "weights_sha256": loaded.weights_sha256,
        "freeze": freeze,
        "preprocessing": pre.as_dict(),
        "augment": augment,
        "hflip": hflip,
        "dataset_fingerprint": fingerprint,
    }
    work = inprogress_dir(runs_dir, model, "finetune", settings)
    checkpoint = work / "last.pt"

    def settle_work() -> None:  # rank 0 only: one process owns runs/.inprogress
        if resume and not checkpoint.is_file():
            raise XrayError(
                f"nothing to resume: no interrupted run with these settings in {work.parent}; "
                "run again without --resume"
            )
        if not resume and work.exists():
            say(
                f"starting over: an interrupted run with these settings was in {work} "
                "(see --resume)"
            )
            shutil.rmtree(work)

    distributed.on_main(settle_work)
    if console is not None and distributed.is_main():
        verb = "resuming" if resume else "fine-tuning"
        console.print(
            f"[bold]{model}[/] {verb} ({loaded.weights_id}, freeze {freeze}, "
            f"{image_size}px) on {manifest.root}"
        )
    result = fit(
        net, source, config, run_dir=work, progress=progress, console=console,
        resume_from=checkpoint if resume else None,
    )  # fmt: skip
    doc = _run_config(
        config,
        net,
        mode="finetune",
        backbone=model,
        head="linear",
        class_names=manifest.class_names,
        positive_index=manifest.positive_index,
        dataset_fingerprint=fingerprint,
        dataset_root=str(manifest.root),
        class_counts=class_counts(
            manifest.class_names,
            {s: np.array([r.label for r in manifest.split(s)]) for s in SPLITS},
        ),
        carve=manifest.carve.as_dict() if manifest.carve else None,
        weights=weights,
        weights_id=loaded.weights_id,
        weights_sha256=loaded.weights_sha256,
        freeze=freeze,
        image_size=image_size,
        preprocessing=pre.as_dict(),
        augment=augment,
        hflip=hflip,
        workers=workers,
        resumed=resume,
        world_size=distributed.world_size(),
        checkpoint="best.pt: trunk.* (backbone) then head.*",
    )

    def write() -> Path:
        path = write_run(runs_dir, model=model, mode="finetune", config=doc, result=result)
        shutil.rmtree(work, ignore_errors=True)
        return path

    path = distributed.on_main(write)  # one run folder, written by rank 0
    return _summary(path, model, "finetune", "linear", result)
