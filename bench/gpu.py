"""Bench: on one GPU, forward vs extraction vs fine-tune step per model, bf16, with the ratios.

Run: .venv/bin/python bench/gpu.py [--device cuda] [--models resnet50,densenet121,vit-small]
     [--images 512] [--batch-size 64] [--steps 20]
     CPU smoke run: .venv/bin/python bench/gpu.py --device cpu --quick
Budget: one call under 8 minutes on one GPU (generating the JPEGs in a process per core is
most of it); the figures go into bench/README.md.

Per model (random init, --weights none: the arithmetic is measured, not the weights), at
224 px under bfloat16 autocast (`--precision bf16`), channels_last:

- forward: images/s of the trunk alone on pre-decoded batches already on the device;
- extraction, first backbone: `extract_features` into a fresh cache folder (decodes every
  full-size JPEG in loader processes on the free cores and fills the pixel cache);
- extraction, second backbone: the same into a folder whose pixel cache is filled (what a
  second backbone resizing alike reads);
- fine-tune step: forward + backward + AdamW step of trunk + linear head (the trainer's
  optimizer) on device batches, images/s;
- ratios: extraction / forward (first and second), fine-tune step / forward.

Sides of each ratio are interleaved over `--rounds`; CUDA work is synchronised before every
clock read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import SPLIT_SHARES, Timer, emit, environment, interleave, median, radiograph_jpeg


def _render(job: tuple[int, int, int, bool, str]) -> None:
    """One JPEG of the dataset (a process pool's task)."""
    seed, long_side, short_side, pneumonia, path = job
    rng = np.random.default_rng(seed)
    Path(path).write_bytes(radiograph_jpeg(rng, long_side, short_side, pneumonia=pneumonia))


def parallel_dataset(n: int, *, min_side: int, max_side: int, processes: int) -> Path:
    """A Kermany-layout folder of `n` radiograph-like JPEGs drawn by `processes` processes.

    The layout and sizes of `benchlib.radiograph_dataset` (70/15/15, long side spread over
    [min_side, max_side]); written once per (n, sizes) under the temp dir.
    """
    root = Path(tempfile.gettempdir()) / "xray-bench" / f"gpu-{n}-{min_side}-{max_side}"
    if (root / "DONE").is_file():
        return root
    rng = np.random.default_rng(0)
    counts = [round(n * share) for _, share in SPLIT_SHARES]
    counts[0] = n - sum(counts[1:])
    jobs, i = [], 0
    for (split, _), count in zip(SPLIT_SHARES, counts, strict=True):
        for j in range(count):
            pneumonia = j % 2 == 1
            long_side = int(min_side + (max_side - min_side) * (i / max(1, n - 1)))
            short_side = int(long_side * rng.uniform(0.75, 0.95))
            folder = root / split / ("PNEUMONIA" if pneumonia else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"person{i}_bacteria_{j}.jpeg" if pneumonia else f"IM-{i:04d}-0001.jpeg"
            jobs.append((i, long_side, short_side, pneumonia, str(folder / name)))
            i += 1
    with ProcessPoolExecutor(max(1, processes)) as pool:
        list(pool.map(_render, jobs, chunksize=8))
    (root / "DONE").write_text("complete\n")
    return root


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    model: str,
    data: Path,
    *,
    device: Any,
    image_size: int,
    batch_size: int,
    steps: int,
    rounds: int,
    precision: str,
) -> dict[str, Any]:
    """Forward, first/second extraction and fine-tune step images/s of one model."""
    import torch
    from torch import nn

    from featurestore.data import load_manifest
    from featurestore.devices import autocast_dtype
    from featurestore.models import TrunkHead, build_head, load_backbone, preprocessing_for
    from featurestore.store import extract_features
    from featurestore.train import TrainConfig, make_optimizer

    manifest = load_manifest(data, val_min=0)
    pre = preprocessing_for(model, "none", image_size)
    amp = autocast_dtype(precision)
    pixels = torch.stack(
        [torch.from_numpy(pre.pixels(manifest.open_image(r.key, min_size=pre.resize)).copy())
         for r in manifest.records]
    )  # (N, S, S, 3) uint8  # fmt: skip
    x_all = pre.normalize(pixels.to(device)).contiguous(memory_format=torch.channels_last)
    batches = [x_all[a : a + batch_size] for a in range(0, len(x_all), batch_size)]
    torch.manual_seed(0)
    loaded = load_backbone(model, "none")
    trunk = loaded.trunk.eval().to(device).to(memory_format=torch.channels_last)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def forward() -> float:
        with torch.inference_mode(), autocast():
            _sync(device)
            with Timer() as t:
                for x in batches:
                    trunk(x)
                _sync(device)
        return len(x_all) / t.seconds

    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, 2))
    tuned = net.to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(tuned, TrainConfig(backbone_lr_mult=0.1, device=device.type))
    criterion = nn.CrossEntropyLoss()
    y = torch.tensor([r.label for r in manifest.records], device=device)
    train_x = batches[0]
    train_y = y[: len(train_x)]

    def step() -> None:
        with autocast():
            loss = criterion(tuned(train_x).float(), train_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def finetune() -> float:
        _sync(device)
        with Timer() as t:
            for _ in range(steps):
                step()
            _sync(device)
        return steps * len(train_x) / t.seconds

    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-gpu-"))
    warm = scratch / "warm"

    def extract(cache: Path) -> float:
        result = extract_features(
            manifest, model=model, weights="none", cache_dir=cache, image_size=image_size,
            batch_size=batch_size, device=str(device), precision=precision,
        )  # fmt: skip
        for store in cache.rglob("*.h5"):
            store.unlink()  # the next round extracts again
        return float(result.images_per_second or 0.0)

    cold_runs = [0]

    def first() -> float:
        cold_runs[0] += 1
        cache = scratch / f"cold-{cold_runs[0]}"
        try:
            return extract(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    try:
        forward()  # warm-up: kernels, cuDNN algorithm choice, allocator
        step()
        extract(warm)  # fills warm/.pixels (and warms the loader path)
        got = interleave(
            {
                "forward": forward,
                "extract first": first,
                "extract second": lambda: extract(warm),
                "finetune step": finetune,
            },
            rounds,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rate = {k: median(v) for k, v in got.items()}
    return {
        "model": model,
        "images": len(manifest.records),
        "images_per_s": {k: round(v, 1) for k, v in rate.items()},
        "extract_first_over_forward": round(rate["extract first"] / rate["forward"], 3),
        "extract_second_over_forward": round(rate["extract second"] / rate["forward"], 3),
        "finetune_step_over_forward": round(rate["finetune step"] / rate["forward"], 3),
    }


def main() -> None:
    """Measure, print the table and the JSON line."""
    import torch

    from featurestore.devices import resolve_device
    from featurestore.store import default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 64 px, 12 small images")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="resnet50,densenet121,vit-small")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="fine-tune steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.quick:
        models, size, n, batch, steps, rounds = ["resnet18"], 64, 12, 4, 2, 1
        data = parallel_dataset(n, min_side=400, max_side=800, processes=2)
    else:
        models, size, n, batch, steps, rounds = (
            args.models.split(","), args.size, args.images, args.batch_size, args.steps,
            args.rounds,
        )  # fmt: skip
        data = parallel_dataset(n, min_side=1000, max_side=2900, processes=os.cpu_count() or 1)
    env = environment()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    results = [
        bench_model(
            m, data, device=device, image_size=size, batch_size=batch, steps=steps,
            rounds=rounds, precision=args.precision,
        )
        for m in models
    ]  # fmt: skip
    rows = [
        (
            r["model"],
            r["images_per_s"]["forward"],
            r["images_per_s"]["extract first"],
            r["images_per_s"]["extract second"],
            r["images_per_s"]["finetune step"],
            r["extract_first_over_forward"],
            r["extract_second_over_forward"],
            r["finetune_step_over_forward"],
        )
        for r in results
    ]
    record = {
        "bench": "gpu",
        **env,
        "device": str(device),
        "gpu": gpu,
        "quick": args.quick,
        "precision": args.precision,
        "image_size": size,
        "batch_size": batch,
        "loader_workers": default_workers(device.type),
        "models": results,
    }
    emit(
        f"{gpu or device} ({args.precision}, {size} px, batch {batch}, {n} images, "
        f"{default_workers(device.type)} decoding workers)",
        ["model", "forward img/s", "extract 1st", "extract 2nd", "finetune step",
         "1st/fwd", "2nd/fwd", "step/fwd"],
        rows,
        record,
        notes=[
            "extract 1st decodes every JPEG (and fills the pixel cache); 2nd reads the cache; "
            "finetune step = forward + backward + AdamW on device batches"
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
