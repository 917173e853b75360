"""Intervals of multi-class and multi-label comparisons say what the bootstrap did (issue
#28.2): the resamples drawn, the undefined ones, and reliability below min_units_per_class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from featurestore.compare import compare_multiclass_runs, compare_multilabel_runs
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
    cmp = compare_multiclass_runs(runs, CompareConfig(n_boot=300, seed=1))
    row = cmp.rows[0]
    for interval in row.metrics.values():
        assert interval.n_boot == 300
    assert row.metrics["accuracy"].reliable  # conditions on no class: 41 patients
    assert not row.metrics["roc_auc_macro"].reliable  # the macro needs class C: 1 patient
    assert not row.per_class["C"]["recall"].reliable
    assert row.per_class["A"]["recall"].reliable
    assert row.per_class["C"]["auc"].n_undefined > 0  # resamples without C's one patient
    assert cmp.pairs[0].macro_auc_diff.n_boot == 300


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
    cmp = compare_multilabel_runs(runs, CompareConfig(n_boot=200, seed=2))
    row = cmp.rows[0]
    assert row.per_label["F1"]["auc"].n_boot == 200 and row.per_label["F1"]["auc"].reliable
    f2 = row.per_label["F2"]["auc"]
    assert not f2.defined and f2.n_boot == 200 and not f2.reliable
    assert row.macro_auc.n_boot == 200 and row.macro_auc.defined
