"""`xray study run`: every arm x seed through the library's own extract / fit-head / finetune.

Each store is extracted once for every frozen arm on it; every finished run is recorded in the
study folder's ledger at once, so a study killed half-way resumes with the runs it finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.fileio import atomic_write_bytes
from featurestore.study.file import Study
from featurestore.study.plan import (
    LEDGER,
    RECORD,
    RUNS,
    Plan,
    PlannedRun,
    load_manifests,
    make_plan,
    read_ledger,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

Notice = Callable[[str], None]


@dataclass(frozen=True)
class StudyRun:
    """What `run_study_file` did."""

    plan: Plan
    trained: list[PlannedRun]
    reused: list[PlannedRun]
    paths: dict[str, Path]
    """Run key -> run folder, for every run of the plan."""
    stores: dict[str, Path]
    """Store key -> store file, for the stores opened."""
    seconds: float


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _eta(left: list[PlannedRun], spent: dict[str, list[float]]) -> str:
    """Time left: each run to train at the mean time of its mode's runs so far."""
    every = [s for v in spent.values() for s in v]
    if not every:
        return "unknown until the first run ends"
    mean = sum(every) / len(every)
    total = sum(
        sum(spent[r.arm.mode]) / len(spent[r.arm.mode]) if spent.get(r.arm.mode) else mean
        for r in left
    )
    return f"about {_duration(total)}"


def record_study(plan: Plan, paths: dict[str, Path], stores: dict[str, Path]) -> dict[str, Any]:
    """study.json: the file's hash, the data, and every run used (path + config hash)."""
    study = plan.study
    return {
        "name": study.name,
        "source": study.source,
        "file": "study.toml",
        "sha256": study.sha256,
        "data": str(plan.data),
        "task": plan.task,
        "fingerprints": plan.fingerprints,
        "seeds": list(study.seeds),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stores": {k: str(v) for k, v in stores.items()},
        "runs": [
            {
                "arm": r.arm.name,
                "seed": r.seed,
                "point": r.point,
                "config_hash": r.key,
                "path": str(paths[r.key].relative_to(study.folder))
                if paths[r.key].is_relative_to(study.folder)
                else str(paths[r.key]),
            }
            for r in plan.runs
            if r.key in paths
        ],
    }


def _auto_precision(study: Study) -> str | None:
    """The line that says what `precision = auto` (the default) resolved to on this CPU, when
    some arm's backbone runs on CPU at auto; None otherwise."""
    import torch

    from featurestore.devices import resolve_device, resolve_precision

    devices = [
        (arm.extract.device if arm.extract is not None else arm.train.device)
        for arm in study.arms
        if (arm.extract.precision if arm.extract is not None else arm.train.precision)
        in (None, "auto")
    ]
    if not any(resolve_device(d).type == "cpu" for d in devices):
        return None
    got = resolve_precision("auto", torch.device("cpu"), cuda_auto="bf16")
    why = "it computes bf16 natively" if got == "bf16" else "it has no native bf16"
    return (
        f"precision auto: backbones compute in {got} on this CPU ({why}); "
        'precision = "fp32" in the study file (xray demo --precision fp32) runs float32'
    )


