"""Seeded phantom chest radiographs in the Kermany layout: the built-in default dataset."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from featurestore.config import SynthConfig
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from rich.progress import Progress

# Difficulty, measured by hand (defaults: 120 patients, 298 images; seeds 0/1/2/3): a standardized
# logistic regression on random-init ResNet-18 global-pooled features (128 px) reaches test AUC
# 0.82/0.86/0.90/0.80; the mean pixel alone 0.45/0.47/0.47/0.43; (width, height) alone <= 0.49.
# The knobs are the opacity strengths (added attenuation; lung fields sit ~0.2 below soft
# tissue) and the share of subtle cases.
SUBTLE_SHARE = 0.2
"""Fraction of PNEUMONIA images whose opacity is faint."""
SUBTLE_STRENGTH = (0.1, 0.18)
CLEAR_STRENGTH = (0.28, 0.48)
MARKER = ".xray-synth.json"
"""Written at the dataset root; only folders carrying it (or empty ones) may be overwritten."""
CLASSES = ("NORMAL", "PNEUMONIA")
SYNTH_TASKS = ("binary", "multiclass")
"""`binary`: opacity kinds drawn at random. `multiclass`: bacterial (`_bacteria_` in the name)
pneumonia drawn as lobar consolidation, viral (`_virus_`) as patchy bilateral opacity, the
textbook radiographic patterns, so `--labels kermany3` poses a learnable three-class task."""
SYNTH_OPACITY: dict[str, OpacityKind] = {"bacteria": "lobar", "virus": "patchy"}
OpacityKind = Literal["patchy", "lobar"]


@dataclass(frozen=True)
class SynthSummary:
    """What `generate_synthetic` wrote."""

    root: Path
    counts: dict[str, dict[str, int]]
    """split -> class -> images."""
    patients: dict[str, int]
    """split -> patients."""


@dataclass(frozen=True)
class Anatomy:
    """Per-patient body shape, shared by all images of one patient (in [-1, 1] image units)."""

    thorax: tuple[float, float]
    """Half-width and half-height of the soft-tissue ellipse."""
    lung: tuple[float, float]
    """Half-width and half-height of a lung field."""
    lobes: tuple[float, float, float, float]
    """Amplitude and phase of the 2nd and 3rd harmonics of the lung outline."""
    heart: tuple[float, float, float]
    """Heart shadow: x shift (towards the image right), half-width, half-height."""
    rib_spacing: float


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random plausible body shape."""
    u = rng.uniform
    return Anatomy(
        thorax=(u(0.78, 0.92), u(0.95, 1.1)),
        lung=(u(0.26, 0.33), u(0.52, 0.64)),
        lobes=(u(0.03, 0.08), u(0, 2 * np.pi), u(0.02, 0.05), u(0, 2 * np.pi)),
        heart=(u(0.08, 0.15), u(0.3, 0.38), u(0.2, 0.26)),
        rib_spacing=u(0.11, 0.14),
    )


