"""Bench: fine-tune training images/s (ImageSource + trainer.fit) vs the bare forward+backward.

Run: .venv/bin/python bench/finetune.py [--quick] [--model resnet50] [--images 40] [--epochs 3]
Target: training images/s >= 0.8 x the bare forward+backward pass, on full-size JPEGs.

The real path is the library's: `ImageSource` (decode, augment, preprocess in loader workers)
feeding `trainer.fit` with a TrunkHead, as `xray finetune` runs it. Its training seconds per
epoch are the epoch's wall time minus the validation pass (timed around the source's val
batches). The bare side trains the same model on tensors decoded beforehand, same batch size,
loss, AdamW and gradient clipping, contiguous and channels_last (the trainer's format on CPU
and CUDA). First and later epochs are reported apart: epoch 1 decodes every JPEG into the
source's decoded-image cache, later epochs decode nothing; a run with the cache off
(`cache_mb=0`) shows what the cache saves. The loader profile times the source alone
(workers=0, one thread, no model): ms per image through the decode path and the cached path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import Timer, emit, environment, median, radiograph_dataset

TARGET_RATIO = 0.8


class TimedSource:
    """Wraps a Source: wall time of each val/test pass (data + forward) and, per training
    epoch, the seconds the trainer waited for batches and the seconds it spent on them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.class_names = inner.class_names
        self.positive_index = inner.positive_index
        self.batch_size = inner.batch_size
        self.streaming = inner.streaming
        self.train_size = inner.train_size
        self.steps_per_epoch = inner.steps_per_epoch
        self.eval_positions = inner.eval_positions
        self.eval_seconds: list[float] = []
        self.data_wait: list[float] = []
        self.step_seconds: list[float] = []

    def records(self, split: Any) -> Any:
        return self.inner.records(split)

    def batches(self, split: Any, *, shuffle: bool, epoch: int = 0) -> Iterator[Any]:
        if split == "train":
            wait = step = 0.0
            batches = iter(self.inner.batches(split, shuffle=shuffle, epoch=epoch))
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - began  # loader start-up and batches not ready
                if batch is None:
                    break
                began = time.perf_counter()
                yield batch
                step += time.perf_counter() - began  # the trainer's fwd+bwd+step on it
            self.data_wait.append(wait)
            self.step_seconds.append(step)
            return
        began = time.perf_counter()
        yield from self.inner.batches(split, shuffle=shuffle, epoch=epoch)
        self.eval_seconds.append(time.perf_counter() - began)


def real_path(
    data: Path,
    model: str,
    size: int,
    batch: int,
    epochs: int,
    workers: int,
    cache_mb: float,
    *,
    precision: str = "fp32",
    decode: str = "threads",
) -> dict[str, Any]:
    """Train with ImageSource + fit; training images/s per epoch."""
    import torch

    from featurestore.data import load_manifest
    from featurestore.models import (
        TrunkHead,
        apply_freeze,
        build_head,
        load_backbone,
        preprocessing_for,
    )
    from featurestore.train import ImageSource, TrainConfig, fit

    manifest = load_manifest(data, val_min=0)
    torch.manual_seed(0)
    loaded = load_backbone(model, "none")
    pre = preprocessing_for(model, "none", size)
    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, 2))
    apply_freeze(net, loaded.spec.stages, "none")
    # As `xray finetune` on CPU: the --workers decode in threads (or, to compare, processes).
    threads = workers if decode == "threads" else 0
    inner = ImageSource(
        manifest, pre, batch_size=batch, workers=workers - threads, threads=threads, seed=0,
        cache_mb=cache_mb,
    )  # fmt: skip
    source = TimedSource(inner)
    config = TrainConfig(
        epochs=epochs, patience=epochs, batch_size=batch, backbone_lr_mult=0.1, device="cpu",
        precision=precision,  # type: ignore[arg-type]
    )  # fmt: skip
    # Validation runs once per epoch and test once at the end, in that order.
    result = fit(net, source, config)
    train_rows = len(source.records("train")[0])
    per_epoch, profile = [], []
    for e, row in enumerate(result.history):
        train_s = row["seconds"] - source.eval_seconds[e]
        per_epoch.append(train_rows / train_s)
        wait, step = source.data_wait[e], source.step_seconds[e]
        profile.append(
            {
                "train_s": round(train_s, 2),
                "data_wait_s": round(wait, 2),
                "steps_s": round(step, 2),
                "rest_s": round(train_s - wait - step, 2),  # metrics, best-state copy, ...
            }
        )
    cached = len(inner.cache.entries) if inner.cache is not None else 0
    return {
        "train_rows": train_rows,
        "images_per_s": per_epoch,
        "cached_images": cached,
        "epoch_profile": profile,
        "steps_images_per_s": [train_rows / p["steps_s"] for p in profile],
    }


