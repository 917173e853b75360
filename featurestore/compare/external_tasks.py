"""External validation of multi-class and multi-label runs: decisions, recalibration, metrics,
patient-bootstrap intervals and the evaluation folder (the binary path is `external._conclude`).

Multi-class: decisions are the argmax (MULTICLASS_RULE); `--recalibrate N` fits one temperature
on N local patients (Guo et al. 2017). Multi-label: each finding at its own threshold (the run's,
chosen on its validation set, or chosen again by a policy); `--recalibrate N` fits Platt scaling
per finding on N local patients and chooses the thresholds there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare.calibration import (
    LabelCalibration,
    Temperature,
    fit_label_calibration,
    fit_temperature,
    multiclass_nll,
    top_label,
)
from featurestore.compare.external_data import EvaluationResult, Findings, Scores, run_uncertain
from featurestore.compare.external_stats import (
    calibration_patients,
    replicate_difference,
    replicate_summary,
)
from featurestore.compare.metrics import expected_calibration_error
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError
from featurestore.tasks import MULTICLASS_RULE, Task

if TYPE_CHECKING:
    from featurestore.data import Manifest
    from featurestore.runs import RunRecord

MULTICLASS_SHOWN: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc_macro",
    "loss",
)
"""A multi-class evaluation's headline metrics (each with a patient interval)."""
MULTICLASS_DIFFERENCE: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc_macro",
)
"""Multi-class metrics whose external - internal difference gets an interval."""


def _local(groups: np.ndarray, held: np.ndarray, config: EvaluateConfig) -> dict[str, Any]:
    """evaluation.json's `local_calibration`: the patients taken out to recalibrate."""
    return {
        "patients": int(np.unique(groups[held]).size),
        "images": int(held.sum()),
        "seed": config.seed,
        "patient_ids": sorted(np.unique(groups[held]).tolist()),
    }


def _evaluation_doc(
    run: RunRecord, manifest: Manifest, scores: Scores, config: EvaluateConfig,
    images: int, patients: int, local: dict[str, Any] | None, source: str,
) -> dict[str, Any]:  # fmt: skip
    """evaluation.json's common part (every task)."""
    return {
        "run": str(run.path),
        "run_name": run.name,
        "data": str(Path(manifest.source or manifest.root)),
        "dataset": manifest.name or manifest.root.stem,
        "dataset_fingerprint": scores.fingerprint,
        "split": config.split,
        "images": images,
        "patients": patients,
        "threshold_source": source,
        "recalibrate": config.recalibrate,
        "local_calibration": local,
        "n_boot": config.n_boot,
        "alpha": config.alpha,
        "seed": config.seed,
        "interval_unit": "patients",
    }


def _folder_name(run: RunRecord, dataset: str, config: EvaluateConfig) -> str:
    name = f"{run.name}-on-{dataset}-{config.split}"
    return name + (f"-local{config.recalibrate}" if config.recalibrate else "")


def _run_doc(run: RunRecord) -> dict[str, Any]:
    return {
        "best_epoch": run.metrics.get("best_epoch"),
        "epochs_run": run.metrics.get("epochs_run"),
        "stopped_early": run.metrics.get("stopped_early", False),
    }