def _soft(z: np.ndarray, edge: float) -> np.ndarray:
    """Smooth step from 0 (z < 0) to 1 (z > 0) over a width of about `edge`."""
    return 0.5 * (1.0 + np.tanh(z / edge))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise (h, w), unit scale: a (cells+1)^2 random grid, smoothstep-upsampled."""

    def weights(n: int) -> tuple[np.ndarray, np.ndarray]:  # grid index (n,) and blend (n, 1)
        pos = np.linspace(0, cells, n, dtype=np.float32)
        i0 = np.minimum(pos.astype(int), cells - 1)
        f = pos - i0
        return i0, (f * f * (3 - 2 * f))[:, None]

    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    # Separable interpolation by indexing (no BLAS: its threads fight over shared cores).
    iy, fy = weights(h)
    rows = (1 - fy) * grid[iy] + fy * grid[iy + 1]  # (h, cells+1)
    ix, fx = weights(w)
    return ((1 - fx) * rows.T[ix] + fx * rows.T[ix + 1]).T  # (h, w)


def _opacity(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    lungs: tuple[np.ndarray, np.ndarray],
    kind: OpacityKind,
) -> np.ndarray:
    """An opacity field (H, W) in [0, 1] confined to the lung fields."""
    h, w = x.shape
    patch = 0.75 + 0.25 * np.clip(_smooth_noise(rng, h, w, 10), -1, 1)
    if kind == "patchy":
        both = lungs[0] + lungs[1]
        inside = np.flatnonzero(both > 0.7)
        if inside.size == 0:  # only on images too tiny to hold a lung field
            inside = np.array([int(np.argmax(both))])
        field = np.zeros((h, w), dtype=np.float32)
        for idx in rng.choice(inside, size=int(rng.integers(3, 8))):
            sigma = rng.uniform(0.06, 0.15)
            d2 = (x - x.flat[idx]) ** 2 + (y - y.flat[idx]) ** 2
            field += rng.uniform(0.5, 1.0) * np.exp(-d2 / (2 * sigma**2))
        field = np.minimum(field, 1.0) * both
    else:
        # One lobe of one lung: the region above or below an oblique fissure.
        lung = lungs[int(rng.integers(2))]
        fissure = rng.uniform(-0.1, 0.25) + rng.uniform(-0.3, 0.3) * x
        side = 1.0 if rng.random() < 0.6 else -1.0  # lower lobes more often
        field = lung * _soft(side * (y - fissure), 0.05)
    return (field * patch).astype(np.float32)


def render_radiograph(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    pneumonia: bool,
    anatomy: Anatomy | None = None,
    opacity_kind: OpacityKind | None = None,
    opacity_strength: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom PA chest radiograph: (H, W) uint8 image and (H, W) bool opacity mask.

    The mask is all False unless `pneumonia`; `opacity_kind` and `opacity_strength` (added
    attenuation, ~0.1 faint to ~0.5 obvious) default to random draws. The opacity has its own
    generator, so the same `rng` state gives the same patient and exposure with and without it.
    """
    opacity_rng = np.random.default_rng(int(rng.integers(2**63)))
    a = anatomy or draw_anatomy(rng)
    # Pose: (u, v) are image coordinates in [-1, 1]; (x, y) the body frame, y pointing down.
    v, u = np.meshgrid(
        np.linspace(-1, 1, height, dtype=np.float32),
        np.linspace(-1, 1, width, dtype=np.float32),
        indexing="ij",
    )
    # Python-float scalars keep every (H, W) array float32 (numpy scalars would promote).
    angle, scale = float(np.deg2rad(rng.uniform(-6, 6))), rng.uniform(0.88, 1.06)
    tx, ty = (float(t) for t in rng.uniform(-0.06, 0.06, 2))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    x = (cos * (u - tx) + sin * (v - ty)) / scale
    y = (-sin * (u - tx) + cos * (v - ty)) / scale
    ax = np.abs(x)

    thorax = _soft(1 - np.hypot(x / a.thorax[0], (y - 0.08) / a.thorax[1]), 0.03)
    lungs = []
    for sx in (-1.0, 1.0):  # image left = patient's right lung, the larger one
        cx, cy = sx * (0.36 if sx < 0 else 0.38), -0.05
        rx = a.lung[0] * (0.92 if sx > 0 else 1.0) * (0.82 + 0.18 * (y - cy) / a.lung[1])
        theta = np.arctan2(y - cy, x - cx)
        rim = (
            1
            + a.lobes[0] * np.cos(2 * theta + a.lobes[1])
            + a.lobes[2] * np.cos(3 * theta + a.lobes[3])
        )
        lungs.append(_soft(rim - np.hypot((x - cx) / rx, (y - cy) / a.lung[1]), 0.05))
    lung_any = np.maximum(lungs[0], lungs[1])
    mediastinum = _soft(0.09 - ax, 0.04) * _soft(0.3 - y, 0.08) * thorax
    heart = _soft(1 - np.hypot((x - a.heart[0]) / a.heart[1], (y - 0.28) / a.heart[2]), 0.12)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * y / 0.12)
    spine = _soft(0.06 - np.abs(x), 0.015) * vertebrae * thorax
    # Posterior ribs: arcs rising from the spine and falling laterally, one every rib_spacing.
    arc = y + 0.5 * ax - 1.5 * ax * ax
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * arc / a.rib_spacing)) ** 6
    ribs *= _soft(arc + 0.75, 0.05) * _soft(0.45 - arc, 0.05) * _soft(ax - 0.05, 0.02)

    att = 0.42 * thorax - 0.22 * lung_any + 0.12 * mediastinum + 0.14 * heart + 0.08 * spine
    att += 0.06 * ribs * thorax
    att += thorax * (0.03 * _smooth_noise(rng, height, width, 5))
    # Vascular markings: mid-frequency texture, fading towards the lung periphery.
    att += lung_any * (0.02 * np.abs(_smooth_noise(rng, height, width, 28)))

    mask = np.zeros((height, width), dtype=bool)
    if pneumonia:
        o = opacity_rng
        kind = opacity_kind or ("patchy" if o.random() < 0.6 else "lobar")
        strength = opacity_strength
        if strength is None:
            lo, hi = SUBTLE_STRENGTH if o.random() < SUBTLE_SHARE else CLEAR_STRENGTH
            strength = o.uniform(lo, hi)
        field = _opacity(o, x, y, (lungs[0], lungs[1]), kind)
        att += strength * field
        mask = field > 0.3 * field.max()

    # Exposure: contrast, gamma and a lateral gradient vary per image. Like automatic exposure
    # control, the mean brightness is set to a random target, so an opacity does not shift it.
    img = rng.uniform(1.1, 1.6) * att
    img += rng.uniform(0.3, 0.45) - float(img.mean())
    img += rng.uniform(-0.06, 0.06) * u + rng.uniform(-0.04, 0.04) * v
    img = np.clip(img, 0, 1) ** rng.uniform(0.75, 1.3)
    img += rng.uniform(0.008, 0.025) * rng.standard_normal(img.shape, dtype=np.float32)
    pixels = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return pixels, mask