def loader_profile(data: Path, model: str, size: int, batch: int) -> dict[str, float]:
    """Milliseconds per training image of the source alone on one thread: decode vs cached."""
    import torch

    from featurestore.data import load_manifest
    from featurestore.models import preprocessing_for
    from featurestore.train import ImageSource

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        src = ImageSource(
            load_manifest(data, val_min=0), preprocessing_for(model, "none", size), batch_size=batch
        )
        ms = []
        for epoch in (1, 2):  # epoch 1 decodes and fills the cache, epoch 2 reads it
            with Timer() as t:
                n = sum(len(y) for _, y in src.batches("train", shuffle=True, epoch=epoch))
            ms.append(1000 * t.seconds / n)
    finally:
        torch.set_num_threads(threads)
    return {"decode_ms_per_image": round(ms[0], 2), "cached_ms_per_image": round(ms[1], 2)}


def bare_rate(
    data: Path,
    model: str,
    size: int,
    batch: int,
    channels_last: bool,
    repeats: int,
    precision: str = "fp32",
) -> float:
    """Training images/s of forward+backward+step on pre-decoded (B, 3, S, S) tensors."""
    import torch
    from torch import nn

    from featurestore.data import load_manifest
    from featurestore.models import TrunkHead, build_head, load_backbone, preprocessing_for
    from featurestore.train import TrainConfig, make_optimizer

    manifest = load_manifest(data, val_min=0)
    pre = preprocessing_for(model, "none", size)
    train = manifest.split("train")
    x = torch.stack([pre(manifest.open_image(r.key, min_size=pre.resize)) for r in train])
    y = torch.tensor([r.label for r in train])
    torch.manual_seed(0)
    loaded = load_backbone(model, "none")
    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, 2)).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, TrainConfig(backbone_lr_mult=0.1, device="cpu"))
    criterion = nn.CrossEntropyLoss()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # Whole batches only (the trainer drops only a lonely last sample).
    starts = [a for a in range(0, len(y), batch) if len(y) - a >= 2]

    bf16 = precision == "bf16"

    def forward(xb: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(xb).float()  # logits (B, 2), as the trainer computes them

    def epoch() -> None:
        for a in starts:
            loss = criterion(forward(x[a : a + batch]), y[a : a + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    step = starts[0]
    criterion(forward(x[step : step + batch]), y[step : step + batch]).backward()  # warm kernels
    rates = []
    for _ in range(repeats):
        with Timer() as t:
            epoch()
        rates.append(sum(min(batch, len(y) - a) for a in starts) / t.seconds)
    return median(rates)


def main() -> None:
    """Measure, print the table and the JSON line."""
    import torch

    from featurestore.devices import channels_last_for
    from featurestore.train import DEFAULT_CACHE_MB

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 64 px, 10 small images")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=40, help="dataset size (70%% train)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="as `xray finetune` (default 2)")
    parser.add_argument(
        "--no-uncached", action="store_true", help="skip the comparison run with the cache off"
    )
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (both sides)")
    parser.add_argument(
        "--decode", default="threads", help="threads (xray finetune on CPU) | processes"
    )
    args = parser.parse_args()
    from featurestore.devices import resolve_precision

    precision = resolve_precision(args.precision, torch.device("cpu"), cuda_auto="fp32")
    if args.quick:
        model, size, batch, epochs, workers = "resnet18", 64, 3, 2, 0
        data = radiograph_dataset(10, min_side=400, max_side=800)
    else:
        model, size, batch = args.model, args.size, args.batch_size
        epochs, workers = args.epochs, args.workers
        data = radiograph_dataset(args.images)
    uncached_too = not (args.quick or args.no_uncached)
    env = environment()
    trainer_cl = channels_last_for(torch.device("cpu"))
    # Side by side: bare (both formats), real path (cached, then uncached), bare again.
    bare_cf = [bare_rate(data, model, size, batch, False, 1, precision)]
    bare_cl = [bare_rate(data, model, size, batch, True, 1, precision)]
    how = {"precision": precision, "decode": args.decode}
    real = real_path(data, model, size, batch, epochs, workers, DEFAULT_CACHE_MB, **how)
    plain = real_path(data, model, size, batch, epochs, workers, 0, **how) if uncached_too else None
    if not args.quick:
        bare_cl.append(bare_rate(data, model, size, batch, True, 1, precision))
        bare_cf.append(bare_rate(data, model, size, batch, False, 1, precision))
    profile = loader_profile(data, model, size, batch)
    cf, cl = median(bare_cf), median(bare_cl)
    bare = cl if trainer_cl else cf
    first = real["images_per_s"][0]
    later = median(real["images_per_s"][1:]) if len(real["images_per_s"]) > 1 else first
    figures: dict[str, Any] = {
        "bare_contiguous_images_per_s": round(cf, 3),
        "bare_channels_last_images_per_s": round(cl, 3),
        "trainer_channels_last_on_cpu": trainer_cl,
        "first_epoch_images_per_s": round(first, 3),
        "later_epoch_images_per_s": round(later, 3),
        "first_epoch_ratio": round(first / bare, 3),
        "later_epoch_ratio": round(later / bare, 3),
        "later_epoch_ratio_vs_best_bare": round(later / max(cf, cl), 3),
        "loader_profile": profile,
    }
    fmt = "channels_last" if trainer_cl else "contiguous"
    rows: list[tuple[str, float, float, str]] = [
        ("bare fwd+bwd, contiguous", cf, cf / bare, "-"),
        ("bare fwd+bwd, channels_last", cl, cl / bare, "-"),
    ]

    def verdict(ratio: float) -> str:
        return "yes" if ratio >= TARGET_RATIO else "NO"

    rows += [
        (
            "finetune path, epoch 1 (decodes, fills cache)",
            first,
            first / bare,
            verdict(first / bare),
        ),
        (f"finetune path, epochs 2..{epochs} (cached)", later, later / bare, verdict(later / bare)),
    ]
    steps_later = median(real["steps_images_per_s"][1:] or real["steps_images_per_s"])
    figures["later_epoch_steps_only_images_per_s"] = round(steps_later, 3)
    figures["epoch_profile"] = real["epoch_profile"]
    rows.append(
        ("  of which the trainer's steps alone, epochs 2..", steps_later, steps_later / bare, "-")
    )
    if plain is not None:
        p_later = median(plain["images_per_s"][1:]) if epochs > 1 else plain["images_per_s"][0]
        figures["uncached_later_epoch_images_per_s"] = round(p_later, 3)
        figures["uncached_later_epoch_ratio"] = round(p_later / bare, 3)
        figures["uncached_per_epoch_images_per_s"] = [round(v, 3) for v in plain["images_per_s"]]
        rows.append(
            (
                f"same, cache off, epochs 2..{epochs}",
                p_later,
                p_later / bare,
                verdict(p_later / bare),
            )
        )
    record = {
        "bench": "finetune",
        **env,
        "quick": args.quick,
        "model": model,
        "image_size": size,
        "batch_size": batch,
        "epochs": epochs,
        "loader_workers": workers,
        "decode": args.decode,
        "precision": precision,
        "train_rows": real["train_rows"],
        "per_epoch_images_per_s": [round(v, 3) for v in real["images_per_s"]],
        **figures,
        "target_ratio": TARGET_RATIO,
        "meets_target": later / bare >= TARGET_RATIO,
        "decoded_image_cache": True,
        "cached_images": real["cached_images"],
    }
    emit(
        f"finetune vs bare forward+backward ({env['cores']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads, {model} {size} px, batch {batch}, "
        f"{real['train_rows']} train images, {workers} decoding {args.decode}, {precision})",
        ["measure", "train images/s", "ratio", f">= {TARGET_RATIO}"],
        rows,
        record,
        notes=[
            f"ratio vs the bare pass in the trainer's memory format on CPU ({fmt})",
            f"loader alone, one thread: {profile['decode_ms_per_image']} ms/image decoding "
            f"(epoch 1), {profile['cached_ms_per_image']} ms/image from the cache (later epochs)",
            f"model alone: {1000 / bare:.0f} ms/image of wall time on {env['torch_threads']} "
            "threads; epoch 1 also pays worker start-up and kernel warm-up",
            "per epoch (s): "
            + "; ".join(
                f"{i + 1}: train {p['train_s']} = data wait {p['data_wait_s']} + steps "
                f"{p['steps_s']} + rest {p['rest_s']}"
                for i, p in enumerate(real["epoch_profile"])
            ),
        ],
    )


if __name__ == "__main__":
    main()