def multiclass_replicates(
    task: Task, y: np.ndarray, p: np.ndarray, *, groups: np.ndarray, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """(n_boot,) patient-bootstrap replicates of every multi-class metric through the one
    engine (`compare.engine`), keyed as metrics.json names them (`recall_<class>`, ...).
    y (N,) class indices, p (N, C) probabilities, groups (N,) patient ids."""
    from featurestore.compare import engine

    arrays = engine.TestArrays(np.arange(y.size).astype(str), y, p, np.asarray(groups))
    score = engine.kernel(task, arrays, engine.Decision("argmax", "argmax", None))
    reps = engine.replicates(score, y.size, groups=arrays.groups, n_boot=n_boot, seed=seed)
    return {m if c is None else f"{m}_{c}": v for (m, c), v in reps.items()}


def label_auc_replicates(
    names: list[str], y: np.ndarray, p: np.ndarray, *, groups: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """(n_boot, L) patient-bootstrap replicates of each finding's ROC-AUC over its observed
    entries, through the one engine; NaN where a resample leaves a finding one class.
    y (N, L) 1/0/NaN targets, p (N, L) probabilities, groups (N,) patient ids."""
    from featurestore.compare import engine

    task = Task.from_classes(names, multilabel=True)
    arrays = engine.TestArrays(np.arange(y.shape[0]).astype(str), y, p, np.asarray(groups))
    decision = engine.Decision("at_threshold", "", tuple(0.5 for _ in names))  # AUC: unused
    score = engine.kernel(task, arrays, decision)
    reps = engine.replicates(score, y.shape[0], groups=arrays.groups, n_boot=n_boot, seed=seed)
    return np.stack([reps[("auc", n)] for n in names], axis=1)


def conclude_multiclass(
    run: RunRecord, task: Task, manifest: Manifest, scores: Scores, config: EvaluateConfig
) -> EvaluationResult:
    """Argmax decisions, temperature recalibration (`recalibrate`), multi-class metrics with
    patient intervals, the difference from the internal test set, and the evaluation folder.

    `scores.labels` (N,) class indices in the run's order, `scores.outputs` (N, C) softmax.
    Raises XrayError when no image is left to evaluate.
    """
    from featurestore.compare.multiclass import evaluate_multiclass_split, multiclass_metrics
    from featurestore.runs import write_evaluation
    from featurestore.runs.folder import prob_column

    names = task.class_names
    y_all, p_raw = scores.labels.astype(np.int64), scores.outputs
    keys, groups = np.array(scores.keys), np.array(scores.groups)
    rows: list[list[Any]] = []
    local: dict[str, Any] | None = None
    calibration = Temperature("identity", 1.0, "val", 0, "not fitted: the model's own softmax")
    keep = np.ones(y_all.size, dtype=bool)
    p_used = p_raw
    if config.recalibrate:
        held = calibration_patients(groups, config.recalibrate, labels=y_all, seed=config.seed)
        calibration = fit_temperature(y_all[held], p_raw[held], split="calibration")
        p_used = calibration.apply(p_raw)
        per_class = {c: int(np.sum(y_all[held] == k)) for k, c in enumerate(names)}
        local = {**_local(groups, held, config), "per_class": per_class}
        keep = ~held

    def add_rows(split: str, mask: np.ndarray) -> None:
        for k, g, yy, q in zip(keys[mask], groups[mask], y_all[mask], p_used[mask], strict=True):
            rows.append([split, k, g, int(yy), *(repr(float(v)) for v in q), int(q.argmax())])

    if config.recalibrate:
        add_rows("calibration", ~keep)
    add_rows("test", keep)
    y, p, g = y_all[keep], p_used[keep], groups[keep]
    if y.size == 0:
        raise XrayError("no images left to evaluate")

    metrics = evaluate_multiclass_split(y, p, class_names=names)
    point = metrics["argmax"]
    boot = {"n_boot": config.n_boot, "seed": config.seed}
    reps = multiclass_replicates(task, y, p, groups=g, **boot)
    class_metrics = [f"{m}_{c}" for c in names for m in ("recall", "auc")]
    intervals = {
        m: replicate_summary(point[m], reps[m], alpha=config.alpha)
        for m in (*MULTICLASS_SHOWN, *class_metrics)
    }
    internal = run.split_predictions("test")
    yi, pi = internal["label"], internal["probabilities"]
    point_i = multiclass_metrics(yi, pi, class_names=names)
    reps_i = multiclass_replicates(task, yi, pi, groups=internal["patient"],
                                   n_boot=config.n_boot, seed=config.seed + 1)  # fmt: skip
    difference = {
        m: replicate_difference((point[m], reps[m]), (point_i[m], reps_i[m]), alpha=config.alpha)
        for m in MULTICLASS_DIFFERENCE
    }
    correct_raw, conf_raw = top_label(y, p_raw[keep])
    correct, conf = top_label(y, p)
    onehot = (y[:, None] == np.arange(len(names))).astype(np.float64)
    after = calibration.apply(p_raw[keep])
    cal = {
        **calibration.as_dict(),
        "test": {
            "ece_before": expected_calibration_error(correct_raw, conf_raw),
            "ece_after": expected_calibration_error(*top_label(y, after)),
            "nll_before": multiclass_nll(y, p_raw[keep]),
            "nll_after": multiclass_nll(y, after),
        },
        "reported_probability": "recalibrated" if config.recalibrate else "model output",
        "ece": expected_calibration_error(correct, conf),
        "ece_of": "the top-label confidence (Guo et al. 2017)",
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "brier_of": "the sum over classes of (p_k - [y = k])^2, averaged over images",
    }
    dataset = manifest.name or manifest.root.stem
    evaluation = _evaluation_doc(run, manifest, scores, config, int(y.size),
                                 int(np.unique(g).size), local, "argmax: no threshold")  # fmt: skip
    evaluation["per_class"] = {c: int(np.sum(y == k)) for k, c in enumerate(names)}
    threshold = {"policy": "argmax", "value": None, "note": MULTICLASS_RULE, "source": "argmax"}
    doc = {
        **_run_doc(run),
        "threshold": threshold,
        "test": metrics,
        "intervals": {"argmax": intervals},
        "calibration": cal,
        "internal_difference": difference,
    }

    def plots(folder: Path) -> None:
        from featurestore.plots import plot_confusion, plot_reliability, plot_roc

        curves = {"external (top label)": (correct_raw, conf_raw)}
        if calibration.method != "identity":
            curves["external, recalibrated"] = top_label(y, after)
        plot_reliability(curves, folder / "reliability.png")
        plot_roc({c: (y == k, p[:, k]) for k, c in enumerate(names)}, folder / "roc.png")
        plot_confusion(point["confusion_matrix"], names, folder / "confusion.png",
                       title=f"{dataset} (argmax)")  # fmt: skip

    columns = ["split", "key", "patient", "label", *(prob_column(c) for c in names), "prediction"]
    path = write_evaluation(
        config.out_dir, _folder_name(run, dataset, config), run=run,
        config={**run.config, "evaluation": evaluation}, metrics=doc, evaluation=evaluation,
        rows=rows, plots=plots, columns=columns,
    )  # fmt: skip
    notes = (calibration.note,) if calibration.note and config.recalibrate else ()
    return EvaluationResult(
        path, run.name, dataset, config.split, int(y.size), int(np.unique(g).size), threshold,
        metrics, intervals, difference, cal, local, task="multiclass",
        shown=(*MULTICLASS_SHOWN, *(f"auc_{c}" for c in names)), notes=notes,
    )  # fmt: skip


def _macro_over(values: dict[str, float | None], names: list[str]) -> float | None:
    defined = [float(v) for n in names if (v := values[n]) is not None]
    return float(np.mean(defined)) if defined and len(defined) == len(names) else None


def _label_ece(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean over findings of each finding's ECE on its observed entries; None with none."""
    eces = []
    for k in range(targets.shape[1]):
        mask = ~np.isnan(targets[:, k])
        if mask.any():
            eces.append(expected_calibration_error(targets[mask, k], probs[mask, k]))
    return float(np.mean(eces)) if eces else None


def _label_thresholds(
    names: list[str], targets: np.ndarray, probs: np.ndarray, policy: str, chosen_on: str,
    source: str,
) -> dict[str, Any]:  # fmt: skip
    """metrics.json's `threshold` of a multi-label evaluation: one threshold per finding chosen
    by `policy` on `chosen_on` (`compare.choose_operating_point`, fallbacks said per finding)."""
    from featurestore.compare.splits import choose_operating_point

    task = Task.from_classes(names, multilabel=True)
    record, _ = choose_operating_point(task, targets, probs, policy=policy)
    return {**record, "chosen_on": chosen_on, "source": source}


def conclude_multilabel(
    run: RunRecord,
    task: Task,
    manifest: Manifest,
    scores: Scores,
    config: EvaluateConfig,
    findings: Findings,
) -> EvaluationResult:
    """Each shared finding at its own threshold, Platt per finding (`recalibrate`), per-finding
    and macro AUC with patient intervals, the difference from the internal test set (over the
    same findings), and the evaluation folder.

    `scores.labels` (N, L') targets 1/0/NaN in the dataset's order, `scores.outputs` (N, L)
    sigmoids in the run's; `findings` matches them by name. Raises XrayError when no image is
    left to evaluate.
    """
    from featurestore.compare.multilabel import evaluate_multilabel_split
    from featurestore.runs import write_evaluation
    from featurestore.runs.folder import prob_column

    names = list(findings.names)
    run_index = list(findings.run_index)
    t_all = scores.labels[:, list(findings.data_index)]  # (N, L) 1/0/NaN
    p_raw = scores.outputs[:, run_index]  # (N, L)
    keys, groups = np.array(scores.keys), np.array(scores.groups)
    recorded = run.metrics["threshold"]
    policy = config.threshold_policy or str(recorded.get("policy") or "youden")
    calibration = LabelCalibration({})
    keep = np.ones(t_all.shape[0], dtype=bool)
    p_used = p_raw
    local: dict[str, Any] | None = None
    if config.recalibrate:
        # Stratified by whether the image shows any finding, so both kinds reach the fit.
        any_finding = (np.nansum(t_all, axis=1) > 0).astype(np.int64)
        held = calibration_patients(groups, config.recalibrate, labels=any_finding,
                                    seed=config.seed)  # fmt: skip
        calibration = fit_label_calibration(t_all[held], p_raw[held], names, split="calibration")
        p_used = calibration.apply(p_raw, names)
        threshold: dict[str, Any] = _label_thresholds(
            names,
            t_all[held],
            p_used[held],
            policy,
            "calibration",
            "the local calibration patients",
        )
        thresholds = threshold["per_label"]
        local = _local(groups, held, config)
        keep = ~held
    elif config.threshold_policy is None:
        per_label = recorded.get("per_label") or {}
        thresholds = {n: float(per_label[n]) for n in names}
        ran = recorded.get("ran") or {}
        threshold = {
            **recorded, "per_label": thresholds, "chosen_on": "val",
            "ran": {n: ran.get(n, True) for n in names}, "source": f"the run {run.name}",
        }  # fmt: skip
    else:  # chosen again on the run's own validation predictions, never on this split
        val = run.split_predictions("val")
        y_val, p_val = val["targets"][:, run_index], val["probabilities"][:, run_index]
        threshold = _label_thresholds(
            names, y_val, p_val, policy, "val", f"the validation predictions of {run.name}"
        )
        thresholds = threshold["per_label"]
    cut = np.array([thresholds[n] for n in names])  # (L,)
    rows: list[list[Any]] = []

    def add_rows(split: str, mask: np.ndarray) -> None:
        for k, g, tt, q in zip(keys[mask], groups[mask], t_all[mask], p_used[mask], strict=True):
            row: list[Any] = [split, k, g]
            for t, v, c in zip(tt, q, cut, strict=True):
                row += ["" if np.isnan(t) else int(t), repr(float(v)), int(v >= c)]
            rows.append(row)

    if config.recalibrate:
        add_rows("calibration", ~keep)
    add_rows("test", keep)
    y, p, g = t_all[keep], p_used[keep], groups[keep]
    if y.shape[0] == 0:
        raise XrayError("no images left to evaluate")

    metrics = evaluate_multilabel_split(y, p, names=names, thresholds=thresholds)
    point = metrics["at_label_thresholds"]
    reps = label_auc_replicates(names, y, p, groups=g, n_boot=config.n_boot, seed=config.seed)
    internal = run.split_predictions("test")
    yi, pi = internal["targets"][:, run_index], internal["probabilities"][:, run_index]
    reps_i = label_auc_replicates(names, yi, pi, groups=internal["patient"],
                                  n_boot=config.n_boot, seed=config.seed + 1)  # fmt: skip
    point_i = evaluate_multilabel_split(yi, pi, names=names, thresholds=thresholds)
    auc_e = {n: point["labels"][n]["auc"] for n in names}
    auc_i = {n: point_i["at_label_thresholds"]["labels"][n]["auc"] for n in names}
    defined = [k for k, n in enumerate(names) if auc_e[n] is not None]
    intervals: dict[str, Any] = {
        "macro_auc": replicate_summary(
            point["macro_auc"],
            reps[:, defined].mean(1) if defined else np.full(config.n_boot, np.nan),
            alpha=config.alpha,
        )
    }
    for k, n in enumerate(names):
        intervals[f"auc_{n}"] = replicate_summary(auc_e[n], reps[:, k], alpha=config.alpha)
    # The macro difference over the findings with an AUC on both sides (one set, both means).
    both = [k for k, n in enumerate(names) if auc_e[n] is not None and auc_i[n] is not None]
    over = [names[k] for k in both]
    difference: dict[str, Any] = {
        "macro_auc": {
            **replicate_difference(
                (_macro_over(auc_e, over) if both else None, reps[:, both].mean(1)),
                (_macro_over(auc_i, over) if both else None, reps_i[:, both].mean(1)),
                alpha=config.alpha,
            ),
            "findings": over,
        }
    }
    for k, n in enumerate(names):
        difference[f"auc_{n}"] = replicate_difference(
            (auc_e[n], reps[:, k]), (auc_i[n], reps_i[:, k]), alpha=config.alpha
        )
    observed = ~np.isnan(y)
    after = calibration.apply(p_raw[keep], names)
    notes = [*calibration.notes, *threshold.get("notes", [])] if config.recalibrate else []
    cal = {
        **calibration.as_dict(),
        "fitted_on": "calibration" if config.recalibrate else "val",
        "note": "; ".join(calibration.notes) if config.recalibrate else "not fitted",
        "test": {"ece_before": _label_ece(y, p_raw[keep]), "ece_after": _label_ece(y, after)},
        "reported_probability": "recalibrated" if config.recalibrate else "model output",
        "ece": _label_ece(y, p),
        "ece_of": "each finding's ECE over its observed labels, averaged over findings",
        "brier": float(np.mean((p[observed] - y[observed]) ** 2)) if observed.any() else None,
    }
    dataset = manifest.name or manifest.root.stem
    source = str(threshold.get("source", "the run"))
    evaluation = _evaluation_doc(run, manifest, scores, config, int(y.shape[0]),
                                 int(np.unique(g).size), local, source)  # fmt: skip
    evaluation["findings"] = names
    evaluation["findings_left_out"] = list(findings.left_out)
    evaluation["findings_not_in_run"] = list(findings.extra)
    evaluation["uncertain"] = config.uncertain or run_uncertain(run.config)
    doc = {
        **_run_doc(run),
        "threshold": threshold,
        "test": metrics,
        "intervals": {"at_label_thresholds": intervals},
        "calibration": cal,
        "internal_difference": difference,
    }

    def plots(folder: Path) -> None:
        from featurestore.plots import plot_reliability, plot_roc

        per = {n: (y[observed[:, k], k], p[observed[:, k], k]) for k, n in enumerate(names)}
        plot_reliability(per, folder / "reliability.png")
        plot_roc(per, folder / "roc.png")

    columns = ["split", "key", "patient"]
    for n in names:
        columns += [f"y_{n}", prob_column(n), f"pred_{n}"]
    config_doc: dict[str, Any] = {**run.config, "evaluation": evaluation}
    if findings.left_out:  # the folder holds the shared findings only: its task says so
        config_doc.update(Task("multilabel", tuple(names), len(names) - 1).as_record(),
                          positive_class=names[-1])  # fmt: skip
    path = write_evaluation(
        config.out_dir, _folder_name(run, dataset, config), run=run, config=config_doc,
        metrics=doc, evaluation=evaluation, rows=rows, plots=plots, columns=columns,
    )  # fmt: skip
    if findings.left_out:
        notes.insert(0, findings.left_out_note(run.name, Path(manifest.source or manifest.root)))
    return EvaluationResult(
        path, run.name, dataset, config.split, int(y.shape[0]), int(np.unique(g).size),
        threshold, metrics, intervals, difference, cal, local, task="multilabel",
        shown=("macro_auc", *(f"auc_{n}" for n in names)), notes=tuple(notes),
    )  # fmt: skip
