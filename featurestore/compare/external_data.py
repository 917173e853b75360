"""What `xray evaluate` reads of the other dataset: the options a run's task takes, the labels
read as the run read its own (label scheme, uncertainty policy), and classes or findings matched
to the run's by name."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError
from featurestore.tasks import MULTICLASS_RULE, Task


@dataclass(frozen=True)
class Scores:
    """One split of a dataset scored by a run's model, in manifest order."""

    keys: list[str]
    groups: list[str]
    """Patient ids (N,)."""
    labels: np.ndarray
    """(N,) int64 class indices, in the run's class order; multi-label: (N, L') float64
    targets 1/0/NaN (masked) in the dataset's finding order."""
    outputs: np.ndarray
    """(N, C) float64 probabilities of the run's output columns, the model's own output
    (softmax over classes, or a sigmoid per finding)."""
    fingerprint: str
    """The dataset's fingerprint (every file hashed)."""
    positive_index: int = 1

    @property
    def probabilities(self) -> np.ndarray:
        """(N,) float64 P(positive class) of a binary run."""
        return np.asarray(self.outputs[:, self.positive_index])


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate_run` wrote and found."""

    path: Path
    run: str
    dataset: str
    split: str
    images: int
    patients: int
    threshold: dict[str, Any]
    metrics: dict[str, Any]
    """metrics.json's `test`: {"at_0.5": {...}, "at_threshold": {...}}."""
    intervals: dict[str, Any]
    """Metric -> {estimate, lo, hi} at the threshold (None where undefined)."""
    difference: dict[str, Any]
    """Metric -> {external, internal, difference, lo, hi} (None where undefined)."""
    calibration: dict[str, Any]
    local: dict[str, Any] | None
    """The local calibration subset (`--recalibrate N`): patients, images; None without."""
    task: str = "binary"
    """The run's task: `binary`, `multiclass` or `multilabel`."""
    shown: tuple[str, ...] = ()
    """The metrics of `intervals` the terminal table shows, in order (binary: the CLI's own)."""
    notes: tuple[str, ...] = ()
    """What the user must know about this evaluation (findings left out, fits refused)."""


if TYPE_CHECKING:
    from featurestore.data import Manifest


def check_options(task: Task, config: EvaluateConfig, run_name: str) -> None:
    """The options a run's task does not take, refused in one line each.

    Raises:
        XrayError: `--threshold` for a multi-class run (MULTICLASS_RULE), `--uncertain` for a
            single-label run, a `--labels` scheme for a multi-label run.
    """
    if task.multiclass and config.threshold_policy is not None:
        raise XrayError(f"--threshold {config.threshold_policy} for {run_name}: {MULTICLASS_RULE}")
    if not task.multilabel and config.uncertain is not None:
        raise XrayError(
            f"--uncertain is for multi-label runs: {run_name} is a {task.kind} run, whose "
            "labels have no uncertain (-1) entries"
        )
    if task.multilabel and config.labels not in (None, "as-given"):
        raise XrayError(
            f"--labels {config.labels} relabels Kermany NORMAL/PNEUMONIA folders; {run_name} is "
            "a multi-label run (use --uncertain for its uncertain labels)"
        )


def run_uncertain(run_config: dict[str, Any]) -> str:
    """The uncertainty policy a multi-label run's training read its labels with: its
    `uncertain`, else the `uncertain-<policy>` label scheme its store records; `ignore` else."""
    scheme = str(run_config.get("label_scheme") or "")
    if run_config.get("uncertain"):
        return str(run_config["uncertain"])
    return scheme.removeprefix("uncertain-") if scheme.startswith("uncertain-") else "ignore"


def external_manifest(
    data: Path, task: Task, config: EvaluateConfig, run_config: dict[str, Any]
) -> Manifest:
    """The other dataset, read as the run read its own (issue #28.9), its splits as they are:
    nothing is trained on it, so no validation is carved out of its train split.

    Multi-label: with `config.uncertain`, else the run's policy (`run_uncertain`). Single-label:
    with `config.labels`, else the run's `label_scheme`; a dataset that already has the run's
    classes (a three-class CSV for a Kermany-3 run) is taken as given.

    Raises:
        XrayError: a dataset of the other kind (single-label for a multi-label run or back).
    """
    from featurestore.data import load_manifest

    if task.multilabel:
        manifest = load_manifest(data, uncertain=config.uncertain or run_uncertain(run_config),
                                 evaluation_only=True)  # fmt: skip
        if manifest.task != "multilabel":
            raise XrayError(
                f"{data} is single-label ({', '.join(manifest.class_names)}) but the run is "
                "multi-label: evaluate on a dataset with finding columns"
            )
        return manifest
    scheme = config.labels or str(run_config.get("label_scheme") or "as-given")
    if config.labels is None and scheme != "as-given":
        given = load_manifest(data, evaluation_only=True)
        if given.task != "multilabel" and sorted(given.class_names) == sorted(task.class_names):
            return given
    manifest = load_manifest(data, labels=scheme, evaluation_only=True)
    if manifest.task == "multilabel":
        raise XrayError(
            f"{data} is multi-label (findings {', '.join(manifest.class_names)}) but the run is "
            f"{task.kind}: evaluate on a dataset with one label per image"
        )
    return manifest


@dataclass(frozen=True)
class Findings:
    """The findings a multi-label run and the other dataset share, matched by name."""

    names: tuple[str, ...]
    """Shared findings, in the run's order."""
    run_index: tuple[int, ...]
    """Column of each shared finding in the run's outputs."""
    data_index: tuple[int, ...]
    """Column of each shared finding in the dataset's targets."""
    left_out: tuple[str, ...]
    """The run's findings the dataset lacks (not evaluated)."""
    extra: tuple[str, ...]
    """The dataset's findings the run was not trained on (not evaluated)."""

    def left_out_note(self, run_name: str, data: Path) -> str:
        """One line: which findings were left out and why."""
        return (
            f"{data} has no labels for {', '.join(self.left_out)} of {run_name}: evaluating the "
            f"{len(self.names)} shared findings ({', '.join(self.names)})"
        )


def match_findings(data_findings: tuple[str, ...], run_findings: tuple[str, ...],
                   data: Path) -> Findings:  # fmt: skip
    """`xray evaluate`'s finding check for multi-label runs: the findings both have, by name.

    Raises:
        XrayError: when the dataset shares no finding with the run.
    """
    shared = [f for f in run_findings if f in data_findings]
    if not shared:
        raise XrayError(
            f"{data} has findings {', '.join(data_findings)}, none of the run's "
            f"({', '.join(run_findings)}): evaluate on a dataset labelling the same findings"
        )
    return Findings(
        tuple(shared),
        tuple(run_findings.index(f) for f in shared),
        tuple(data_findings.index(f) for f in shared),
        tuple(f for f in run_findings if f not in data_findings),
        tuple(f for f in data_findings if f not in run_findings),
    )


def match_classes(
    manifest: Manifest, run_classes: tuple[str, ...], run_name: str, data: Path
) -> Manifest:
    """`xray evaluate`'s class check: the manifest with its labels renumbered into the run's
    class order, matched by name (another site may list the same classes in another order).

    Raises:
        XrayError: when the dataset's classes are not the run's.
    """
    given = tuple(manifest.class_names)
    if given == run_classes:
        return manifest
    if sorted(given) != sorted(run_classes):
        raise XrayError(
            f"{data} has classes {', '.join(given)} but {run_name} was trained on "
            f"{', '.join(run_classes)}: evaluate on a dataset with the same labels"
        )
    index = [run_classes.index(c) for c in given]  # dataset label -> run label
    records = tuple(replace(r, label=index[r.label]) for r in manifest.records)
    return replace(manifest, class_names=run_classes, records=records)
