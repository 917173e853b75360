"""Intervals of multi-class and multi-label comparisons say what the bootstrap did (issue
#28.2): the resamples drawn, the undefined ones, and reliability below min_units_per_class; their
verdict never names a repeat of the best run as its runner-up."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from featurestore.compare import compare_runs
from featurestore.config import CompareConfig
from featurestore.runs import HISTORY_COLUMNS


def _run(
    folder: Path, names: list[str], rows: list[list[object]], head: list[str], **cfg: object
) -> Path:
    folder.mkdir(parents=True)
    config = {"model": "toy", "mode": "frozen", "head": "linear", "seed": 0,
              "class_names": names, **cfg}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    metrics = {"best_epoch": 1, "epochs_run": 1, "threshold": {"policy": "argmax", "value": None}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text(",".join(HISTORY_COLUMNS) + "\n")
    (folder / "best.pt").write_bytes(b"")
    with (folder / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows(rows)
    return folder


def test_multiclass_intervals_count_resamples_and_flag_a_one_patient_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["A", "B", "C"]
    # Test: 20 patients of A, 20 of B, one patient (two images) of C.
    labels = [0] * 20 + [1] * 20 + [2, 2]
    patients = [f"p{i}" for i in range(40)] + ["pc", "pc"]
    head = ["split", "key", "patient", "label", "prob_A", "prob_B", "prob_C", "prediction"]
    runs = []
    for r in range(2):
        rows = []
        for i, (y, g) in enumerate(zip(labels, patients, strict=True)):
            p = rng.dirichlet(np.ones(3)) * 0.5
            p[y] += 0.5
            rows.append(["test", f"k{i}", g, y, *map(repr, p.tolist()), int(np.argmax(p))])
        runs.append(_run(tmp_path / f"run{r}", names, rows, head, seed=r))
    cmp = compare_runs(runs, CompareConfig(n_boot=300, seed=1))
    assert cmp.task.multiclass
    row = cmp.rows[0]
    for interval in row.metrics["argmax"].values():
        assert interval.n_boot == 300
    assert row.metrics["argmax"]["accuracy"].reliable  # conditions on no class: 41 patients
    assert not row.metrics["argmax"]["roc_auc_macro"].reliable  # needs class C: 1 patient
    assert not row.per_class["C"]["recall"].reliable
    assert row.per_class["A"]["recall"].reliable
    assert row.per_class["C"]["auc"].n_undefined > 0  # resamples without C's one patient
    diff = cmp.pairs[0].tests["auc_difference"]
    assert (
        diff.p_value is not None and diff.lo is not None and diff.lo <= diff.difference <= diff.hi
    )


def test_multilabel_intervals_count_resamples_and_flag_undefined_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    names = ["F1", "F2"]
    head = ["split", "key", "patient", "y_F1", "prob_F1", "pred_F1", "y_F2", "prob_F2", "pred_F2"]
    runs = []
    for r in range(2):
        rows = []
        for i in range(40):
            y1 = i % 2
            q1, q2 = rng.random() * 0.5 + 0.5 * y1, rng.random()
            # F2 has no positive on test: its AUC is undefined.
            rows.append(["test", f"k{i}", f"p{i}", y1, repr(q1), int(q1 > 0.5), 0, repr(q2), 0])
        runs.append(_run(tmp_path / f"run{r}", names, rows, head, seed=r))
    cmp = compare_runs(runs, CompareConfig(n_boot=200, seed=2))
    assert cmp.task.multilabel
    row = cmp.rows[0]
    assert row.per_class["F1"]["auc"].n_boot == 200 and row.per_class["F1"]["auc"].reliable
    f2 = row.per_class["F2"]["auc"]
    assert not f2.defined and f2.n_boot == 200 and not f2.reliable
    macro = row.metrics["at_threshold"]["roc_auc_macro"]
    assert macro.n_boot == 200 and macro.defined
    assert cmp.pairs[0].per_finding["F2"] is None  # one class on test: DeLong undefined
    assert cmp.pairs[0].per_finding["F1"] is not None


# The verdict: a repeat of the best run (the same command twice: identical settings, seed and
# scores) is never its runner-up, as for binary (tests/compare/test_report.py).
N = 60


def _rows(kind: str, skill: float, seed: int) -> tuple[list[str], list[list[object]], list[str]]:
    """(class names, predictions.csv rows, header) of a test split of N images of N patients."""
    rng = np.random.default_rng(seed)
    if kind == "multiclass":
        names = ["A", "B", "C"]
        head = ["split", "key", "patient", "label", "prob_A", "prob_B", "prob_C", "prediction"]
        rows: list[list[object]] = []
        for i in range(N):
            y = i % 3
            p = rng.dirichlet(np.ones(3)) * (1 - skill)
            p[y] += skill
            rows.append(["test", f"k{i}", f"p{i}", y, *map(repr, p.tolist()), int(np.argmax(p))])
        return names, rows, head
    names = ["F1", "F2"]
    head = ["split", "key", "patient", "y_F1", "prob_F1", "pred_F1", "y_F2", "prob_F2", "pred_F2"]
    rows = []
    for i in range(N):
        y1, y2 = i % 2, (i // 2) % 2
        q1 = (1 - skill) * rng.random() + skill * y1
        q2 = (1 - skill) * rng.random() + skill * y2
        rows.append(["test", f"k{i}", f"p{i}", y1, repr(q1), int(q1 > 0.5), y2, repr(q2),
                     int(q2 > 0.5)])  # fmt: skip
    return names, rows, head


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_the_verdict_never_names_a_repeat_of_the_best_as_its_runner_up(
    tmp_path: Path, kind: str
) -> None:
    names, rows, head = _rows(kind, skill=0.6, seed=0)
    twice = [_run(tmp_path / n, names, rows, head, model="resnet50") for n in ("first", "again")]
    names, other_rows, head = _rows(kind, skill=0.3, seed=1)
    other = _run(tmp_path / "d121", names, other_rows, head, model="densenet121")
    cmp = compare_runs([*twice, other], CompareConfig(n_boot=100))
    assert cmp.task.kind == kind
    assert cmp.verdict is not None and len(cmp.repeats) == 1
    assert cmp.verdict.best in cmp.repeats[0]
    assert cmp.verdict.runner_up == next(r.label for r in cmp.rows if r.name == other.name)
    alone = compare_runs(twice, CompareConfig(n_boot=100))
    assert alone.verdict is not None and alone.verdict.runner_up is None
    assert any("repeat" in line for line in alone.verdict.lines)