@dataclass(frozen=True)
class _Planned:
    """One image to draw: where it goes and its size."""

    split: str
    label: str
    name: str
    patient: int
    height: int
    width: int


def _patient_plan(patients: int) -> list[tuple[str, str, int]]:
    """(split, class, images or 0 for random) per patient: tiny val, ~27% test, 3:1 train."""
    plan = [(s, c, 2) for s in ("val",) for c in CLASSES for _ in range(2)]  # 8 val images
    rest = patients - len(plan)
    n_test = round(0.27 * rest)
    n_train = rest - n_test
    # Test ~ 3:5 NORMAL:PNEUMONIA like the real 234:390; train ~ 1:3.
    for split, n, normal_share in (("train", n_train, 0.25), ("test", n_test, 0.375)):
        n_normal = max(1, round(normal_share * n))
        plan += [(split, "NORMAL", 0)] * n_normal + [(split, "PNEUMONIA", 0)] * (n - n_normal)
    return plan


def _plan_images(
    rng: np.random.Generator, patients: int, min_side: int, max_side: int
) -> list[_Planned]:
    """Every image with a Kermany file name; sizes drawn independently of the class."""
    plan = _patient_plan(patients)
    pool = max(2000, 4 * patients)
    person_ids = iter(rng.permutation(np.arange(1, pool))[:patients])
    im_ids = iter(rng.permutation(np.arange(1, pool))[:patients])
    counters = {"bacteria": 0, "virus": 0}
    images: list[_Planned] = []
    for patient, (split, label, fixed) in enumerate(plan):
        n = fixed or int(rng.integers(1, 5))
        if label == "PNEUMONIA":
            person, kind = int(next(person_ids)), "bacteria" if rng.random() < 0.65 else "virus"
        else:
            im_number = int(next(im_ids))
        for j in range(n):
            if label == "PNEUMONIA":
                counters[kind] += 1
                name = f"person{person}_{kind}_{counters[kind]}.jpeg"
            else:
                prefix = "NORMAL2-" if rng.random() < 0.25 else ""
                name = f"{prefix}IM-{im_number:04d}-{j + 1:04d}.jpeg"
            # Not square: height/width aspect in [0.8, 1.3], both sides within the bounds.
            height = int(rng.integers(min_side, max_side + 1))
            width = int(np.clip(round(height / rng.uniform(0.8, 1.3)), min_side, max_side))
            images.append(_Planned(split, label, name, patient, height, width))
    return images


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless asked to, and never one we did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise XrayError(f"{out_dir} exists and is not a folder: choose another output path")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise XrayError(
            f"{out_dir} already exists and is not empty: pass --overwrite to replace it"
        )
    if not (out_dir / MARKER).is_file():
        raise XrayError(
            f"refusing to overwrite {out_dir}: it is not a synthetic dataset written by xray "
            f"(no {MARKER}); choose another output folder"
        )


