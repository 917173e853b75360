"""Bench: `extract_features` end to end vs the backbone's forward pass alone, plus decode cost.

Run: .venv/bin/python bench/extract.py [--quick] [--models resnet50,densenet121] [--images 32]
ViTs: --models vit-small,dinov2-small (timm ViT-S/16 and DINOv2 ViT-S/14, random init, 224 px;
needs the timm / hf extras). Any name `xray models` lists works.
Target: extraction images/s >= 0.85 x forward-only images/s on 2 cores, full-size JPEGs.

Both sides use the same trunk (random init, --weights none), batch size, torch threads,
channels_last and inference_mode; the forward side runs on tensors decoded beforehand. The
two are interleaved round by round. Peak memory is measured in child processes extracting
N and 5N images (the 5N set repeats the N files under new names: same decode cost).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import (
    Timer,
    emit,
    environment,
    forward_inputs,
    image_files,
    interleave,
    median,
    peak_rss_mb,
    radiograph_dataset,
)

TARGET_RATIO = 0.85


def decode_rates(files: list[Path], min_size: int, pre: Any, rounds: int) -> dict[str, float]:
    """Images/s on one core: full decode, draft-mode decode, and draft decode + preprocessing."""
    import torch

    from featurestore.data import decode_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: a loader worker runs with one thread too

    def rate(work: Any) -> Any:
        def run() -> float:
            with Timer() as t:
                for f in files:
                    work(f)
            return len(files) / t.seconds

        return run

    try:
        got = interleave(
            {
                "full decode": rate(lambda f: decode_image(f)),
                "draft decode": rate(lambda f: decode_image(f, min_size=min_size)),
                "full decode + preprocess": rate(lambda f: pre(decode_image(f))),
                "draft decode + preprocess": rate(
                    lambda f: pre(decode_image(f, min_size=min_size))
                ),
            },
            rounds,
        )
    finally:
        torch.set_num_threads(threads)
    return {k: median(v) for k, v in got.items()}


def forward_rate(trunk: Any, batches: list[Any]) -> float:
    """Images/s of the trunk alone over pre-decoded (B, 3, S, S) channels_last batches."""
    import torch

    n = sum(len(b) for b in batches)
    with torch.inference_mode(), Timer() as t:
        for x in batches:
            trunk(x)  # (B, D)
    return n / t.seconds


def bench_model(
    model: str,
    data: Path,
    *,
    image_size: int,
    batch_size: int,
    workers: list[int],
    rounds: int,
) -> dict[str, Any]:
    """Interleave forward-only and extract (per worker count) over the same images."""
    import torch

    from featurestore.store import extract_features

    manifest, pre, trunk, batches = forward_inputs(
        model, data, image_size=image_size, batch_size=batch_size
    )
    with torch.inference_mode():
        trunk(batches[0])  # first call picks oneDNN kernels: keep it out of the timing
    calls: dict[str, list[float]] = {f"workers={w}": [] for w in workers}
    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-extract-"))

    def extract_with(w: int) -> Any:
        def run() -> float:
            cache = scratch / f"w{w}-{len(calls[f'workers={w}'])}"
            result = extract_features(
                manifest,
                model=model,
                weights="none",
                cache_dir=cache,
                image_size=image_size,
                batch_size=batch_size,
                workers=w,
                device="cpu",
                precision="fp32",  # forward-only runs in float32 (bench/precision.py: bf16)
            )
            assert result.status == "built" and sum(result.counts.values()) == len(manifest.records)
            calls[f"workers={w}"].append(len(manifest.records) / result.seconds)
            shutil.rmtree(cache, ignore_errors=True)
            return float(result.images_per_second or 0.0)

        return run

    try:
        got = interleave(
            {"forward only": lambda: forward_rate(trunk, batches)}
            | {f"workers={w}": extract_with(w) for w in workers},
            rounds,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    forward = median(got["forward only"])
    configs = {
        name: {
            "images_per_s": round(median(got[name]), 3),
            "whole_call_images_per_s": round(median(calls[name]), 3),
            "ratio": round(median(got[name]) / forward, 3),
            "whole_call_ratio": round(median(calls[name]) / forward, 3),
        }
        for name in calls
    }
    return {
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "images": len(manifest.records),
        "rounds": rounds,
        "forward_images_per_s": round(forward, 3),
        "forward_ms_per_image": round(1000 / forward, 1),
        "configs": configs,
        "min_size": pre.resize,
        "pre": pre,
    }


def memory_child(data: str, model: str, image_size: int, workers: int) -> None:
    """Child process: extract `data` and print its peak RSS (self and loader workers)."""
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    with tempfile.TemporaryDirectory(prefix="xray-bench-mem-") as cache:
        manifest = load_manifest(Path(data), val_min=0)
        extract_features(
            manifest,
            model=model,
            weights="none",
            cache_dir=Path(cache),
            image_size=image_size,
            batch_size=32,
            workers=workers,
            device="cpu",
        )
    import resource

    print(
        json.dumps(
            {
                "images": len(manifest.records),
                "peak_rss_mb": peak_rss_mb(),
                "workers_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
            }
        )
    )


def replicate(data: Path, times: int) -> Path:
    """A dataset holding every file of `data` `times` over, under new names."""
    root = Path(tempfile.mkdtemp(prefix="xray-bench-rep-")) / "rep"
    for f in image_files(data):
        rel = f.relative_to(data)
        for t in range(times):
            out = root / rel.parent / f"{f.stem}-{t:02d}{f.suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.hardlink_to(f)
    return root


def measure_memory(data: Path, model: str, image_size: int, workers: int) -> list[dict[str, Any]]:
    """Peak RSS of extraction of N and 5N images, each in a fresh process."""
    rows = []
    for times in (1, 5):
        root = replicate(data, times)
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    str(root),
                    "--models",
                    model,
                    "--size",
                    str(image_size),
                    "--workers",
                    str(workers),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            shutil.rmtree(root.parent, ignore_errors=True)
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main() -> None:
    """Measure, print the table and the JSON line."""
    import torch

    from featurestore.store import default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 64 px, 6 small images")
    parser.add_argument("--models", default="resnet50,densenet121")
    parser.add_argument("--images", type=int, default=32, help="N (default 32)")
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers", default=None, help="loader worker counts to compare, e.g. 0,1,2"
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        memory_child(args.memory_child, args.models, args.size, int(args.workers))
        return
    if args.quick:
        models, size, n, rounds, batch = ["resnet18"], 64, 6, 1, 4
        data = radiograph_dataset(n, min_side=400, max_side=800)
        workers = [0, 1]
    else:
        models, size, n, rounds, batch = (
            args.models.split(","),
            args.size,
            args.images,
            args.rounds,
            args.batch_size,
        )
        data = radiograph_dataset(n)
        workers = [int(w) for w in (args.workers or "0,1,2").split(",")]
        workers = sorted(set(workers))
    files = image_files(data)
    env = environment()
    results = [
        bench_model(m, data, image_size=size, batch_size=batch, workers=workers, rounds=rounds)
        for m in models
    ]
    pre = results[0].pop("pre")
    for r in results[1:]:
        r.pop("pre")
    decode = decode_rates(files, results[0]["min_size"], pre, rounds=max(1, rounds))
    memory = measure_memory(data, models[0] if args.quick else "resnet18", size, default_workers())

    rows: list[tuple[Any, ...]] = []
    best_ratio = {}
    for r in results:
        rows.append((f"{r['model']} forward only", r["forward_images_per_s"], 1.0, "-", "-"))
        for name, c in r["configs"].items():
            ok = c["ratio"] >= TARGET_RATIO
            rows.append(
                (
                    f"{r['model']} extract {name}",
                    c["images_per_s"],
                    c["ratio"],
                    c["whole_call_ratio"],
                    "yes" if ok else "NO",
                )
            )
        best_ratio[r["model"]] = max(c["ratio"] for c in r["configs"].values())
    decode_ms = 1000 / decode["draft decode + preprocess"]
    kib = sorted(f.stat().st_size // 1024 for f in files)
    notes = [
        f"decode, images/s/core ({len(files)} JPEGs, {kib[0]}-{kib[-1]} KiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in decode.items()),
    ]
    cores = env["cores"] or 1
    for r in results:
        # Decode in a worker shares the cores with the forward: per image the forward costs
        # forward_ms x threads core-ms, decoding decode_ms core-ms, so at best the end-to-end
        # rate is forward / (1 + decode_core_ms / forward_core_ms).
        forward_core_ms = r["forward_ms_per_image"] * min(cores, env["torch_threads"])
        bound = forward_core_ms / (forward_core_ms + decode_ms)
        r["decode_core_ms_per_image"] = round(decode_ms, 1)
        r["ratio_bound_shared_cores"] = round(bound, 3)
        notes.append(
            f"{r['model']}: forward {r['forward_ms_per_image']:.0f} ms/image on "
            f"{env['torch_threads']} threads vs draft decode+preprocess {decode_ms:.1f} core-ms "
            f"-> ratio bound on shared cores {bound:.3f}"
        )
    notes.append(
        "peak RSS (main / loader workers): "
        + ", ".join(
            f"{m['images']} images {m['peak_rss_mb']:.0f} / {m['workers_peak_rss_mb']:.0f} MiB"
            for m in memory
        )
    )
    notes.append(
        "ratio = extract's own images/s (decode -> forward -> chunk writes) / forward only; "
        "whole-call ratio also counts model build, fingerprint and store assembly"
    )
    record = {
        "bench": "extract",
        **env,
        "quick": args.quick,
        "target_ratio": TARGET_RATIO,
        "models": results,
        "decode_images_per_s_per_core": {k: round(v, 2) for k, v in decode.items()},
        "memory": memory,
        "default_workers": default_workers(),
        "best_ratio": best_ratio,
        "meets_target": all(v >= TARGET_RATIO for v in best_ratio.values()),
        "torch_threads": torch.get_num_threads(),
    }
    emit(
        f"extract vs forward only ({env['cores']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads, {size} px, batch {batch}, {n} images x {rounds} rounds)",
        ["measure", "images/s", "ratio", "whole-call ratio", f">= {TARGET_RATIO}"],
        rows,
        record,
        notes=notes,
    )


if __name__ == "__main__":
    main()
