"""A seeded multi-label phantom set: a findings CSV with patients, co-occurring findings and
uncertain labels (`xray data synth --task multilabel`)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from featurestore.data.synth import (
    MARKER,
    SynthSummary,
    _check_target,
    draw_anatomy,
    render_radiograph,
)
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from rich.progress import Progress

SYNTHETIC_MULTILABEL_DIR = Path("data/synthetic-multilabel")
"""Where the built-in multi-label set is generated; its manifest is `labels.csv` in it."""
SYNTH_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Opacity")
UNCERTAIN_SHARE = 0.08
"""Fraction of label cells written as -1 (uncertain); the image still shows the truth."""


def _findings(rng: np.random.Generator) -> tuple[int, int, int]:
    """(cardiomegaly, effusion, opacity): effusion is far likelier with a large heart (as in
    heart failure), so findings co-occur; opacity is independent."""
    cardio = int(rng.random() < 0.3)
    effusion = int(rng.random() < (0.6 if cardio else 0.15))
    opacity = int(rng.random() < 0.3)
    return cardio, effusion, opacity


def _effusion(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bright meniscus over the lower lung fields (the costophrenic angles filled in)."""
    h, w = pixels.shape
    v = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    level = rng.uniform(0.35, 0.6)  # how high the fluid reaches (image units, down is +)
    lateral = np.clip((np.abs(u) - 0.12) / 0.3, 0, 1)  # the lungs, not the spine
    meniscus = np.clip((v - level + 0.25 * np.abs(u)) / 0.08, 0, 1) * lateral
    out = pixels.astype(np.float32) + rng.uniform(55, 85) * meniscus
    return np.clip(out, 0, 255).astype(np.uint8)


def generate_synthetic_multilabel(
    out_dir: Path,
    *,
    seed: int = 0,
    patients: int = 120,
    min_side: int = 192,
    max_side: int = 320,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SynthSummary:
    """Write `out_dir/labels.csv` (`path,split,patient,Cardiomegaly,Effusion,Opacity`) and
    `out_dir/images/*.jpeg`: 1-3 images per patient, 20% of patients in test (val is carved
    from train by patient when read), an enlarged heart shadow for Cardiomegaly, a basal
    meniscus for Effusion, a lung opacity for Opacity, and UNCERTAIN_SHARE of cells as -1.

    The summary counts positive images per split and finding (and `images`).
    """
    if seed < 0:
        raise XrayError(f"--seed must be >= 0, got {seed}")
    if patients < 12:
        raise XrayError(f"--patients must be at least 12, got {patients}")
    if not 32 <= min_side <= max_side <= 4096:
        raise XrayError(f"need 32 <= min side <= max side <= 4096, got {min_side} and {max_side}")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    rng = np.random.default_rng((seed, 7))
    n_test = max(3, round(0.2 * patients))
    plan = []  # (split, patient, image index, findings, height, width)
    for patient in range(patients):
        split = "test" if patient < n_test else "train"
        found = _findings(rng)
        for j in range(int(rng.integers(1, 4))):
            height = int(rng.integers(min_side, max_side + 1))
            width = int(np.clip(round(height / rng.uniform(0.8, 1.3)), min_side, max_side))
            plan.append((split, patient, j, found, height, width))
    counts = {s: dict.fromkeys(("images", *SYNTH_FINDINGS), 0) for s in ("train", "val", "test")}
    groups: dict[str, set[int]] = {s: set() for s in counts}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    bar = progress.add_task("synth", total=len(plan), unit="img") if progress else None
    lines = ["path,split,patient," + ",".join(SYNTH_FINDINGS)]
    try:
        (tmp / "images").mkdir()
        for i, (split, patient, j, found, height, width) in enumerate(plan):
            image_rng = np.random.default_rng((seed, 8, i))
            anatomy = draw_anatomy(np.random.default_rng((seed, 9, patient)))
            if found[0]:  # cardiomegaly: a wider, taller heart shadow
                shift, half_w, half_h = anatomy.heart
                anatomy = replace(anatomy, heart=(shift, half_w * 1.45, half_h * 1.25))
            pixels, _ = render_radiograph(
                image_rng, height, width, pneumonia=bool(found[2]), anatomy=anatomy
            )
            if found[1]:
                pixels = _effusion(pixels, image_rng)
            name = f"images/p{patient:04d}_{j}.jpeg"
            Image.fromarray(pixels).save(tmp / name, format="JPEG", quality=92)
            cells = ["-1" if image_rng.random() < UNCERTAIN_SHARE else str(f) for f in found]
            if all(c == "-1" for c in cells):
                # Every finding uncertain is a row the default `--uncertain ignore` refuses:
                # one finding, drawn only in this case (other rows keep their cells), stays
                # certain, so the data reads with every policy.
                keep = int(image_rng.integers(len(found)))
                cells[keep] = str(found[keep])
            lines.append(f"{name},{split},p{patient:04d}," + ",".join(cells))
            counts[split]["images"] += 1
            for f, on in zip(SYNTH_FINDINGS, found, strict=True):
                counts[split][f] += on
            groups[split].add(patient)
            if progress is not None and bar is not None:
                progress.advance(bar)
        (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
        marker = {"generator": "xray synth", "task": "multilabel", "seed": seed,
                  "patients": patients, "counts": counts}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "data")
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts.pop("val")  # val is carved from train by patient when the CSV is read
    return SynthSummary(out_dir, counts, {s: len(g) for s, g in groups.items() if s != "val"})
