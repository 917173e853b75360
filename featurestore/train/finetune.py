"""Fine-tune mode (`xray finetune`): backbone + linear head trained on streamed images."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.config import FinetuneConfig, TrainConfig
from featurestore.data import SPLITS
from featurestore.errors import XrayError
from featurestore.runs import (
    TRAIN_SUBSET_FILE,
    Notice,
    RunSummary,
    class_counts,
    run_config,
    summarize,
    train_size,
    write_train_subset,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.data import Manifest, Record

_FT = FinetuneConfig()


def finetune(
    *,
    data: Path,
    model: str = _FT.model,
    weights: str = _FT.weights,
    freeze: str = _FT.freeze,
    image_size: int = _FT.image_size,
    augment: bool = _FT.augment,
    hflip: bool = _FT.hflip,
    workers: int | None = _FT.workers,
    runs_dir: Path = Path("runs"),
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
    manifest: Manifest | None = None,
    fingerprint: str | None = None,
    labels: str = "as-given",
    uncertain: str = "ignore",
    train_fraction: float | None = None,
    shots: int | None = None,
    pixel_cache_dir: Path | None = None,
    pixel_cache_gb: float = _FT.pixel_cache_gb,
) -> RunSummary:
    """Fine-tune backbone + linear head on streamed images; resumable from runs/.inprogress.

    A caller that already read `data` (the study) passes its `manifest` and `fingerprint`,
    so the dataset is not listed and hashed again. Under torchrun (a process group set up by
    the caller) it trains with DDP, `batch_size` per rank; rank 0 alone writes the checkpoint
    and the run folder, whose path every rank gets. `labels` is the label scheme
    (`data.LabelScheme`: `kermany3` makes Kermany a three-class task); the head has one output
    per class (per finding for multi-label data, whose uncertain labels follow `uncertain`).
    `train_fraction` / `shots` train on that label-efficiency subset of the train patients
    (`featurestore.data.train_subsets`, drawn with `config.seed`); validation and test are
    untouched.
    `workers` decode images: as threads of this process on CPU, as DataLoader processes on
    CUDA. `pixel_cache_dir` (xray's cache folder) holds the pixel cache shared with
    `extract` (at most `pixel_cache_gb` GB; None or 0: off).
    """
    import torch

    from featurestore import distributed
    from featurestore.data import dataset_fingerprint, load_manifest
    from featurestore.data.pixel_cache import open_pixel_cache
    from featurestore.devices import amp_dtype, precision_name, resolve_device
    from featurestore.models import (
        TrunkHead,
        apply_freeze,
        build_head,
        load_backbone,
        preprocessing_for,
    )
    from featurestore.runs import inprogress_dir, write_run
    from featurestore.store import default_workers
    from featurestore.train.image_source import ImageSource
    from featurestore.train.loop import fit

    config = config or _FT.train
    device = resolve_device(config.device)
    if workers is None:  # a GPU: its free cores as loader processes; a CPU: one thread
        workers = default_workers(device.type) if device.type == "cuda" else 1
    say = notice or (lambda _msg: None)
    full = manifest or load_manifest(data, labels=labels, uncertain=uncertain)
    if fingerprint is None:
        fingerprint = distributed.on_main(lambda: dataset_fingerprint(full, progress=progress))
    # The fingerprint above is the whole dataset's: a subset run still belongs to it.
    manifest, subset = manifest_train_subset(full, train_fraction, shots, seed=config.seed)
    for note in subset.get("subset_notes", []):
        say(note)
    # What forward and backward compute in (config.precision resolved on this machine).
    resolved = precision_name(amp_dtype(config.amp, device, config.precision))
    torch.manual_seed(config.seed)  # random-init trunks and the head repeat per seed
    loaded = load_backbone(model, weights)
    pre = preprocessing_for(model, weights, image_size)
    n_classes = len(manifest.class_names)  # one output per class: 2 (binary) or N (multi-class)
    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, n_classes))
    apply_freeze(net, loaded.spec.stages, freeze)
    source = ImageSource(
        manifest,
        pre,
        batch_size=config.batch_size,
        # On CPU the `workers` decode in threads beside torch's (forked workers beside two
        # torch threads held uncached epochs to 0.75 of bare training on 2 cores, and one
        # thread decodes faster than the model trains); a GPU's free cores get processes.
        workers=workers if device.type == "cuda" else 0,
        threads=0 if device.type == "cuda" else workers,
        seed=config.seed,
        augment=augment,
        hflip=hflip,
        pin_memory=device.type == "cuda",
        pixel_cache=open_pixel_cache(pixel_cache_dir, pre, pixel_cache_gb),
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
        **subset,
        "resolved_precision": resolved,
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
            f"{image_size}px, {resolved}) on {manifest.root}"
        )
    result = fit(
        net, source, config, run_dir=work, progress=progress, console=console,
        resume_from=checkpoint if resume else None,
    )  # fmt: skip
    doc = run_config(
        config,
        net,
        mode="finetune",
        backbone=model,
        head="linear",
        class_names=manifest.class_names,
        positive_index=manifest.positive_index,
        dataset_fingerprint=fingerprint,
        dataset_root=str(manifest.root),
        label_scheme=manifest.label_scheme,
        task=manifest.task,
        class_counts=class_counts(
            manifest.class_names,
            {s: np.array([_target(r) for r in manifest.split(s)]) for s in SPLITS},
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
        resolved_precision=resolved,
        workers=workers,
        resumed=resume,
        world_size=distributed.world_size(),
        checkpoint="best.pt: trunk.* (backbone) then head.*",
        **{**train_size([r.group for r in manifest.split("train")]), **subset},
    )
    folder_model = f"{model}-{subset['subset_tag']}" if subset else model

    train = manifest.split("train")

    def subset_file(folder: Path) -> None:
        multilabel = manifest.task == "multilabel"
        labels = [r.targets if multilabel else r.label for r in train]
        write_train_subset(folder / TRAIN_SUBSET_FILE, [r.key for r in train],
                           [r.group for r in train], labels,
                           findings=manifest.class_names if multilabel else None)  # fmt: skip

    def write() -> Path:
        path = write_run(runs_dir, model=folder_model, mode="finetune", config=doc, result=result,
                         extra=subset_file if subset else None)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty runs/.inprogress behind
            work.parent.rmdir()  # fails, as it should, while other runs are in progress
        return path

    path = distributed.on_main(write)  # one run folder, written by rank 0
    return summarize(path, model, "finetune", "linear", result)


def _target(record: Record) -> Any:
    """The class index, or the per-finding targets of a multi-label record."""
    return record.label if record.targets is None else record.targets


def manifest_train_subset(
    manifest: Manifest, fraction: float | None, shots: int | None, *, seed: int
) -> tuple[Manifest, dict[str, Any]]:
    """The manifest with train cut to a label-efficiency subset, and what config.json records."""
    from dataclasses import replace

    from featurestore.data import train_subsets

    if fraction is None and shots is None:
        return manifest, {}
    train = manifest.split("train")
    multilabel = any(r.targets is not None for r in train)
    (sub,) = train_subsets(
        [r.group for r in train],
        # Multi-label: (N, L) targets, subset by `featurestore.data.multilabel_subsets`.
        np.array([r.targets if multilabel else r.label for r in train], dtype=np.float64)
        if multilabel
        else np.array([r.label for r in train]),
        fractions=() if fraction is None else (fraction,),
        shots=() if shots is None else (shots,),
        seed=seed,
        names=manifest.class_names,
    )
    keep = {train[i].key for i in sub.indices}
    records = tuple(r for r in manifest.records if r.split != "train" or r.key in keep)
    info = {
        "train_fraction": sub.fraction,
        "shots": sub.shots,
        "train_images": len(sub.indices),
        "train_patients": sub.patients,
        "subset_seed": seed,
        "subset_tag": sub.tag,
        **sub.task_record(),
    }
    return replace(manifest, records=records), info
