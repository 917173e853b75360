"""Bench: costs that grow with the dataset, at the scale of NIH ChestX-ray14 and CheXpert.

Run: .venv/bin/python bench/scale.py [--quick] [--images 20000] [--file-kb 200]
     [--store-rows 224000] [--dim 1024] [--head-epochs 2] [--test-images 25000] [--labels 14]
     [--boot 2000]    (a size of 0 skips its section)
Full size takes ~15-30 minutes on 2 cores and writes ~4.5 GB under the temp dir (removed).

1. Files. Builds a Kermany-layout folder of N JPEGs of `--file-kb` each (a tiny JPEG padded
with random bytes, so hashing reads as many bytes as a real radiograph's: ~200 KB), aged 1 h
(as a dataset copied earlier is, so the digest cache may trust them), then times each stage:

- listing (`read_folder`), carving the validation split (`carve_validation`);
- the freshness check (`dataset_fingerprint`): full hash of every file (as before the digest
  cache), first run with the cache (hash + record), then an unchanged dataset (stat only);
- everything `extract_features` does besides the model (planning the chunks, settling the
  store, writing the chunk files, assembling the HDF5 store), with the trunk's work replaced
  by zero features of the backbone's width: the whole call and the assembly alone.

Prints wall and CPU seconds, CPU µs per image for each stage, and the peak RSS after it
(ru_maxrss, MiB). The fingerprint figures count CPU time: the full hash of files in the page
cache, so a cold disk only makes it slower. Target: stat-only >= 20x faster than full hash.

2. A feature store of `--store-rows` x `--dim` (CheXpert: 224,000 x 1,024; 90/5/5 splits),
written through the store writer as extraction writes it (chunk files, then assembly into
HDF5; the features' generation is not timed). On it, in fresh child processes (so the peak
RSS is theirs alone): `fit_heads` of one linear head and a 64-linear-head sweep, each for
`--head-epochs` epochs without early stopping: seconds per epoch, whole call, peak RSS
against the features' own size (float16 on disk, float32 in memory).

3. Comparison at scale: two runs' multi-label predictions on a `--test-images` x `--labels`
test set (NIH: 25,000 x 14; 3 images per patient): what `compare` computes for them (per
label the metrics at threshold and the AUC's patient bootstrap with `--boot` resamples, the
macro AUC's interval, DeLong per label for the pair), seconds and peak RSS, and the same at
a quarter of the images to show how it grows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import Timer, emit, environment, peak_rss_mb


def tiny_jpeg() -> bytes:
    """A 16x16 grayscale JPEG (~400 bytes)."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build(root: Path, n: int, file_bytes: int = 0) -> None:
    """N files: 3 images per patient; 60 val images (< 100: carving runs), 10% test.

    `file_bytes` > 0 pads each file with random bytes to about that size (decoders ignore
    bytes after the JPEG's end marker; the fingerprint hashes all of them).
    """
    data = tiny_jpeg()
    pad = np.random.default_rng(1).integers(0, 256, max(0, file_bytes - len(data)), np.uint8)
    data += pad.tobytes()
    counts = {"train": n - 60 - n // 10, "val": 60, "test": n // 10}
    past = time.time() - 3600
    i = 0
    for split, count in counts.items():
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            pneumonia = i % 2 == 1
            cls = "PNEUMONIA" if pneumonia else "NORMAL"
            name = f"person{i // 3}_bacteria_{i}.jpeg" if pneumonia else f"IM-{i // 3:06d}-{i}.jpeg"
            path = root / split / cls / name
            # A distinct byte per file so the contents differ, as real images do.
            path.write_bytes(data + i.to_bytes(4, "little"))
            os.utime(path, (past, past))
            i += 1


def zero_chunks(trunk: Any, manifest: Any, pre: Any, records: Any, pending: Any, partial: Any,
                *, dim: int, dtype: str, **_: Any) -> float:  # fmt: skip
    """Stands in for `run_chunks`: persists every pending chunk with zero features."""
    for chunk in pending:
        rows = np.arange(chunk.start, chunk.stop, dtype=np.int64)
        partial.write_chunk(
            chunk.split,
            chunk.start,
            features=np.zeros((len(rows), dim), dtype),
            labels=np.array([records[chunk.split][r].label for r in rows], np.int64),
            indices=rows,
            skipped=[],
            seconds=0.0,
        )
    return 0.0


def files_section(n: int, file_kb: int, model: str) -> dict[str, Any]:
    """Section 1: listing, carving, freshness check and extraction minus the model."""
    import sklearn.model_selection  # noqa: F401  (its import, ~1-5 s, is not carving's cost)

    import featurestore.store.extract as extract_module
    from featurestore.data import carve_validation, dataset_fingerprint, read_folder
    from featurestore.store import PartialStore, extract_features

    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-scale-"))
    root, cache = scratch / "chest_xray", scratch / "cache"
    # (stage, wall seconds, CPU seconds of this process, peak RSS after). CPU time is the
    # figure to read on a shared machine: wall time there includes waiting for a core.
    stages: list[tuple[str, float, float, float]] = []

    def timed(name: str, work: Any) -> Any:
        cpu = time.process_time()
        with Timer() as t:
            out = work()
        stages.append((name, t.seconds, time.process_time() - cpu, peak_rss_mb()))
        return out

    real_chunks, real_assemble = extract_module.run_chunks, PartialStore.assemble
    try:
        timed("build the dataset (not a stage)", lambda: build(root, n, file_kb * 1000))
        listed = timed("listing (read_folder)", lambda: read_folder(root))
        manifest = timed("carving (carve_validation)", lambda: carve_validation(listed))
        full = timed("fingerprint, full hash", lambda: dataset_fingerprint(manifest))
        cold = timed(
            "fingerprint, cache cold (hash + record)",
            lambda: dataset_fingerprint(manifest, cache_dir=cache),
        )
        warm = timed(
            "fingerprint, unchanged (stat only)",
            lambda: dataset_fingerprint(manifest, cache_dir=cache),
        )
        assert full == cold == warm
        assembly: list[tuple[float, float]] = []

        def timed_assemble(self: Any, *a: Any, **kw: Any) -> Any:
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return real_assemble(self, *a, **kw)
            finally:
                assembly.append((time.perf_counter() - began, time.process_time() - cpu))

        extract_module.run_chunks = zero_chunks  # type: ignore[assignment]
        PartialStore.assemble = timed_assemble  # type: ignore[method-assign]
        result = timed(
            "extract without the model: 2 fingerprints (stat) + plan + chunks + assembly",
            lambda: extract_features(
                manifest, model=model, weights="none", cache_dir=cache, device="cpu",
                precision="fp32",
            ),
        )  # fmt: skip
        assert result.status == "built" and sum(result.counts.values()) == n
        stages.append(("  of which assembly (chunks -> HDF5)", *assembly[0], peak_rss_mb()))
    finally:
        extract_module.run_chunks = real_chunks  # type: ignore[assignment]
        PartialStore.assemble = real_assemble  # type: ignore[method-assign]
        shutil.rmtree(scratch, ignore_errors=True)
    by_name = {name: c for name, _, c, _ in stages}  # CPU seconds
    full_s = by_name["fingerprint, full hash"]
    stat_s = by_name["fingerprint, unchanged (stat only)"]
    return {
        "images": n,
        "file_kb": file_kb,
        "stages": [
            {
                "stage": name,
                "wall_s": round(w, 3),
                "cpu_s": round(c, 3),
                "cpu_us_per_image": round(c / n * 1e6, 1),
                "peak_rss_mb": rss,
            }
            for name, w, c, rss in stages
        ],
        "fingerprint_full_s": round(full_s, 3),
        "fingerprint_stat_only_s": round(stat_s, 3),
        "fingerprint_speedup": round(full_s / max(stat_s, 1e-9), 2),
    }


def write_big_store(path: Path, rows: dict[str, int], dim: int, chunk: int = 256) -> dict[str, Any]:
    """A float16 store written as extraction writes it; returns the writer's seconds."""
    from featurestore.data import Record
    from featurestore.store import read as store
    from featurestore.store import write as store_write

    rng = np.random.default_rng(0)
    attrs: dict[str, Any] = {
        "format_version": store.FORMAT_VERSION, "backbone": "densenet121", "weights_id": "none",
        "weights_sha256": None, "preprocessing": {"resize": 256, "crop": 224},
        "image_size": 224, "dtype": "float16", "dataset_fingerprint": f"scale-{dim}",
        "class_names": ["NORMAL", "PNEUMONIA"], "positive_index": 1, "carve": None,
        "dataset_root": "", "versions": {},
    }  # fmt: skip
    partial = store_write.PartialStore(path)
    partial.start(attrs)
    records: dict[str, list[Record]] = {}
    plan: dict[str, list[int]] = {}
    direction = rng.normal(0, 1, dim).astype(np.float32)
    block = rng.normal(0, 1, (chunk, dim)).astype(np.float32)  # reused: generation is not timed
    write_s = 0.0
    for split, n in rows.items():
        labels = (rng.random(n) < 0.3).astype(np.int64)
        records[split] = [
            Record(f"{split}/{i:07d}.jpeg", int(labels[i]), split, f"p{i // 3}", split)  # type: ignore[arg-type]
            for i in range(n)
        ]
        plan[split] = list(range(0, n, chunk))
        for start in plan[split]:
            stop = min(start + chunk, n)
            y = labels[start:stop]
            feats = np.roll(block, start, axis=0)[: stop - start] + 0.1 * np.outer(
                y - 0.5, direction
            )
            feats16 = feats.astype(np.float16)
            began = time.perf_counter()
            partial.write_chunk(
                split, start, features=feats16, labels=y, indices=np.arange(start, stop),
                skipped=[], seconds=0.0,
            )  # fmt: skip
            write_s += time.perf_counter() - began
    with Timer() as t:
        partial.assemble(attrs, plan, records, feature_dim=dim, dtype="float16", chunk_rows=chunk)  # type: ignore[arg-type]
    return {"chunk_writes_s": round(write_s, 2), "assembly_s": round(t.seconds, 2)}


def fit_child(store: str, epochs: int, sweep: bool) -> None:
    """Child process: `fit_heads` on `store`; prints seconds and this process's peak RSS."""
    from featurestore.config import SweepConfig
    from featurestore.train import TrainConfig, fit_heads

    config = TrainConfig(epochs=epochs, patience=epochs, device="cpu")
    grid = None
    if sweep:
        lrs = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
        grid = SweepConfig(lrs=lrs, weight_decays=(0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
                           heads=("linear",))  # fmt: skip
    runs = Path(tempfile.mkdtemp(prefix="xray-bench-scale-runs-"))
    try:
        with Timer() as t:
            (summary,) = fit_heads(store=Path(store), runs_dir=runs, head="linear",
                                   config=config, sweep=grid)  # fmt: skip
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    print(json.dumps({"seconds": round(t.seconds, 2), "epochs": summary.epochs_run,
                      "seconds_per_epoch": round(summary.seconds_per_epoch, 3),
                      "peak_rss_mb": peak_rss_mb()}))  # fmt: skip


def store_section(rows: int, dim: int, epochs: int) -> dict[str, Any]:
    """Section 2: write a rows x dim store, then fit one head and a 64-head sweep on it."""
    split_rows = {"train": rows - 2 * (rows // 20), "val": rows // 20, "test": rows // 20}
    scratch = Path(tempfile.mkdtemp(prefix="xray-bench-scale-store-"))
    path = scratch / "big" / f"densenet121-none-224px-{dim}.h5"
    path.parent.mkdir(parents=True)
    try:
        written = write_big_store(path, split_rows, dim)
        fits = {}
        for name, sweep in (("one_head", False), ("sweep_64", True)):
            out = subprocess.run(
                [sys.executable, __file__, "--fit-child", str(path),
                 "--head-epochs", str(epochs), *(["--sweep"] if sweep else [])],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            fits[name] = json.loads(out.strip().splitlines()[-1])
        size_mb = path.stat().st_size / 2**20
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "rows": split_rows,
        "dim": dim,
        **written,
        "store_mb": round(size_mb, 1),
        "features_float32_mb": round(rows * dim * 4 / 2**20, 1),
        "fits": fits,
        "sweep_over_one_per_epoch": round(
            fits["sweep_64"]["seconds_per_epoch"] / fits["one_head"]["seconds_per_epoch"], 2
        ),
    }


def compare_once(n: int, labels: int, boot: int) -> dict[str, float]:
    """What `compare` computes for two multi-label runs on an n x labels test set."""
    import resource

    from featurestore.compare.multilabel import label_metrics
    from featurestore.compare.multilabel_analysis import label_auc_replicates
    from featurestore.compare.stats import delong_roc_test, holm

    rng = np.random.default_rng(0)
    y = (rng.random((n, labels)) < 0.1).astype(np.float64)
    y[rng.random((n, labels)) < 0.05] = np.nan  # masked (uncertain) entries
    signal = np.nan_to_num(y, nan=0.0)
    runs = [1 / (1 + np.exp(-(rng.normal(0, 1, (n, labels)) + k * signal))) for k in (1.0, 1.3)]
    groups = np.array([f"p{i // 3}" for i in range(n)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    with Timer() as t:
        for p in runs:
            reps = label_auc_replicates(y, p, groups=groups, n_boot=boot, seed=0)
            for k in range(labels):
                mask = ~np.isnan(y[:, k])
                label_metrics(y[mask, k], p[mask, k], 0.5)
            np.nanpercentile(reps.mean(1), [2.5, 97.5])
        tests = []
        for k in range(labels):
            mask = ~np.isnan(y[:, k])
            tests.append(delong_roc_test(y[mask, k].astype(np.int64), runs[0][mask, k],
                                         runs[1][mask, k]).p_value)  # fmt: skip
        holm(tests)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"seconds": round(t.seconds, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "peak_rss_growth_mb": round(max(0, grown) / 1024, 1)}  # fmt: skip


def compare_section(n: int, labels: int, boot: int) -> dict[str, Any]:
    """Section 3: the comparison at n and at n / 4 test images (same resamples)."""
    quarter = compare_once(max(12, n // 4), labels, boot)
    full = compare_once(n, labels, boot)
    return {
        "test_images": n,
        "labels": labels,
        "resamples": boot,
        "full": full,
        "quarter": quarter,
        "growth_4x_images": round(full["cpu_s"] / max(quarter["cpu_s"], 1e-9), 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    """Measure, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes of every section")
    parser.add_argument("--images", type=int, default=20_000, help="files (0: skip)")
    parser.add_argument("--file-kb", type=int, default=200, help="bytes per file, in kB")
    parser.add_argument("--model", default="resnet18", help="backbone whose width is stored")
    parser.add_argument("--store-rows", type=int, default=224_000, help="store rows (0: skip)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=25_000, help="(0: skip)")
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--fit-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child is not None:
        fit_child(args.fit_child, args.head_epochs, args.sweep)
        return
    if args.quick:
        args.images, args.file_kb, args.store_rows, args.dim = 300, 2, 3000, 64
        args.head_epochs, args.test_images, args.labels, args.boot = 1, 600, 3, 100
    env = environment()
    files = files_section(args.images, args.file_kb, args.model) if args.images else None
    big = store_section(args.store_rows, args.dim, args.head_epochs) if args.store_rows else None
    comp = compare_section(args.test_images, args.labels, args.boot) if args.test_images else None

    rows: list[tuple[Any, ...]] = []
    notes = []
    if files:
        n = files["images"]
        for st in files["stages"]:
            rows.append((st["stage"], st["wall_s"], st["cpu_s"], st["cpu_us_per_image"],
                         st["peak_rss_mb"]))  # fmt: skip
        notes.append(
            f"freshness check, {n:,} files of {files['file_kb']} kB: stat only "
            f"{files['fingerprint_stat_only_s']:.2f} CPU s vs full hash "
            f"{files['fingerprint_full_s']:.2f} CPU s = {files['fingerprint_speedup']:.1f}x "
            "(target >= 20x; files in the page cache: a disk read makes hashing slower still)"
        )
    if big:
        one, many = big["fits"]["one_head"], big["fits"]["sweep_64"]
        n = sum(big["rows"].values())
        rows.append((f"store {n:,} x {big['dim']}: chunk writes", big["chunk_writes_s"], "-",
                     round(big["chunk_writes_s"] / n * 1e6, 1), "-"))  # fmt: skip
        rows.append(("  assembly (chunks -> HDF5)", big["assembly_s"], "-",
                     round(big["assembly_s"] / n * 1e6, 1), "-"))  # fmt: skip
        for name, fit in (("fit-head, 1 linear head", one), ("fit-head --sweep, 64 heads", many)):
            rows.append((f"{name} ({fit['epochs']} epochs; s/epoch {fit['seconds_per_epoch']})",
                         fit["seconds"], "-", "-", fit["peak_rss_mb"]))  # fmt: skip
        notes.append(
            f"store {big['store_mb']:.0f} MiB on disk (float16), {big['features_float32_mb']:.0f}"
            f" MiB as float32; fit-head peak RSS {one['peak_rss_mb']:.0f} MiB, sweep "
            f"{many['peak_rss_mb']:.0f} MiB; sweep/one per epoch {big['sweep_over_one_per_epoch']}x"
        )
    if comp:
        for name in ("quarter", "full"):
            c = comp[name]
            n = comp["test_images"] if name == "full" else max(12, comp["test_images"] // 4)
            rows.append((f"compare 2 runs, {n:,} x {comp['labels']} labels, {comp['resamples']} "
                         "patient resamples", c["seconds"], c["cpu_s"], "-",
                         c["peak_rss_growth_mb"]))  # fmt: skip
        notes.append(
            f"compare: 4x the test images costs {comp['growth_4x_images']}x the CPU "
            "(linear: 4); the peak RSS column is the growth during the call"
        )
    record = {
        "bench": "scale",
        **env,
        "quick": args.quick,
        "files": files,
        "store": big,
        "compare": comp,
        # The figures tests/test_bench.py and the issue read first:
        "stages": files["stages"] if files else [],
        "fingerprint_full_s": files["fingerprint_full_s"] if files else None,
        "fingerprint_stat_only_s": files["fingerprint_stat_only_s"] if files else None,
        "fingerprint_speedup": files["fingerprint_speedup"] if files else None,
        "peak_rss_mb": peak_rss_mb(),
    }
    emit(
        f"costs that grow with the dataset ({env['cores']} cores)",
        ["stage", "wall s", "CPU s", "µs/row", "peak RSS MiB"],
        rows,
        record,
        notes=notes,
    )


if __name__ == "__main__":
    main()
