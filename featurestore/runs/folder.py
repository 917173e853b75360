"""Run folders: written atomically (temporary name, then rename), read back as RunRecord."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import XrayError
from featurestore.fileio import atomic_dir, claim_dir
from featurestore.tasks import Task

if TYPE_CHECKING:
    from torch import Tensor

    from featurestore.runs.result import FitResult, SplitPredictions

RUN_FILES = ("config.json", "history.csv", "metrics.json", "predictions.csv", "best.pt")
PLOT_FILES = ("curves.png", "confusion.png", "roc.png")
PREDICTION_COLUMNS = ("split", "key", "patient", "label", "probability", "prediction")
INPROGRESS = ".inprogress"
EVALUATION_FILE = "evaluation.json"
# An evaluation folder (`xray evaluate`) holds what compare reads of a run, without weights.
EVALUATION_FILES = (
    "config.json",
    "history.csv",
    "metrics.json",
    "predictions.csv",
    EVALUATION_FILE,
)

# The columns of history.csv, one row per epoch.
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "train_f1",
    "val_loss",
    "val_acc",
    "val_f1",
    "val_auc",
    "seconds",
)


def run_name(model: str, mode: str, seed: int, *, when: datetime | None = None) -> str:
    """`<YYYYmmdd-HHMMSS>-<model>-<mode>-s<seed>`."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    safe = model.replace(":", "_").replace("/", "--")  # `hf:org/model` -> `hf_org--model`
    return f"{stamp}-{safe}-{mode}-s{seed}"


