"""Shared bench helpers: radiograph-like JPEGs, environment facts, interleaved timing, output."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def environment() -> dict[str, Any]:
    """Cores, CPU model, torch version and threads: the facts a figure depends on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size of this process (or of its waited-for children) in MiB."""
    kb = resource.getrusage(who).ru_maxrss  # KiB on Linux
    return round(kb / 1024, 1)


def radiograph_jpeg(rng: np.random.Generator, height: int, width: int, *, pneumonia: bool) -> bytes:
    """One full-size radiograph-like grayscale JPEG (quality 95).

    The phantom is drawn at 1/4 scale by `featurestore.data.synth.render_radiograph` (drawing it at
    full size takes seconds), upscaled bicubically, and given film-grain noise so the JPEG
    carries real entropy: ~0.2 bytes/pixel, a little more than the real Kermany files
    (~0.09 at their quality), so decoding here is not cheaper than on the real data.
    """
    import io

    from PIL import Image

    from featurestore.data import render_radiograph

    small, _ = render_radiograph(
        rng, max(16, height // 4), max(16, width // 4), pneumonia=pneumonia
    )
    big = Image.fromarray(small, mode="L").resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(big, dtype=np.float32) + rng.normal(0, 1.5, (height, width)).astype(
        np.float32
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(
        buf, "JPEG", quality=95
    )
    return buf.getvalue()


def radiograph_dataset(
    n: int, *, min_side: int = 1000, max_side: int = 2900, seed: int = 0
) -> Path:
    """A Kermany-layout folder of `n` full-size radiograph JPEGs (70/15/15 train/val/test).

    Written once per (n, sizes, seed) under the temp dir and reused by later runs: drawing
    takes ~0.3 s per image. Long sides are spread evenly over [min_side, max_side], aspect
    0.75-0.95 like chest films.
    """
    if n < 6:
        raise ValueError(f"need at least 6 images so every split gets one, got {n}")
    tag = hashlib.sha256(f"v1-{n}-{min_side}-{max_side}-{seed}".encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / "xray-bench" / f"radiographs-{n}-{tag}"
    if (root / "DONE").is_file():
        return root
    rng = np.random.default_rng(seed)
    counts = [round(n * share) for _, share in SPLIT_SHARES]
    counts[0] = n - sum(counts[1:])
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    i = 0
    for (split, _), count in zip(SPLIT_SHARES, counts, strict=True):
        for j in range(count):
            pneumonia = j % 2 == 1
            long_side = int(min_side + (max_side - min_side) * (i / max(1, n - 1)))
            short_side = int(long_side * rng.uniform(0.75, 0.95))
            folder = tmp / split / ("PNEUMONIA" if pneumonia else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"person{i}_bacteria_{j}.jpeg" if pneumonia else f"IM-{i:04d}-0001.jpeg"
            (folder / name).write_bytes(
                radiograph_jpeg(rng, long_side, short_side, pneumonia=pneumonia)
            )
            i += 1
    (tmp / "DONE").write_text("complete\n")
    if root.exists():  # another run finished first
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.rename(root)
    return root


def image_files(root: Path) -> list[Path]:
    """The dataset's JPEG files, sorted."""
    return sorted(root.rglob("*.jpeg"))


def interleave(measurements: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each measurement once per round, alternating the order every round.

    Each callable returns its own figure (e.g. images/s); a noisy neighbour then slows every
    side alike instead of whichever happened to run during the noise.
    """
    names = list(measurements)
    results: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(measurements[name]())
    return results


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


class Timer:
    """Context manager: `.seconds` of wall time inside it."""

    def __enter__(self) -> Timer:
        self.began = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.began


def emit(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    record: dict[str, Any],
    *,
    notes: Sequence[str] = (),
) -> None:
    """Print a rich table of the figures, notes, then the whole record as one JSON line."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False, width=120)
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)
    for note in notes:
        console.print(f"  {note}", highlight=False)
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def forward_inputs(
    model: str, data: Path, *, image_size: int, batch_size: int, chunk_size: int = 256
) -> tuple[Any, Any, Any, Any]:
    """(manifest, preprocessing, channels_last trunk, pre-decoded (B, 3, S, S) batches).

    The batches are exactly what `extract` feeds its trunk: the model's own preprocessing
    after draft-mode decoding, cut as extraction cuts them (per split, per chunk of
    `chunk_size` rows, then `batch_size`), so forward-only and extraction are timed on the
    same work, partial batches at the ends of splits included. The trunk is random-init
    (`--weights none`, seed 0): the arithmetic is measured, not the weights.
    """
    import torch

    from featurestore.data import load_manifest
    from featurestore.models import load_backbone, preprocessing_for

    manifest = load_manifest(data, val_min=0)
    pre = preprocessing_for(model, "none", image_size)
    batches = []
    for split in ("train", "val", "test"):
        records = manifest.split(split)
        tensors = [pre(manifest.open_image(r.key, min_size=pre.resize)) for r in records]
        for start in range(0, len(tensors), chunk_size):
            chunk = tensors[start : start + chunk_size]
            batches.extend(
                torch.stack(chunk[a : a + batch_size]).contiguous(memory_format=torch.channels_last)
                for a in range(0, len(chunk), batch_size)
            )
    torch.manual_seed(0)
    trunk = load_backbone(model, "none").trunk.eval().to(memory_format=torch.channels_last)
    return manifest, pre, trunk, batches


def full_batches(batches: Sequence[Any], batch_size: int) -> list[Any]:
    """The same images re-cut into full batches (the last may be short): forward at its best."""
    import torch

    flat = torch.cat(list(batches))
    return [
        flat[a : a + batch_size].contiguous(memory_format=torch.channels_last)
        for a in range(0, len(flat), batch_size)
    ]