_SYNTH = SynthConfig()


def generate_synthetic(
    out_dir: Path,
    *,
    seed: int = _SYNTH.seed,
    patients: int = _SYNTH.patients,
    min_side: int = _SYNTH.min_side,
    max_side: int = _SYNTH.max_side,
    overwrite: bool = False,
    progress: Progress | None = None,
    task: str = _SYNTH.task,
) -> SynthSummary:
    """Write the seeded phantom dataset to out_dir/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.

    `task="multiclass"` ties the opacity pattern to the file name's pneumonia kind (see
    SYNTH_TASKS); the files and their layout are the same, and the summary counts NORMAL,
    BACTERIAL and VIRAL (the classes `--labels kermany3` reads). The binary set is unchanged.
    """
    if task not in SYNTH_TASKS:
        raise XrayError(f"unknown --task {task!r}; choose one of: {', '.join(SYNTH_TASKS)}")
    if seed < 0:
        raise XrayError(f"--seed must be >= 0, got {seed}")
    if patients < 12:
        raise XrayError(f"--patients must be at least 12 (val alone uses 4), got {patients}")
    if not 32 <= min_side <= max_side <= 4096:
        raise XrayError(f"need 32 <= min side <= max side <= 4096, got {min_side} and {max_side}")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    images = _plan_images(np.random.default_rng(seed), patients, min_side, max_side)
    anatomies: dict[int, Anatomy] = {}
    names = CLASSES if task == "binary" else ("NORMAL", "BACTERIAL", "VIRAL")
    counts = {s: dict.fromkeys(names, 0) for s in ("train", "val", "test")}
    groups: dict[str, set[int]] = {s: set() for s in counts}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename at the end: no half-written dataset is ever left.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    bar = progress.add_task("synth", total=len(images), unit="img") if progress else None
    try:
        for i, im in enumerate(images):
            if im.patient not in anatomies:
                anatomies[im.patient] = draw_anatomy(np.random.default_rng((seed, 1, im.patient)))
            kind = None  # binary: drawn at random by the opacity's own generator
            if task == "multiclass" and im.label == "PNEUMONIA":
                kind = SYNTH_OPACITY["bacteria" if "_bacteria_" in im.name else "virus"]
            # One generator per image: an image depends only on (seed, index).
            pixels, _ = render_radiograph(
                np.random.default_rng((seed, 2, i)),
                im.height,
                im.width,
                pneumonia=im.label == "PNEUMONIA",
                anatomy=anatomies[im.patient],
                opacity_kind=kind,
            )
            folder = tmp / im.split / im.label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / im.name, format="JPEG", quality=92)
            shown = im.label
            if task == "multiclass" and im.label == "PNEUMONIA":
                shown = "BACTERIAL" if "_bacteria_" in im.name else "VIRAL"
            counts[im.split][shown] += 1
            groups[im.split].add(im.patient)
            if progress is not None and bar is not None:
                progress.advance(bar)
        settings: dict[str, int | str] = {
            "seed": seed,
            "patients": patients,
            "min_side": min_side,
            "max_side": max_side,
        }
        if task != "binary":  # the binary marker stays as it was
            settings["task"] = task
        marker = {"generator": "xray synth", **settings, "counts": counts}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "data")
            try:
                tmp.rename(out_dir)
            except OSError:
                (old / "data").rename(out_dir)  # put the previous dataset back
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthSummary(out_dir, counts, {s: len(g) for s, g in groups.items()})


def synth_label_hint(data: Path, labels: str) -> str | None:
    """A note when a built-in three-class set (`xray data synth --task multiclass`, its
    NORMAL/PNEUMONIA folders named by pneumonia kind) is read as given, i.e. as binary; None
    otherwise (any other data, or `--labels kermany3`)."""
    marker = Path(data) / MARKER
    if labels != "as-given" or not marker.is_file():
        return None
    try:
        task = json.loads(marker.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None
    if task != "multiclass":
        return None
    return (
        f"{data} is the built-in three-class set, read as given: binary NORMAL vs PNEUMONIA; "
        "pass --labels kermany3 for its three classes (NORMAL, BACTERIAL, VIRAL)"
    )