def run_study_file(
    study: Study,
    *,
    data: Path,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
) -> StudyRun:
    """Run every arm x seed of `study` not already done; returns the plan and the run folders.

    The study folder (`study.folder`) receives study.toml (the file as given), study.json (its
    sha256 and every run used), ledger.json (run key -> folder) and runs/ (the run folders).

    Raises:
        XrayError: from planning (unknown backbone, unreadable data) or from the library's
            extraction and training, as each command raises it.
    """
    from featurestore.store import extract_features, open_store
    from featurestore.train import finetune, fit_head_on_store

    say = notice or (lambda _msg: None)
    began = time.perf_counter()
    manifests = load_manifests(study, data)
    plan = make_plan(study, data, manifests=manifests)
    study = plan.study  # weights resolved
    folder = study.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.toml").write_text(study.text)
    ledger = read_ledger(folder)
    runs_dir = folder / RUNS
    paths: dict[str, Path] = {r.key: r.reuse for r in plan.runs if r.reuse is not None}
    opened: dict[str, Any] = {}
    store_paths: dict[str, Path] = {}
    if plan.random_init:
        say(
            "This study uses RANDOMLY INITIALISED backbones (weights none): the study checks "
            "the pipeline end to end; its numbers say nothing about pretrained transfer."
        )
    auto = _auto_precision(study)
    if auto:
        say(auto)
    for s in plan.stores:
        if not s.train:
            continue
        e = s.extract
        result = extract_features(
            manifests[f"{s.labels}/{s.uncertain}"], model=s.model, weights=e.weights,
            cache_dir=study.cache, image_size=e.image_size, batch_size=e.batch_size,
            workers=e.workers, device=e.device, dtype=e.dtype, precision=e.precision,
            rehash=e.rehash, skip_bad=e.skip_bad, pixel_cache_gb=e.pixel_cache_gb,
            progress=progress, notice=say,
        )  # fmt: skip
        say(f"store {result.path}: {result.status}")
        opened[s.key] = open_store(result.path)
        store_paths[s.key] = result.path
    total = len(plan.runs)
    trained: list[PlannedRun] = []
    reused: list[PlannedRun] = []
    spent: dict[str, list[float]] = {}
    for i, r in enumerate(plan.runs):
        left = [q for q in plan.runs[i + 1 :] if q.reuse is None]
        if r.reuse is not None:
            reused.append(r)
            stored = ledger.get(r.key, {}).get("store")
            if r.store is not None and stored:
                store_paths.setdefault(r.store, Path(stored))
            say(f"[{i + 1}/{total}] {r.label}: reused {r.reuse} (config unchanged, run complete)")
            continue
        t0 = time.perf_counter()
        arm = r.arm
        config = replace(arm.train, seed=r.seed)
        fraction = r.point if arm.train_fractions else None
        shots = int(r.point) if arm.shots_per_class and r.point is not None else None
        if arm.mode == "frozen":
            assert arm.fit is not None and r.store is not None
            summary = fit_head_on_store(
                opened[r.store], head=arm.fit.head, config=config, runs_dir=runs_dir,
                progress=progress, console=console, pooling=arm.fit.pooling, sweep=arm.sweep,
                train_fraction=fraction, shots=shots,
            )  # fmt: skip
        else:
            ft = arm.finetune
            assert ft is not None
            scheme = f"{arm.labels}/{arm.uncertain}"
            summary = finetune(
                data=data, model=arm.model, weights=ft.weights, freeze=ft.freeze,
                image_size=ft.image_size, augment=ft.augment, hflip=ft.hflip,
                workers=ft.workers, runs_dir=runs_dir, config=config, progress=progress,
                console=console, notice=say, manifest=manifests[scheme],
                fingerprint=plan.fingerprints[scheme], labels=arm.labels,
                uncertain=arm.uncertain, train_fraction=fraction, shots=shots,
                pixel_cache_dir=study.cache, pixel_cache_gb=ft.pixel_cache_gb,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        spent.setdefault(arm.mode, []).append(seconds)
        paths[r.key] = summary.path
        trained.append(r)
        ledger[r.key] = {
            "path": str(summary.path.relative_to(folder)),
            "arm": arm.name,
            "seed": r.seed,
            "point": r.point,
            "seconds": round(seconds, 3),
            "store": str(store_paths[r.store]) if r.store in store_paths else None,
            "payload": r.payload,
        }
        _write_json(folder / LEDGER, {"runs": ledger})
        done = i + 1
        say(
            f"[{done}/{total}] {r.label}: trained in {_duration(seconds)} -> {summary.path}; "
            f"{len(left)} to train, {_eta(left, spent)} left"
        )
    if not (folder / LEDGER).is_file():
        _write_json(folder / LEDGER, {"runs": ledger})
    _write_json(folder / RECORD, record_study(plan, paths, store_paths))
    return StudyRun(plan, trained, reused, paths, store_paths, time.perf_counter() - began)


def plan_as_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON (`--dry-run --json`)."""
    return {
        "study": plan.study.name,
        "folder": str(plan.study.folder),
        "task": plan.task,
        "stores": [
            {"model": s.model, "extract": asdict(s.extract), "needed": s.train} for s in plan.stores
        ],
        "runs": [
            {
                "arm": r.arm.name,
                "seed": r.seed,
                "point": r.point,
                "config_hash": r.key,
                "action": "reuse" if r.reuse else "train",
                "path": str(r.reuse) if r.reuse else None,
            }
            for r in plan.runs
        ],
    }
