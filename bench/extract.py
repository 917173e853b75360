"""Bench: `extract_features` end to end vs the backbone's forward pass alone, plus decode cost.

Run: .venv/bin/python bench/extract.py [--quick] [--models resnet50,densenet121] [--images 32]
     [--precision auto|fp32|bf16] [--workers 0]
ViTs: --models vit-small,dinov2-small (timm ViT-S/16 and DINOv2 ViT-S/14, random init, 224 px;
needs the timm / hf extras). Any name `xray models` lists works.
Targets on 2 cores, full-size JPEGs: the first backbone's extraction (decodes every image and
fills the pixel cache) >= 0.85 x forward-only images/s; a second backbone at the same resize
(reads the pixel cache) >= 0.95.

Both sides use the same trunk (random init, --weights none), the same batches (extraction's:
per split, per 256-row chunk), torch threads, precision (autocast), channels_last and
inference_mode; the forward side runs on tensors decoded beforehand. Extraction runs twice per
round: into a fresh cache folder ("first backbone": decode + resize + pixel cache writes), and
into a folder whose pixel cache an earlier extraction filled ("second backbone": its decode
work is that of any other backbone resizing alike, e.g. densenet121 after resnet18). All sides
are interleaved round by round. Peak memory is measured in child processes extracting N and
5N images (the 5N set repeats the N files under new names: same decode cost).
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
    full_batches,
    image_files,
    interleave,
    median,
    peak_rss_mb,
    radiograph_dataset,
)

TARGET_FIRST = 0.85
TARGET_SECOND = 0.95


def decode_rates(manifest: Any, files: list[Path], pre: Any, rounds: int) -> dict[str, float]:
    """Images/s on one core: full decode, draft-mode decode, draft decode + preprocessing (a
    greyscale file kept one channel until the end, as extraction does it, and as RGB from the
    start, as before), and a pixel-cache hit (read the file's bytes, hash them, load the
    resized pixels) + crop."""
    import torch

    from featurestore.data import decode_image, open_pixel_cache, resized_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: a loader worker runs with one thread too
    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-decode-"))
    cache = open_pixel_cache(scratch, pre, 10.0)
    keys = [r.key for r in manifest.records]
    for key in keys:  # fill it
        resized_image(manifest, key, pre, cache)

    def rate(work: Any, items: list[Any]) -> Any:
        def run() -> float:
            with Timer() as t:
                for item in items:
                    work(item)
            return len(items) / t.seconds

        return run

    try:
        got = interleave(
            {
                "full decode": rate(lambda f: decode_image(f), files),
                "draft decode": rate(lambda f: decode_image(f, min_size=pre.resize), files),
                "draft decode + preprocess": rate(  # the extraction's way: grey stays L
                    lambda f: pre.pixels(decode_image(f, min_size=pre.resize, grey=True)), files
                ),
                "draft decode + preprocess as RGB (before)": rate(
                    lambda f: pre.pixels(decode_image(f, min_size=pre.resize)), files
                ),
                "pixel cache hit + preprocess": rate(
                    lambda k: pre.pixels(resized_image(manifest, k, pre, cache)[0]), keys
                ),
            },
            rounds,
        )
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(scratch, ignore_errors=True)
    return {k: median(v) for k, v in got.items()}


def forward_rate(trunk: Any, batches: list[Any], autocast: Any) -> float:
    """Images/s of the trunk alone over pre-decoded (B, 3, S, S) channels_last batches."""
    import torch

    n = sum(len(b) for b in batches)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None),
        Timer() as t,
    ):
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
    precision: str,
    decode_beside: bool = False,
) -> dict[str, Any]:
    """Interleave forward-only and first/second-backbone extraction over the same images.

    `decode_beside`: also extract (workers=0) with the decoding threads forced to run beside
    the forward pass, as extraction did before it decoded between batches on busy cores
    (`featurestore.store.extract_loop.decode_overlaps`): the before/after of that change.
    """
    from featurestore.devices import autocast_dtype
    from featurestore.store import extract_features, extract_loop

    manifest, pre, trunk, batches = forward_inputs(
        model, data, image_size=image_size, batch_size=batch_size
    )
    autocast = autocast_dtype(precision)
    full = full_batches(batches, batch_size)
    for b in {len(x): x for x in [*batches, *full]}.values():
        forward_rate(trunk, [b], autocast)  # each shape's first call picks kernels: untimed
    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-extract-"))
    calls: dict[str, list[float]] = {}
    hits: dict[str, int | None] = {}

    def extract(cache: Path) -> Any:
        return extract_features(
            manifest, model=model, weights="none", cache_dir=cache, image_size=image_size,
            batch_size=batch_size, workers=w_now[0], device="cpu", precision=precision,
        )  # fmt: skip

    w_now = [0]
    warm = scratch / "warm"
    extract(warm)  # fills warm/.pixels: what a first backbone leaves for the second
    for store in warm.rglob("*.h5"):
        store.unlink()

    def extract_with(w: int, second: bool, beside: bool = False) -> Any:
        name = f"{'second' if second else 'first'} workers={w}" + (
            " decode beside forward" if beside else ""
        )
        calls[name] = []

        def run() -> float:
            w_now[0] = w
            cache = warm if second else scratch / f"cold-{len(calls[name])}"
            chosen = extract_loop.decode_overlaps
            if beside:
                extract_loop.decode_overlaps = lambda device: True
            try:
                result = extract(cache)
            finally:
                extract_loop.decode_overlaps = chosen
            assert result.status in ("built", "rebuilt")
            assert sum(result.counts.values()) == len(manifest.records)
            calls[name].append(len(manifest.records) / result.seconds)
            hits[name] = result.pixel_cache_hits
            for store in cache.rglob("*.h5"):  # the next round extracts again
                store.unlink()
            if not second:
                shutil.rmtree(cache, ignore_errors=True)
            return float(result.images_per_second or 0.0)

        return run

    sides = {
        "forward": lambda: forward_rate(trunk, batches, autocast),
        "forward, full batches": lambda: forward_rate(trunk, full, autocast),
    }
    for w in workers:
        sides[f"first workers={w}"] = extract_with(w, second=False)
        sides[f"second workers={w}"] = extract_with(w, second=True)
        if decode_beside and w == 0:
            sides["first workers=0 decode beside forward"] = extract_with(0, False, True)
            sides["second workers=0 decode beside forward"] = extract_with(0, True, True)
    try:
        got = interleave(sides, rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    forward = median(got["forward"])
    configs = {
        name: {
            "images_per_s": round(median(got[name]), 3),
            "whole_call_images_per_s": round(median(calls[name]), 3),
            "ratio": round(median(got[name]) / forward, 3),
            "whole_call_ratio": round(median(calls[name]) / forward, 3),
            "pixel_cache_hits": hits[name],
        }
        for name in calls
    }
    return {
        "model": model,
        "precision": precision,
        "image_size": image_size,
        "batch_size": batch_size,
        "batch_sizes": [len(b) for b in batches],
        "images": len(manifest.records),
        "rounds": rounds,
        "forward_images_per_s": round(forward, 3),
        "forward_full_batches_images_per_s": round(median(got["forward, full batches"]), 3),
        "forward_ms_per_image": round(1000 / forward, 1),
        "configs": configs,
        "first_ratio": max(
            c["ratio"] for n, c in configs.items() if n.startswith("first") and "beside" not in n
        ),
        "second_ratio": max(
            c["ratio"] for n, c in configs.items() if n.startswith("second") and "beside" not in n
        ),
        "min_size": pre.resize,
        "pre": pre,
        "manifest": manifest,
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

    from featurestore.devices import resolve_precision
    from featurestore.store import default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 64 px, 6 small images")
    parser.add_argument("--models", default="resnet50,densenet121")
    parser.add_argument("--images", type=int, default=32, help="N (default 32)")
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--precision", default="auto", help="auto (bf16 where the CPU computes it), fp32, bf16"
    )
    parser.add_argument("--workers", default=None, help="loader worker counts, e.g. 0,1")
    parser.add_argument(
        "--decode-beside",
        action="store_true",
        help="also time workers=0 with decoding forced beside the forward pass (the old way)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        memory_child(args.memory_child, args.models, args.size, int(args.workers))
        return
    precision = resolve_precision(args.precision, torch.device("cpu"), cuda_auto="fp32")
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
        workers = sorted({int(w) for w in (args.workers or "0").split(",")})
    files = image_files(data)
    env = environment()
    results = [
        bench_model(
            m, data, image_size=size, batch_size=batch, workers=workers, rounds=rounds,
            precision=precision, decode_beside=args.decode_beside or args.quick,
        )
        for m in models
    ]  # fmt: skip
    pre, manifest = results[0]["pre"], results[0]["manifest"]
    for r in results:
        del r["pre"], r["manifest"]
    decode = decode_rates(manifest, files, pre, rounds=max(1, rounds))
    memory = measure_memory(data, models[0] if args.quick else "resnet18", size, default_workers())

    rows: list[tuple[Any, ...]] = []
    for r in results:
        rows.append((f"{r['model']} forward", r["forward_images_per_s"], 1.0, "-", "-"))
        rows.append((
            f"{r['model']} forward, full batches", r["forward_full_batches_images_per_s"],
            round(r["forward_full_batches_images_per_s"] / r["forward_images_per_s"], 3), "-", "-",
        ))  # fmt: skip
        for name, c in r["configs"].items():
            target = TARGET_SECOND if name.startswith("second") else TARGET_FIRST
            rows.append((
                f"{r['model']} extract, {name.replace(' ', ' backbone, ', 1)}",
                c["images_per_s"], c["ratio"], c["whole_call_ratio"],
                f"{'yes' if c['ratio'] >= target else 'NO'} (>= {target})",
            ))  # fmt: skip
    draft_ms = 1000 / decode["draft decode + preprocess"]
    hit_ms = 1000 / decode["pixel cache hit + preprocess"]
    kib = sorted(f.stat().st_size // 1024 for f in files)
    notes = [
        f"decode, images/s/core ({len(files)} JPEGs, {kib[0]}-{kib[-1]} KiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in decode.items()),
    ]
    cores = env["cores"] or 1
    for r in results:
        # Decode in a thread shares the cores with the forward: per image the forward costs
        # forward_ms x threads core-ms, decoding decode_ms core-ms, so at best the end-to-end
        # rate is forward / (1 + decode_core_ms / forward_core_ms).
        forward_core_ms = r["forward_ms_per_image"] * min(cores, env["torch_threads"])
        r["decode_core_ms_per_image"] = round(draft_ms, 2)
        r["pixel_cache_core_ms_per_image"] = round(hit_ms, 2)
        r["ratio_bound_first"] = round(forward_core_ms / (forward_core_ms + draft_ms), 3)
        r["ratio_bound_second"] = round(forward_core_ms / (forward_core_ms + hit_ms), 3)
        notes.append(
            f"{r['model']} ({precision}): forward {r['forward_ms_per_image']:.0f} ms/image on "
            f"{env['torch_threads']} threads vs {draft_ms:.1f} core-ms draft decode+preprocess "
            f"(bound {r['ratio_bound_first']:.3f}) or {hit_ms:.2f} core-ms from the pixel cache "
            f"(bound {r['ratio_bound_second']:.3f}); batches {r['batch_sizes']}"
        )
    notes.append(
        "peak RSS (main / loader workers): "
        + ", ".join(
            f"{m['images']} images {m['peak_rss_mb']:.0f} / {m['workers_peak_rss_mb']:.0f} MiB"
            for m in memory
        )
    )
    notes.append(
        "ratio = extract's own images/s (decode -> forward -> chunk writes) / forward on the "
        "same batches; whole-call ratio also counts model build, fingerprints and assembly"
    )
    record = {
        "bench": "extract",
        **env,
        "quick": args.quick,
        "precision": precision,
        "target_first": TARGET_FIRST,
        "target_second": TARGET_SECOND,
        "models": results,
        "decode_images_per_s_per_core": {k: round(v, 2) for k, v in decode.items()},
        "memory": memory,
        "default_workers": default_workers(),
        "ratios": {
            r["model"]: {"first": r["first_ratio"], "second": r["second_ratio"]} for r in results
        },
        "best_ratio": {r["model"]: r["first_ratio"] for r in results},
        "meets_target": all(
            r["first_ratio"] >= TARGET_FIRST and r["second_ratio"] >= TARGET_SECOND for r in results
        ),
        "torch_threads": torch.get_num_threads(),
    }
    emit(
        f"extract vs forward only ({env['cores']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads, {precision}, {size} px, batch {batch}, {n} images x "
        f"{rounds} rounds)",
        ["measure", "images/s", "ratio", "whole-call ratio", "target"],
        rows,
        record,
        notes=notes,
    )


if __name__ == "__main__":
    main()