def config_hash(payload: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able settings dict (names the in-progress folder)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def inprogress_dir(runs_dir: Path, model: str, mode: str, settings: dict[str, Any]) -> Path:
    """Stable folder of an a training's last.pt: `runs/.inprogress/<model>-<mode>-<hash>`."""
    safe = model.replace(":", "_").replace("/", "--")
    return runs_dir / INPROGRESS / f"{safe}-{mode}-{config_hash(settings)}"


def write_run(
    runs_dir: Path,
    *,
    model: str,
    mode: str,
    config: dict[str, Any],
    result: FitResult,
    state_dict: dict[str, Tensor] | None = None,
    plots: bool = True,
    when: datetime | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete run folder under `.<name>.tmp`, then rename it; returns the final path.

    `config` is the resolved config.json document (it must hold `seed`); `state_dict` defaults to
    the best state of `result`; `extra(folder)` writes mode-specific files (a sweep's
    sweep.csv) into the folder before it is renamed, so they are as atomic as the rest.
    """
    import torch

    # Claimed exclusively: two trainings writing into one --runs folder at the same second get
    # distinct folders and never touch each other's files.
    final = claim_dir(runs_dir, run_name(model, mode, int(config.get("seed", 0)), when=when))
    # A full disk is the user's to fix: one line, and no half-written folder left behind.
    with atomic_dir(final, claimed=True) as tmp:
        _write_json(tmp / "config.json", config)
        write_history(tmp / "history.csv", result.history)
        _write_json(tmp / "metrics.json", result.metrics_json())
        _write_json(tmp / "timing.json", result.timing_json())
        write_predictions(tmp / "predictions.csv", result, config.get("class_names"))
        torch.save(state_dict if state_dict is not None else result.best_state, tmp / "best.pt")
        if plots:
            from featurestore.plots import write_plots
            from featurestore.runs.record import plot_note

            write_plots(
                tmp / "plots",
                result,
                class_names=config["class_names"],
                positive_index=int(config["positive_index"]),
                note=plot_note(config),
            )
        if extra is not None:
            extra(tmp)
    return final


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """history.csv: one row per epoch with the contract's columns, then any extra column the
    rows carry (the logreg head's `C`: its rows are values of C, not epochs)."""
    extra = sorted(set(history[0]) - set(HISTORY_COLUMNS)) if history else []
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*HISTORY_COLUMNS, *extra])
        for row in history:
            values = [float(row[c]) for c in (*HISTORY_COLUMNS[1:], *extra)]
            # NaN (no learning rate for a C sweep) is an empty cell, never "nan".
            writer.writerow([int(row["epoch"])] + ["" if v != v else repr(v) for v in values])


TRAIN_SUBSET_FILE = "train_subset.csv"
"""A label-efficiency run's training rows (`key,patient,label`): what it learnt from."""


def write_train_subset(
    path: Path,
    keys: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[Any],
    *,
    findings: Sequence[str] | None = None,
) -> None:
    """train_subset.csv: the train images a label-efficiency run used, so nesting and patient
    disjointness from val/test (predictions.csv) can be checked from the run folders alone.

    Single-label: `key, patient, label` (class index). Multi-label (`findings` given, `labels`
    (N, L) targets of 1/0/NaN): `key, patient, y_<finding>...`, empty where masked; there is
    no single class to write.
    """
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        if findings is None:
            writer.writerow(("key", "patient", "label"))
            for key, group, label in zip(keys, groups, labels, strict=True):
                writer.writerow([key, group, int(label)])
            return
        writer.writerow(("key", "patient", *(f"y_{name}" for name in findings)))
        for key, group, row in zip(keys, groups, labels, strict=True):
            cells = ["" if v != v else int(v) for v in map(float, row)]  # NaN: masked
            writer.writerow([key, group, *cells])


def prob_column(class_name: str) -> str:
    """predictions.csv column of one class's probability in a multi-class run: `prob_<class>`."""
    return f"prob_{class_name}"


def write_predictions(path: Path, result: FitResult, class_names: list[str] | None = None) -> None:
    """predictions.csv of a run: val then test rows (`write_prediction_rows`)."""
    splits = {s: result.predictions[s] for s in ("val", "test")}
    write_prediction_rows(path, splits, class_names)


def prediction_columns(sample: SplitPredictions, class_names: Sequence[str] | None) -> list[str]:
    """predictions.csv's header for the task `sample`'s shapes show, every task:

    binary `PREDICTION_COLUMNS`; multi-class `split,key,patient,label`, one `prob_<class>` per
    class in class order, `prediction` (argmax); multi-label `split,key,patient`, then per finding
    `y_<f>` (1, 0, empty = masked), `prob_<f>` and `pred_<f>` (at the finding's threshold).
    """
    width = 1 if sample.probabilities.ndim == 1 else sample.probabilities.shape[1]
    names = list(class_names) if class_names is not None else [str(k) for k in range(width)]
    if sample.labels.ndim == 2:
        return [*PREDICTION_COLUMNS[:3], *(c for n in names for c in (f"y_{n}", prob_column(n),
                                                                     f"pred_{n}"))]  # fmt: skip
    if sample.probabilities.ndim == 2:
        return [*PREDICTION_COLUMNS[:4], *(prob_column(n) for n in names), "prediction"]
    return list(PREDICTION_COLUMNS)


def _prediction_row(
    split: str, key: str, group: str, label: Any, prob: Any, pred: Any
) -> list[Any]:
    """One image's predictions.csv cells (`prediction_columns`); probabilities at full float
    precision (repr), a masked multi-label target as an empty cell."""
    if np.ndim(label) == 1:  # multi-label: (L,) targets, probabilities and decisions
        row: list[Any] = [split, key, group]
        for t, q, d in zip(label, prob, pred, strict=True):
            row += ["" if t != t else int(t), repr(float(q)), int(d)]
        return row
    probs = [repr(float(q)) for q in np.atleast_1d(prob)]
    return [split, key, group, int(label), *probs, int(pred)]


def write_prediction_rows(
    path: Path, splits: Mapping[str, SplitPredictions], class_names: Sequence[str] | None
) -> None:
    """predictions.csv: the rows of each split in `splits`' order, for every task."""
    first = next(iter(splits.values()))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(prediction_columns(first, class_names))
        for split, sp in splits.items():
            for cells in zip(
                sp.keys, sp.groups, sp.labels, sp.probabilities, sp.predictions, strict=True
            ):
                writer.writerow(_prediction_row(split, *cells))


@dataclass(frozen=True)
class RunRecord:
    """A run folder read back."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: dict[str, np.ndarray]
    """Column -> (epochs,) array; `epoch` is int64, the rest float64."""
    predictions: dict[str, np.ndarray]
    """Column -> (rows,): split/key/patient str, label/prediction int64, probability float64
    (binary); a multi-class run has `probabilities` (rows, C) float64 instead of `probability`."""
    timing: dict[str, Any]
    """timing.json (seconds per epoch); empty for runs written before it existed."""

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def task(self) -> Task:
        """The run's task, as its config.json records it (XrayError when it names no classes);
        a record without `task` whose predictions.csv has y_<finding> columns is multi-label."""
        if "task" not in self.config and "targets" in self.predictions:
            return Task.from_record({**self.config, "task": "multilabel"})
        return Task.from_record(self.config)

    def split_predictions(self, split: str) -> dict[str, np.ndarray]:
        """The predictions columns restricted to one split ("val" or "test")."""
        mask = self.predictions["split"] == split
        return {k: v[mask] for k, v in self.predictions.items()}


def _required_files(path: Path) -> tuple[str, ...]:
    """A run folder's files, or an evaluation folder's (marked by evaluation.json)."""
    return EVALUATION_FILES if (path / EVALUATION_FILE).is_file() else RUN_FILES


def is_complete_run(path: Path) -> bool:
    """A visible folder holding every file of the contract (of a run or an evaluation)."""
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and all((path / f).is_file() for f in _required_files(path))
    )


def is_evaluation(path: Path) -> bool:
    """A complete evaluation folder written by `xray evaluate`."""
    return is_complete_run(path) and (path / EVALUATION_FILE).is_file()


def write_evaluation(
    parent: Path,
    name: str,
    *,
    run: RunRecord,
    config: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: dict[str, Any],
    predictions: Mapping[str, SplitPredictions],
    plots: Callable[[Path], None] | None = None,
) -> Path:
    """Write an evaluation folder under `.<name>.tmp`, then rename it; returns the final path.

    `predictions`: split name (`calibration`, `test`) -> its rows, written as a run's
    predictions.csv is (`write_prediction_rows`, class names from `config`). history.csv and
    timing.json are the run's (compare shows the run's training cost). `plots(folder)` draws
    into `plots/` when given.
    """
    final = claim_dir(parent, name)
    with atomic_dir(final, claimed=True) as tmp:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        _write_json(tmp / EVALUATION_FILE, evaluation)
        shutil.copyfile(run.path / "history.csv", tmp / "history.csv")
        if (run.path / "timing.json").is_file():
            shutil.copyfile(run.path / "timing.json", tmp / "timing.json")
        write_prediction_rows(tmp / "predictions.csv", predictions, config.get("class_names"))
        if plots is not None:
            (tmp / "plots").mkdir()
            plots(tmp / "plots")
    return final


def load_run(path: Path) -> RunRecord:
    """Read a run folder; XrayError when it is missing, half-written or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise XrayError(f"run folder {path} does not exist")
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        raise XrayError(f"{path} is a run still being written (or abandoned); pick a finished run")
    missing = [f for f in _required_files(path) if not (path / f).is_file()]
    if missing:
        raise XrayError(
            f"{path} is not a complete run folder (missing {', '.join(missing)}); "
            "rerun the training that made it"
        )
    config = _read_file(path / "config.json", _read_json_object)
    metrics = _read_file(path / "metrics.json", _read_json_object)
    history = _read_file(path / "history.csv", _read_history)
    predictions = _read_file(path / "predictions.csv", _read_predictions)
    timing_file = path / "timing.json"
    timing = _read_file(timing_file, _read_json_object) if timing_file.is_file() else {}
    return RunRecord(path, config, metrics, history, predictions, timing)


