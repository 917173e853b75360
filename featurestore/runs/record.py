"""What a training run records and returns: its config.json document and the RunSummary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore import library_versions
from featurestore.config import TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from featurestore.runs.result import FitResult

Notice = Callable[[str], None]


@dataclass(frozen=True)
class RunSummary:
    """What a training command reports: where the run is and its test metrics."""

    path: Path
    model: str
    mode: str
    head: str
    threshold: float
    """The validation-chosen threshold (binary); NaN for a multi-class run (argmax) and a
    multi-label one (a threshold per finding, in metrics.json)."""
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    test: dict[str, Any]
    """{"at_0.5": {...}, "at_threshold": {...}} as in metrics.json ({"argmax": {...}} for a
    multi-class run)."""
    threshold_notes: tuple[str, ...] = ()
    """Why an operating point could not be chosen as asked (one-class validation: the run's,
    or single findings'), as metrics.json's `threshold` records it; empty when it ran."""


def summarize(path: Path, model: str, mode: str, head: str, result: FitResult) -> RunSummary:
    """The RunSummary of a finished fit, once its run folder is written."""
    return RunSummary(
        path=path,
        model=model,
        mode=mode,
        head=head,
        threshold=(
            float("nan") if result.threshold["value"] is None else float(result.threshold["value"])
        ),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds_per_epoch=result.seconds_per_epoch,
        test=result.test,
        threshold_notes=tuple(
            result.threshold.get("notes")
            or ([result.threshold["note"]] if result.threshold.get("ran") is False else [])
        ),
    )


def train_size(groups: Sequence[str]) -> dict[str, int]:
    """config.json's `train_images` and `train_patients` of the images a run trained on, from
    their patient ids (N,): a label-efficiency subset's, or all of train (so every run's point
    on a label-efficiency curve has both)."""
    return {"train_images": len(groups), "train_patients": len(set(groups))}


def class_counts(
    class_names: Sequence[str], labels: dict[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Images per split and class (config.json; compare's majority baseline uses train's).

    Multi-label targets (N, L): positive images per split and finding.
    """
    if any(np.ndim(y) == 2 for y in labels.values()):
        return {
            split: {
                name: int(np.sum(np.asarray(y)[:, i] == 1.0)) for i, name in enumerate(class_names)
            }
            for split, y in labels.items()
        }
    return {
        split: {name: int(np.sum(y == i)) for i, name in enumerate(class_names)}
        for split, y in labels.items()
    }


def run_config(
    config: TrainConfig, model: nn.Module, *, mode: str, backbone: str, head: str, **extra: Any
) -> dict[str, Any]:
    """config.json: the resolved TrainConfig plus what identifies the run."""
    from featurestore.models import count_params

    trainable, total = count_params(model)
    names = list(extra.pop("class_names"))
    pos = int(extra.pop("positive_index"))
    kind = extra.pop("task", None) or ("binary" if len(names) == 2 else "multiclass")
    return {
        **asdict(config),
        "mode": mode,
        "model": backbone,
        "head": head,
        "seed": config.seed,
        "versions": library_versions(),
        "class_names": names,
        "positive_index": pos,
        # Only a two-class decision has a positive class; argmax and per-finding rules have none.
        "positive_class": names[pos] if kind == "binary" else None,
        # The task follows from the labels: two classes binary, more multi-class (unless the
        # caller says multi-label, whose class names are the findings).
        "task": kind,
        "trainable_params": trainable,
        "total_params": total,
        **extra,
    }


def run_weights(config: dict[str, Any]) -> str:
    """The backbone weights a run used (`imagenet`, `none`, `file:...`), from its config.json
    or, for a frozen run, its store's provenance; "" when not recorded."""
    store = config.get("store") or {}
    return str(config.get("weights_id") or store.get("weights_id") or config.get("weights") or "")


def run_precision(config: dict[str, Any]) -> str | None:
    """What a run's backbone computed in (`fp32`, `bf16`, `fp16`): its store's `precision` for
    a frozen run (the features the head saw), `resolved_precision` for a fine-tuned one; None
    where the run or its store predates recording it."""
    store = config.get("store")
    if config.get("mode") == "finetune":
        return config.get("resolved_precision")
    return store.get("precision") if isinstance(store, dict) else None


def run_dataset_root(config: dict[str, Any]) -> Path | None:
    """The dataset folder a run was trained on (recorded by the run or by its store)."""
    root = config.get("dataset_root") or (config.get("store") or {}).get("dataset_root")
    return Path(root) if root else None


def is_synthetic(config: dict[str, Any]) -> bool:
    """True when the run's dataset folder holds the marker `xray data synth` writes."""
    from featurestore.data import MARKER

    root = run_dataset_root(config)
    return root is not None and (root / MARKER).is_file()


def run_warnings(config: dict[str, Any]) -> list[str]:
    """What anyone using this run's numbers must know: random weights, synthetic data."""
    out = []
    if run_weights(config) == "none":
        out.append(
            "RANDOM WEIGHTS: this run's backbone was randomly initialised (--weights none): "
            "a pipeline check, not a pretrained model."
        )
    if is_synthetic(config):
        out.append(
            f"SYNTHETIC DATA: this run was trained on the built-in synthetic phantoms "
            f"({run_dataset_root(config)}), not on radiographs."
        )
    return out


def plot_note(config: dict[str, Any]) -> str | None:
    """The short corner note for a run's plots (`RANDOM WEIGHTS / SYNTHETIC DATA`), or None."""
    heads = [w.split(":", 1)[0] for w in run_warnings(config)]
    return " / ".join(heads) if heads else None
