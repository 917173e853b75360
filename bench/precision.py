"""Bench: bf16 vs fp32 extraction per model, feature agreement, and the downstream head.

Run: .venv/bin/python bench/precision.py [--quick] [--models resnet50,densenet121]
     [--images 160] [--rounds 2] [--compile]

Per model, on full-size synthetic radiograph JPEGs at 224 px (random-init trunks, --weights
none; the arithmetic is what is measured, not the weights):

- forward-only images/s in fp32 and under bfloat16 autocast, on tensors decoded beforehand;
- `extract_features` images/s with --precision fp32 and bf16 (decoding overlapped in a thread);
  bf16/fp32 extraction speed-up, and extraction/forward-only per precision (target >= 0.85);
- per-row cosine similarity of the bf16 store's features against the fp32 store's (min/median,
  both stored float16 as by default);
- a logistic-regression head (`fit-head --head logreg`) on each store: test AUC and accuracy.

With --compile, also `torch.compile` of the bf16 trunk: compile seconds, compiled images/s and
the image count above which compiling pays for itself. Rounds alternate the order of the sides
so a noisy neighbour slows all alike.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchlib import (
    Timer,
    emit,
    environment,
    forward_inputs,
    interleave,
    median,
    radiograph_dataset,
)

TARGET_RATIO = 0.85


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


def cosine_rows(a: Any, b: Any) -> Any:
    """(N, D), (N, D) -> (N,) cosine similarity of each row pair, in float64."""
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-300)


def head_metrics(store: Path, runs: Path) -> dict[str, float]:
    """Test AUC and accuracy (at the validation-chosen threshold) of a logreg head on `store`."""
    from featurestore.store import open_store
    from featurestore.train import TrainConfig, fit_head_on_store

    config = TrainConfig(precision="fp32")  # what fit-head's auto is on CPU
    summary = fit_head_on_store(open_store(store), head="logreg", config=config, runs_dir=runs)
    at = summary.test["at_threshold"]
    return {"test_auc": round(at["roc_auc"], 4), "test_accuracy": round(at["accuracy"], 4)}


def compile_figures(trunk: Any, batches: list[Any], eager_rate: float) -> dict[str, Any]:
    """torch.compile of the bf16 trunk: compile seconds, steady images/s, break-even images."""
    import torch

    compiled = torch.compile(trunk)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        Timer() as t,
    ):
        compiled(batches[0])  # compiles (and runs one batch)
    compile_s = t.seconds
    rate = forward_rate(compiled, batches, torch.bfloat16)
    saved_s = 1 / eager_rate - 1 / rate  # seconds saved per image once compiled
    return {
        "compile_seconds": round(compile_s, 1),
        "compiled_images_per_s": round(rate, 2),
        "speedup": round(rate / eager_rate, 3),
        "break_even_images": round(compile_s / saved_s) if saved_s > 0 else None,
    }


def bench_model(
    model: str, data: Path, *, image_size: int, batch_size: int, rounds: int, compile: bool
) -> dict[str, Any]:
    """Interleave forward-only and extraction in both precisions; compare stores and heads."""
    import torch

    from featurestore.store import extract_features, open_store

    manifest, _, trunk, batches = forward_inputs(
        model, data, image_size=image_size, batch_size=batch_size
    )
    for dtype in (None, torch.bfloat16):  # first calls pick oneDNN kernels: untimed
        forward_rate(trunk, batches[:1], dtype)
    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-precision-"))
    stores: dict[str, Path] = {}

    def extract_with(precision: str) -> Any:
        def run() -> float:
            cache = scratch / f"{precision}-{len(stores)}"
            result = extract_features(
                manifest,
                model=model,
                weights="none",
                cache_dir=cache,
                image_size=image_size,
                batch_size=batch_size,
                device="cpu",
                precision=precision,
            )
            assert result.status == "built" and result.precision == precision
            stores[precision] = result.path  # the last round's store is compared below
            return float(result.images_per_second or 0.0)

        return run

    try:
        got = interleave(
            {
                "forward fp32": lambda: forward_rate(trunk, batches, None),
                "forward bf16": lambda: forward_rate(trunk, batches, torch.bfloat16),
                "extract fp32": extract_with("fp32"),
                "extract bf16": extract_with("bf16"),
            },
            rounds,
        )
        rate = {k: median(v) for k, v in got.items()}
        cos = {}
        for split in ("train", "val", "test"):
            a = open_store(stores["fp32"]).split(split).features
            b = open_store(stores["bf16"]).split(split).features
            cos[split] = cosine_rows(a, b)
        import numpy as np

        all_cos = np.concatenate(list(cos.values()))
        heads = {p: head_metrics(stores[p], scratch / f"runs-{p}") for p in ("fp32", "bf16")}
        compiled = compile_figures(trunk, batches, rate["forward bf16"]) if compile else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "model": model,
        "images": len(manifest.records),
        "images_per_s": {k: round(v, 2) for k, v in rate.items()},
        "bf16_over_fp32_extract": round(rate["extract bf16"] / rate["extract fp32"], 3),
        "bf16_over_fp32_forward": round(rate["forward bf16"] / rate["forward fp32"], 3),
        "extract_over_forward": {
            p: round(rate[f"extract {p}"] / rate[f"forward {p}"], 3) for p in ("fp32", "bf16")
        },
        "cosine_min": round(float(all_cos.min()), 6),
        "cosine_median": round(float(np.median(all_cos)), 6),
        "heads": heads,
        "compile": compiled,
    }


def main() -> None:
    """Measure, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, 64 px, 24 small images")
    parser.add_argument("--models", default="resnet50,densenet121")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    if args.quick:
        models, size, n, rounds, batch = ["resnet18"], 64, 24, 1, 8
        data = radiograph_dataset(n, min_side=400, max_side=800)
    else:
        models, size, n, rounds, batch = (
            args.models.split(","), args.size, args.images, args.rounds, args.batch_size,
        )  # fmt: skip
        data = radiograph_dataset(n)
    from featurestore.devices import cpu_computes_bf16

    env = environment()
    results = [
        bench_model(m, data, image_size=size, batch_size=batch, rounds=rounds, compile=args.compile)
        for m in models
    ]
    rows = []
    for r in results:
        rate, ratio = r["images_per_s"], r["extract_over_forward"]
        for p in ("fp32", "bf16"):
            h = r["heads"][p]
            rows.append((
                f"{r['model']} {p}", rate[f"forward {p}"], rate[f"extract {p}"], ratio[p],
                h["test_auc"], h["test_accuracy"],
            ))  # fmt: skip
    notes = [
        f"{r['model']}: bf16/fp32 extraction {r['bf16_over_fp32_extract']:.2f}x "
        f"(forward {r['bf16_over_fp32_forward']:.2f}x); bf16 vs fp32 stored features, per-row "
        f"cosine min {r['cosine_min']:.6f} median {r['cosine_median']:.6f}"
        for r in results
    ]
    for r in results:
        c = r["compile"]
        if c:
            notes.append(
                f"{r['model']} torch.compile bf16: {c['compile_seconds']} s to compile, "
                f"{c['compiled_images_per_s']} img/s ({c['speedup']}x eager); pays off above "
                f"{c['break_even_images']} images"
            )
    record = {
        "bench": "precision",
        **env,
        "cpu_computes_bf16": cpu_computes_bf16(),
        "quick": args.quick,
        "target_ratio": TARGET_RATIO,
        "models": results,
        "meets_target": all(r["extract_over_forward"]["bf16"] >= TARGET_RATIO for r in results),
    }
    emit(
        f"bf16 vs fp32 ({env['cores']} cores, torch {env['torch']}, {env['torch_threads']} "
        f"threads, {size} px, batch {batch}, {n} images x {rounds} rounds)",
        ["model precision", "forward img/s", "extract img/s", "extract/forward",
         "head test AUC", "head test acc"],
        rows,
        record,
        notes=notes,
    )  # fmt: skip


if __name__ == "__main__":
    main()