def _read_file(path: Path, read: Any) -> Any:
    """`read(path)`, with any way the file can be damaged (cut short, bytes overwritten, not
    JSON, a missing column, undecodable text) as one XrayError naming the run and the file."""
    try:
        return read(path)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise XrayError(
            f"run {path.parent.name}: {path.name} is damaged ({detail}); "
            f"rerun the training that made {path.parent}"
        ) from None


def _read_json_object(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _check_rows(rows: list[dict[Any, Any]], columns: list[str]) -> None:
    """ValueError at the first row that is short (a file cut mid-line: DictReader fills it with
    None) or long (bytes written over a line: extras under the None key)."""
    if not columns:
        raise ValueError("no header")
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            got = sum(v is not None for k, v in row.items() if k is not None)
            got += len(row.get(None) or [])
            raise ValueError(f"line {n} has {got} of {len(columns)} fields")


def _read_history(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    _check_rows(rows, list(reader.fieldnames or []))
    columns = [
        *HISTORY_COLUMNS,
        *(c for c in (rows[0] if rows else {}) if c not in HISTORY_COLUMNS),
    ]
    out = {
        c: np.array([float(r[c] or "nan") for r in rows], dtype=np.float64) for c in columns
    }  # an empty cell is NaN (undefined)
    out["epoch"] = out["epoch"].astype(np.int64)
    return out


def _read_predictions(path: Path) -> dict[str, np.ndarray]:
    """predictions.csv's columns (`prediction_columns`, any task): split/key/patient (str);
    binary `label`, `probability` (N,), `prediction`; multi-class `label`, `probabilities`
    (N, C), `prediction`; multi-label `targets` (N, L) 1/0/NaN, `probabilities` (N, L),
    `predictions` (N, L) 0/1."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    _check_rows(rows, columns)
    names = [c.removeprefix("prob_") for c in columns if c.startswith("prob_")]

    def grid(prefix: str, parse: Any) -> np.ndarray:
        values = [[parse(r[f"{prefix}{n}"]) for n in names] for r in rows]
        return np.array(values, dtype=np.float64).reshape(len(rows), len(names))

    def column(name: str, dtype: Any) -> np.ndarray:
        return np.array([dtype(r[name]) for r in rows], dtype=dtype)

    out = {c: column(c, str) for c in PREDICTION_COLUMNS[:3]}
    if any(c.startswith("y_") for c in columns):  # a multi-label run
        out["targets"] = grid("y_", lambda v: float(v) if v != "" else np.nan)
        out["probabilities"] = grid("prob_", float)
        out["predictions"] = grid("pred_", float).astype(np.int64)
        return out
    out["label"] = column("label", np.int64)
    if names and "probability" not in columns:  # a multi-class run
        out["probabilities"] = grid("prob_", float)
    else:
        out["probability"] = column("probability", np.float64)
    out["prediction"] = column("prediction", np.int64)
    return out


def list_runs(runs_dir: Path) -> list[Path]:
    """Complete run folders in `runs_dir`, oldest first (names start with the time)."""
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if is_complete_run(p))


STUDIES_DIR = Path("studies")
"""Where `xray study run` and `xray demo` keep study folders (each with its runs in `runs/`)."""


def find_runs(
    paths: Sequence[Path], runs_dir: Path, *, studies_dir: Path = STUDIES_DIR
) -> tuple[list[Path], str | None]:
    """The run folders to compare, and a note saying where they were found (or None).

    Each given path is a run folder, or a folder of runs, or a study folder (`studies/<name>/`,
    whose runs are in its `runs/`): its complete runs are taken. With no paths, the complete
    runs directly under `runs_dir`; if there are none, those of the newest study: a folder of
    runs under `runs_dir`, or `studies_dir/<name>/runs`. A path that is neither is returned as
    it is, for `load_run` to refuse with the reason.
    """
    if paths:
        out: list[Path] = []
        for p in map(Path, paths):
            inner = [] if is_complete_run(p) or not p.is_dir() else list_runs(p)
            if not inner and (p / "runs").is_dir():
                inner = list_runs(p / "runs")
            out += inner or [p]
        return out, None
    direct = list_runs(runs_dir)
    if direct:
        return direct, None
    studies = (
        [p for p in runs_dir.iterdir() if p.is_dir() and list_runs(p)] if runs_dir.is_dir() else []
    )
    if studies_dir.is_dir():
        studies += [p / "runs" for p in studies_dir.iterdir() if list_runs(p / "runs")]
    if not studies:
        return [], None
    studies.sort(key=lambda p: (p.stat().st_mtime, str(p)))
    newest = studies[-1]
    others = f"; {len(studies) - 1} older, pass one to compare it" if len(studies) > 1 else ""
    return list_runs(newest), f"comparing the runs of {newest} (the newest study{others})"
