"""What a training run records and returns: its config.json document and the RunSummary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore import library_versions

if TYPE_CHECKING:
    from torch import nn

    from featurestore.train import FitResult
    from featurestore.train import TrainConfig

Notice = Callable[[str], None]


@dataclass(frozen=True)
class RunSummary:
    """What a training command reports: where the run is and its test metrics."""

    path: Path
    model: str
    mode: str
    head: str
    threshold: float
    """The validation-chosen threshold (binary); NaN for a multi-class run (argmax)."""
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    test: dict[str, Any]
    """{"at_0.5": {...}, "at_threshold": {...}} as in metrics.json ({"argmax": {...}} for a
    multi-class run)."""


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
    )


def class_counts(
    class_names: Sequence[str], labels: dict[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Images per split and class (config.json; compare's majority baseline uses train's).

    Multi-label targets (N, L): positive images per split and finding.
    """
    if any(np.ndim(y) == 2 for y in labels.values()):
        return {
            split: {name: int(np.sum(np.asarray(y)[:, i] == 1.0)) for i, name in enumerate(class_names)}
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
    return {
        **asdict(config),
        "mode": mode,
        "model": backbone,
        "head": head,
        "seed": config.seed,
        "versions": library_versions(),
        "class_names": names,
        "positive_index": pos,
        "positive_class": names[pos],
        # The task follows from the labels: two classes binary, more multi-class (unless the
        # caller says multi-label, whose class names are the findings).
        "task": extra.pop("task", None) or ("binary" if len(names) == 2 else "multiclass"),
        "trainable_params": trainable,
        "total_params": total,
        **extra,
    }
