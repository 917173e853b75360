"""A study as step-by-step commands: `xray extract`, `fit-head`, `finetune`, `compare`.

Each command spells out every setting its arm changes from the command's own default, so
running them gives the study's runs (on CPU, byte for byte) in another folder. A setting no
flag of the command takes is named in a comment line instead of being dropped silently.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from featurestore.config import ExtractConfig, FinetuneConfig, FitHeadConfig, TrainConfig
from featurestore.study.file import Arm
from featurestore.study.plan import RUNS, Plan

# TrainConfig fields -> flag, per command (fields absent here have no flag on that command).
_TRAIN_FLAGS = {
    "fit-head": ("epochs", "lr", "patience", "monitor", "class_weight", "batch_size", "device",
                 "precision"),
    "finetune": ("epochs", "lr", "patience", "monitor", "class_weight", "batch_size", "device",
                 "backbone_lr_mult", "precision"),
}  # fmt: skip
_FLAG_NAMES = {"threshold_policy": "threshold"}
_EXTRACT_FLAGS = ("batch_size", "workers", "device", "dtype", "precision", "skip_bad",
                  "labels", "uncertain", "rehash", "pixel_cache_gb")  # fmt: skip
_FINETUNE_FLAGS = ("freeze", "augment", "hflip", "workers", "labels", "uncertain",
                   "pixel_cache_gb")  # fmt: skip


def _flag(name: str, value: Any) -> str:
    flag = "--" + _FLAG_NAMES.get(name, name).replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if isinstance(value, float):
        return f"{flag} {value:g}"
    return f"{flag} {value}"


def _changed(
    config: Any, default: Any, allowed: tuple[str, ...], skip: set[str]
) -> tuple[list[str], list[str]]:
    """Flags for the fields of `config` that differ from `default`, and the fields no flag takes."""
    flags, unflagged = [], []
    ours, theirs = asdict(config), asdict(default)
    for f in fields(config):
        if f.name in skip or f.name == "train" or ours[f.name] == theirs[f.name]:
            continue
        if f.name in allowed or f.name == "threshold_policy":
            flags.append(_flag(f.name, ours[f.name]))
        else:
            unflagged.append(f"{f.name} = {ours[f.name]!r}")
    return flags, unflagged


def _seeds(seeds: tuple[int, ...]) -> list[str]:
    """`--seeds N` when the seeds are 0..N-1 (each command's own seeding), else one per seed."""
    if seeds == tuple(range(len(seeds))):
        return [f" --seeds {len(seeds)}" if len(seeds) > 1 else ""]
    return [f" --seed {s}" for s in seeds]


def _train(arm: Arm, command: str, default: TrainConfig) -> tuple[list[str], list[str]]:
    return _changed(arm.train, default, _TRAIN_FLAGS[command], {"seed"})


def study_commands(plan: Plan, stores: dict[str, Path], *, cache: Path) -> list[str]:
    """The study's runs as commands, in the plan's order; `stores`: store key -> store file.

    `# ...` lines name settings an arm changes that the command has no flag for (the
    command then runs with that command's default, not the study's value).
    """
    study = plan.study
    runs_dir = study.folder / RUNS
    data = f"--data {plan.data}"
    out: list[str] = []
    extracted: set[str] = set()
    for arm in study.arms:
        notes: list[str] = []
        if arm.mode == "frozen":
            assert arm.extract is not None and arm.fit is not None
            key = next(r.store for r in plan.runs if r.arm.name == arm.name)
            assert key is not None
            if key not in extracted:
                extracted.add(key)
                e = arm.extract
                flags, unflagged = _changed(e, ExtractConfig(), _EXTRACT_FLAGS,
                                            {"weights", "image_size"})  # fmt: skip
                notes += unflagged
                out.append(
                    f"xray extract --model {arm.model} --weights {e.weights} --image-size "
                    f"{e.image_size} {data} --cache {cache}" + "".join(" " + f for f in flags)
                )
            store = stores.get(key, Path("<store of the extract above>"))
            flags, unflagged = _train(arm, "fit-head", FitHeadConfig().train)
            fit_flags, fit_unflagged = _changed(
                arm.fit, FitHeadConfig(), ("pooling",), {"head", "labels", "uncertain"}
            )
            notes += unflagged + fit_unflagged
            base = (
                f"xray fit-head --store {store} --head {arm.fit.head}"
                + "".join(" " + f for f in flags + fit_flags)
                + f" --runs {runs_dir}"
            )
            if arm.sweep is not None:
                g = arm.sweep
                base += (
                    f' --sweep "lr={",".join(f"{v:g}" for v in g.lrs)} '
                    f'wd={",".join(f"{v:g}" for v in g.weight_decays)} head={",".join(g.heads)}"'
                )
        else:
            ft = arm.finetune
            assert ft is not None
            flags, unflagged = _train(arm, "finetune", FinetuneConfig().train)
            ft_flags, ft_unflagged = _changed(
                ft, FinetuneConfig(), _FINETUNE_FLAGS, {"model", "weights", "image_size"}
            )
            notes += unflagged + ft_unflagged
            base = (
                f"xray finetune --model {arm.model} --weights {ft.weights} --image-size "
                f"{ft.image_size}" + "".join(" " + f for f in flags + ft_flags)
                + f" {data} --runs {runs_dir} --cache {cache}"
            )  # fmt: skip
        if arm.train_fractions:
            base += f" --train-fraction {','.join(f'{v:g}' for v in arm.train_fractions)}"
        if arm.shots_per_class:
            base += f" --shots {','.join(str(v) for v in arm.shots_per_class)}"
        out += [f"# arm {arm.name} sets {n}: no flag of this command takes it" for n in notes]
        out += [base + seeds for seeds in _seeds(study.seeds)]
    out.append(f"xray compare {runs_dir} --bootstrap {study.n_boot}")
    return out
