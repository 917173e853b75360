"""Bench: costs that grow with the dataset, per image, outside the model, at 100,000 files.

Run: .venv/bin/python bench/scale.py [--quick] [--images 100000]

Builds a Kermany-layout folder of N tiny JPEGs in a temp dir (aged 1 h, as a dataset copied
earlier is, so the digest cache may trust them), then times each stage in this process:

- listing (`read_folder`), carving the validation split (`carve_validation`);
- the freshness check (`dataset_fingerprint`): full hash of every file (as before the digest
  cache), first run with the cache (hash + record), then an unchanged dataset (stat only);
- everything `extract_features` does besides the model (planning the chunks, settling the
  store, writing the chunk files, assembling the HDF5 store), with the trunk's work replaced
  by zero features of the backbone's width: the whole call and the assembly alone.

Prints wall and CPU seconds, CPU µs per image for each stage, and the peak RSS after it
(ru_maxrss, MiB). The fingerprint figures count CPU time: the full hash of files in the page
cache, so a cold disk only makes it slower.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
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


def build(root: Path, n: int) -> None:
    """N files: 3 images per patient; 60 val images (< 100: carving runs), 10% test."""
    data = tiny_jpeg()
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


def main() -> None:
    """Measure, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--model", default="resnet18", help="backbone whose width is stored")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.images

    import sklearn.model_selection  # noqa: F401  (its import, ~1-5 s, is not carving's cost)

    import featurestore.store.extract as extract_module
    from featurestore.data import carve_validation, dataset_fingerprint, read_folder
    from featurestore.store import PartialStore, extract_features

    env = environment()
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

    try:
        timed("build the dataset (not a stage)", lambda: build(root, n))
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
        assemble = PartialStore.assemble

        def timed_assemble(self: Any, *a: Any, **kw: Any) -> Any:
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return assemble(self, *a, **kw)
            finally:
                assembly.append((time.perf_counter() - began, time.process_time() - cpu))

        extract_module.run_chunks = zero_chunks  # type: ignore[assignment]
        PartialStore.assemble = timed_assemble  # type: ignore[method-assign]
        result = timed(
            "extract without the model: fingerprint (stat) + plan + chunks + assembly",
            lambda: extract_features(
                manifest, model=args.model, weights="none", cache_dir=cache, device="cpu",
                precision="fp32",
            ),
        )  # fmt: skip
        assert result.status == "built" and sum(result.counts.values()) == n
        stages.append(("  of which assembly (chunks -> HDF5)", *assembly[0], peak_rss_mb()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = [(name, s, c, c / n * 1e6, rss) for name, s, c, rss in stages]
    by_name = {name: c for name, _, c, _ in stages}  # CPU seconds
    full_s = by_name["fingerprint, full hash"]
    stat_s = by_name["fingerprint, unchanged (stat only)"]
    record = {
        "bench": "scale",
        **env,
        "quick": args.quick,
        "images": n,
        "stages": [
            {
                "stage": name,
                "wall_s": round(s, 3),
                "cpu_s": round(c, 3),
                "cpu_us_per_image": round(c / n * 1e6, 1),
                "peak_rss_mb": rss,
            }
            for name, s, c, rss in stages
        ],
        "fingerprint_full_s": round(full_s, 3),
        "fingerprint_stat_only_s": round(stat_s, 3),
        "fingerprint_speedup": round(full_s / stat_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }
    emit(
        f"per-image costs outside the model ({n:,} tiny files, {env['cores']} cores)",
        ["stage", "wall s", "CPU s", "CPU µs/image", "peak RSS MiB"],
        rows,
        record,
        notes=[
            f"freshness check on an unchanged dataset: {stat_s:.2f} CPU s (stat only) vs "
            f"{full_s:.2f} CPU s (full hash), {full_s / stat_s:.1f}x; tiny files make hashing "
            "cheap here: on full-size images the full hash grows with the bytes, stat does not"
        ],
    )


if __name__ == "__main__":
    main()
