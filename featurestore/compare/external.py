"""External validation (`xray evaluate`): a trained run scored on another labelled dataset.

The run's exact model scores the other dataset's split: frozen runs through a feature store of
that dataset (extracted once with the run's backbone and preprocessing, provenance-checked),
fine-tuned runs on the decoded images. The result is an evaluation folder that `compare` reads
like a run's test result, with patient-clustered intervals, calibration, and the difference
from the run's internal test result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare.analysis import replicate_interval
from featurestore.compare.bootstrap import BOOT_METRICS
from featurestore.compare.calibration import (
    fit_recalibration,
    recalibration_from_record,
    recalibration_report,
    reported_calibration,
    top_label,
)
from featurestore.compare.engine import (
    Decision,
    MetricKey,
    TestArrays,
    decisions,
    fewest_units,
    kernel,
    point_estimates,
    replicates,
    test_arrays,
)
from featurestore.compare.external_data import (
    EvaluationResult,
    Findings,
    Scores,
    check_options,
    external_manifest,
    match_classes,
    match_findings,
    run_uncertain,
)
from featurestore.compare.external_report import MIN_UNITS
from featurestore.compare.external_stats import (
    calibration_patients,
    replicate_difference,
)
from featurestore.compare.multiclass import MULTICLASS_DECISION
from featurestore.compare.multilabel import MULTILABEL_DECISION
from featurestore.compare.splits import Thresholds, choose_operating_point, split_metrics
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError
from featurestore.runs.result import SplitPredictions
from featurestore.tasks import Task

__all__ = ["EvaluationResult", "Scores", "evaluate_run", "match_classes"]

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.data import Manifest
    from featurestore.runs import RunRecord
    from featurestore.use import Predictor

MODEL_PROVENANCE = (
    "backbone",
    "weights_id",
    "weights_sha256",
    "preprocessing",
    "image_size",
    "dtype",
)


def evaluate_run(
    run_dir: Path,
    data: Path,
    *,
    config: EvaluateConfig | None = None,
    weights: Path | None = None,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Score a run on another labelled dataset; write and return its evaluation folder.

    Every task: binary (the run's threshold, Platt recalibration), multi-class (argmax,
    temperature scaling) and multi-label (each finding at its own threshold, Platt per
    finding). Classes and findings are matched by name; a multi-class run's label scheme
    (`kermany3`) and a multi-label run's uncertainty policy are applied as the run's training
    applied them unless `config.labels` / `config.uncertain` say otherwise.

    Raises:
        XrayError: a run or dataset that cannot be read, other class names (no shared finding),
            an empty split, an impossible `recalibrate`, a threshold policy for a multi-class
            run, or a backbone whose weights are not at hand.
    """
    from featurestore.runs import load_run
    from featurestore.use import load_predictor

    config = config or EvaluateConfig()
    record = load_run(Path(run_dir))
    task = record.task
    # Said before any model is loaded or any image decoded (issue #28.5: a traceback).
    check_options(task, config, record.name)
    manifest = external_manifest(Path(data), task, config, record.config)
    findings: Findings | None = None
    if task.multilabel:
        findings = match_findings(tuple(manifest.class_names), task.class_names, Path(data))
        if findings.left_out and notice is not None:
            notice(findings.left_out_note(Path(run_dir).name, Path(data)))
    else:
        manifest = match_classes(manifest, task.class_names, Path(run_dir).name, Path(data))
    if not manifest.split(config.split):
        raise XrayError(f"{data} has no {config.split} images: choose another --split")
    predictor = load_predictor(Path(run_dir), weights=weights, device=config.device)
    run = predictor.run
    if predictor.mode == "frozen":
        scores = _score_frozen(predictor, task, manifest, config, weights, progress, notice)
    else:
        scores = _score_images(predictor, task, manifest, config, progress)
    return _conclude(run, task, manifest, scores, config, findings)


def _score_frozen(
    predictor: Predictor,
    task: Task,
    manifest: Manifest,
    config: EvaluateConfig,
    weights: Path | None,
    progress: Progress | None,
    notice: Callable[[str], None] | None,
) -> Scores:
    """Features of the other dataset through the store machinery, then the run's head."""
    import torch

    from featurestore.store import extract_features, open_store, provenance_difference

    run = predictor.run
    recorded: dict[str, Any] = run.config["store"]
    weights_id = str(recorded["weights_id"])
    source = "none" if weights_id == "none" else "imagenet"
    if weights_id.startswith("file:"):
        source = str(weights)  # load_predictor has checked it is the recorded file
    # A store of its own per dataset and run backbone: reused on the next evaluation, rebuilt
    # when the dataset changes, exactly as `xray extract` does for training data.
    result = extract_features(
        manifest,
        model=str(run.config["model"]),
        weights=source,
        cache_dir=config.store_dir,
        image_size=int(recorded["image_size"]),
        batch_size=config.batch_size,
        workers=config.workers,
        device=config.device,
        dtype=str(recorded["dtype"]),
        progress=progress,
        notice=notice,
    )
    store = open_store(result.path)
    differs = provenance_difference(recorded, {k: store.attrs.get(k) for k in MODEL_PROVENANCE})
    if differs is not None:
        raise XrayError(
            f"the features of {manifest.root} in {store.path} do not come from {run.name}'s "
            f"backbone ({differs}); delete that store and run the evaluation again"
        )
    arrays = store.split(config.split)
    with torch.inference_mode():
        features = torch.from_numpy(arrays.features).to(predictor.device)  # (N, D)
        probs = task.probabilities(predictor.head_logits(features))  # (N, C)
    labels = arrays.labels.astype(np.int64)
    if task.multilabel:
        if arrays.targets is None:
            raise XrayError(f"store {store.path} holds no multi-label targets: delete it")
        labels = np.asarray(arrays.targets, dtype=np.float64)  # (N, L')
    return Scores(
        list(arrays.keys),
        list(arrays.groups),
        labels,
        probs.double().cpu().numpy(),
        str(store.attrs["dataset_fingerprint"]),
        predictor.positive_index,
    )


def _score_images(
    predictor: Predictor,
    task: Task,
    manifest: Manifest,
    config: EvaluateConfig,
    progress: Progress | None,
) -> Scores:
    """A fine-tuned run: decode, preprocess and score the split's images (any layout)."""
    import torch

    from featurestore.data import dataset_fingerprint

    records = manifest.split(config.split)
    bar = progress.add_task("evaluate", total=len(records), unit="img") if progress else None
    p_all: list[np.ndarray] = []
    for start in range(0, len(records), config.batch_size):
        batch = records[start : start + config.batch_size]
        x = torch.stack(
            [
                predictor.preprocessing(
                    manifest.open_image(r.key, min_size=predictor.preprocessing.resize)
                )
                for r in batch
            ]
        )  # (B, 3, S, S)
        with torch.inference_mode():
            probs = task.probabilities(predictor.logits(x))  # (B, C)
        p_all.append(probs.double().cpu().numpy())
        if progress is not None and bar is not None:
            progress.advance(bar, len(batch))
    if task.multilabel:
        labels = np.array([r.targets for r in records], dtype=np.float64)  # (N, L')
    else:
        labels = np.array([r.label for r in records], dtype=np.int64)
    return Scores(
        [r.key for r in records],
        [r.group for r in records],
        labels,
        np.concatenate(p_all),
        dataset_fingerprint(manifest, progress=progress),
        predictor.positive_index,
    )


def _conclude(
    run: RunRecord,
    task: Task,
    manifest: Manifest,
    scores: Scores,
    config: EvaluateConfig,
    findings: Findings | None,
) -> EvaluationResult:
    """Decisions, recalibration, metrics, patient intervals, the difference from the internal
    test result and the evaluation folder: one path for every task.

    The decisions follow the task's rule (`Task.decide`) at the run's own operating point, or
    at one chosen again by `config.threshold_policy` on the run's validation predictions, or
    (`--recalibrate N`) on N local patients after a recalibration fitted there
    (`fit_recalibration`). Every metric and its interval come from the one engine
    (`compare.engine`), as `xray compare` computes them: the kernel on weights of one for the
    estimate, on whole-patient resamples for the percentile interval.
    """
    from featurestore.runs import write_evaluation

    # The run's output columns evaluated: every one, or a multi-label run's shared findings.
    columns = list(range(task.n_outputs)) if findings is None else list(findings.run_index)
    if findings is not None and findings.left_out:
        task = Task("multilabel", findings.names, len(findings.names) - 1)
    y_all = scores.labels if findings is None else scores.labels[:, list(findings.data_index)]
    s_raw = task.scores(scores.outputs[:, columns])  # (N,) P(positive), or (N, C)
    keys, groups = np.array(scores.keys), np.array(scores.groups)
    keep = np.ones(len(keys), dtype=bool)
    local: dict[str, Any] | None = None
    if config.recalibrate:
        # The other site's own calibration set: whole patients out of the evaluated split.
        held = calibration_patients(groups, config.recalibrate, labels=_strata(task, y_all),
                                    seed=config.seed)  # fmt: skip
        fitted = fit_recalibration(task, y_all[held], s_raw[held], split="calibration")
        s_used = fitted.apply(s_raw)
        policy = config.threshold_policy or run.metrics["threshold"].get("policy") or "youden"
        threshold, cut = choose_operating_point(
            task, y_all[held], s_used[held], policy=str(policy), split="calibration"
        )
        threshold["source"] = "the local calibration patients"
        local = {
            "patients": int(np.unique(groups[held]).size),
            "images": int(held.sum()),
            **_counts(task, y_all[held]),
            "seed": config.seed,
            "patient_ids": sorted(np.unique(groups[held]).tolist()),
        }
        keep = ~held
    else:
        fitted = recalibration_from_record(task, run.metrics.get("calibration"))
        s_used = s_raw
        threshold, cut = _run_operating_point(run, task, columns, config.threshold_policy)
    y, s, g = y_all[keep], s_used[keep], groups[keep]
    if len(y) == 0:
        raise XrayError("no images left to evaluate")

    metrics = split_metrics(task, y, s, thresholds=cut, loss=None)
    internal = _internal_arrays(run, columns)
    # The internal side is decided by the same rule as the external rows (the run's own, or the
    # one --threshold chose on the run's validation set), so a difference is the change of
    # site alone; after a local recalibration the scales differ, and the run's own rule holds.
    own = _run_operating_point(run, task, columns, None)[1] if config.recalibrate else cut
    external = TestArrays(keys[keep], _coded(task, y), s, g)
    intervals, difference = _statistics(task, (external, cut), (internal, own), config)
    few = [name for name, iv in intervals.items() if iv.get("reliable") is False]
    # Calibration of the reported probabilities, and what the recalibration does to them.
    cal = recalibration_report(task, fitted, {"test": (y, s_raw[keep])})
    refitted = config.recalibrate and fitted.method != "identity"
    cal["reported_probability"] = "recalibrated" if refitted else "model output"
    cal.update(reported_calibration(task, y, s))

    dataset = _dataset_name(manifest)
    evaluation: dict[str, Any] = {
        "run": str(run.path),
        "run_name": run.name,
        "data": str(Path(manifest.source or manifest.root)),
        "dataset": dataset,
        "dataset_fingerprint": scores.fingerprint,
        "split": config.split,
        "images": len(y),
        "patients": int(np.unique(g).size),
        **_counts(task, y),
        # Argmax decisions choose no threshold anywhere: say so, not where one was chosen.
        "threshold_source": (
            "none (argmax)" if task.multiclass else threshold.get("source", "the run")
        ),
        "recalibrate": config.recalibrate,
        "local_calibration": local,
        "n_boot": config.n_boot,
        "alpha": config.alpha,
        "seed": config.seed,
        "interval_unit": "patients",
    }
    config_doc: dict[str, Any] = {**run.config, "evaluation": evaluation}
    notes: list[str] = []
    if findings is not None:
        evaluation["findings"] = list(findings.names)
        evaluation["findings_left_out"] = list(findings.left_out)
        evaluation["findings_not_in_run"] = list(findings.extra)
        evaluation["uncertain"] = config.uncertain or run_uncertain(run.config)
        if findings.left_out:  # the folder holds the shared findings only: its task says so
            config_doc.update(task.as_record(), positive_class=None)
            notes.append(findings.left_out_note(run.name, Path(manifest.source or manifest.root)))
    if config.recalibrate:  # fits refused on the local set
        notes += fitted.notes
    effect = cal.get("test") or {}
    before, after = effect.get("ece_before"), effect.get("ece_after")
    if refitted and before is not None and after is not None and after > before:
        notes.append(
            f"the recalibration fitted on {config.recalibrate} local patients made the evaluated "
            f"rows worse calibrated (ECE {before:.3f} -> {after:.3f}, {cal.get('ece_of')}): too "
            "few patients to fit it well; compare with --recalibrate 0"
        )
    if (config.recalibrate or config.threshold_policy) and not task.multiclass:
        # A policy chosen here that could not run (one class on val or the local set).
        notes += [n for n in (threshold.get("note"), *threshold.get("notes", [])) if n]
    macro = difference.get("roc_auc_macro") or {}
    if task.multilabel and macro.get("findings") is not None:
        defined = [n for n in task.class_names if intervals[f"auc_{n}"]["estimate"] is not None]
        if macro["findings"] != defined and macro["external"] is not None:
            notes.append(
                "the macro ROC-AUC difference averages the findings with an ROC-AUC on both "
                f"sides ({', '.join(macro['findings'])}): external {macro['external']:.3f} "
                f"over them, {intervals['roc_auc_macro']['estimate']:.3f} over all it has"
            )
    if few:
        notes.append(
            f"the intervals of {', '.join(few)} are unreliable: fewer than {MIN_UNITS} patients "
            "of a class they need in the evaluated rows, or over 1% of resamples undefined"
        )
    doc = {
        "best_epoch": run.metrics.get("best_epoch"),
        "epochs_run": run.metrics.get("epochs_run"),
        "stopped_early": run.metrics.get("stopped_early", False),
        "threshold": threshold,
        "test": metrics,
        "intervals": {DECISION_KEYS[task.kind]: intervals},
        "calibration": cal,
        "internal_difference": difference,
    }
    rows = {}
    if config.recalibrate:
        rows["calibration"] = _predictions(task, keys, groups, y_all, s_used, cut, ~keep)
    rows["test"] = _predictions(task, keys, groups, y_all, s_used, cut, keep)
    name = f"{run.name}-on-{dataset}-{config.split}"
    if config.recalibrate:
        name += f"-local{config.recalibrate}"
    rule = "(argmax)" if cut is None else f"@ {float(cut):.3f}" if task.binary else ""

    def plots(folder: Path) -> None:
        _plot(task, folder, (y, s_raw[keep], s), fitted, internal, metrics, f"{dataset} {rule}")

    path = write_evaluation(
        config.out_dir, name, run=run, config=config_doc, metrics=doc, evaluation=evaluation,
        predictions=rows, plots=plots,
    )  # fmt: skip
    shown = BINARY_SHOWN if task.binary else (
        *task.table_metrics, *(f"auc_{c}" for c in task.class_names))  # fmt: skip
    return EvaluationResult(
        path, run.name, dataset, config.split, len(y), int(np.unique(g).size), threshold,
        metrics, intervals, difference, cal, local, task=task.kind, shown=shown,
        notes=tuple(notes),
    )  # fmt: skip


BINARY_SHOWN = ("accuracy", "sensitivity", "specificity", "f1_positive", "roc_auc", "pr_auc",
                "brier")  # fmt: skip
"""The metrics the terminal shows of a binary evaluation (every task: `intervals` has all)."""
DECISION_KEYS = {
    "binary": "at_threshold",
    "multiclass": MULTICLASS_DECISION,
    "multilabel": MULTILABEL_DECISION,
}
"""The metrics.json key of the decision at the evaluation's operating point, per task."""


def _statistics(
    task: Task,
    external: tuple[TestArrays, Thresholds],
    internal: tuple[TestArrays, Thresholds],
    config: EvaluateConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every metric of the evaluated images with its percentile interval over whole-patient
    resamples, and external - internal with a two-sample patient-bootstrap interval (each
    test set resampled on its own, seeds `seed` and `seed + 1`). Each side is its test arrays
    and its thresholds (the evaluation's, and the run's own). An interval resting on fewer
    than `MIN_UNITS` patients of a class it needs (`engine.fewest_units`), or with over 1% of
    its resamples undefined, gets `reliable` False (`analysis.replicate_interval`, the rule of
    `xray compare`); its external - internal difference inherits the mark. The multi-label
    macro difference averages the findings with an ROC-AUC on both sides, listed in its
    `findings`."""
    (ext, cut), (inner, own) = external, internal
    boot = {"n_boot": config.n_boot}
    ext_point, ext_reps = _scored(task, ext, cut, seed=config.seed, **boot)
    int_point, int_reps = _scored(task, inner, own, seed=config.seed + 1, **boot)
    intervals = {}
    for k, v in ext_point.items():
        iv = replicate_interval(v, ext_reps[k], alpha=config.alpha, min_units=MIN_UNITS,
                                fewest_units=fewest_units(task, k, ext, ext.groups))  # fmt: skip
        intervals[_name(k)] = (
            {"estimate": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_undefined": iv.n_undefined,
             "reliable": iv.reliable}
            if iv.defined
            else {"estimate": None, "lo": None, "hi": None}
        )  # fmt: skip
    difference: dict[str, Any] = {}
    for k, v in ext_point.items():
        difference[_name(k)] = replicate_difference(
            (v, ext_reps[k]), (int_point[k], int_reps[k]), alpha=config.alpha
        )
        if intervals[_name(k)].get("reliable") is False:
            difference[_name(k)]["reliable"] = False
    if task.multilabel:  # the macro difference over the findings with an AUC on both sides
        both = [
            n
            for n in task.class_names
            if np.isfinite(ext_point["auc", n]) and np.isfinite(int_point["auc", n])
        ]
        difference["roc_auc_macro"] = {
            **replicate_difference(
                _macro(ext_point, ext_reps, both, config.n_boot),
                _macro(int_point, int_reps, both, config.n_boot),
                alpha=config.alpha,
            ),
            "findings": both,
        }
        if intervals["roc_auc_macro"].get("reliable") is False:  # inherits the mark, as above
            difference["roc_auc_macro"]["reliable"] = False
    return intervals, difference


def _dataset_name(manifest: Manifest) -> str:
    """The evaluated dataset's name in the evaluation's folder name and tables: the manifest's
    name, after its folder's name for a CSV (two `labels.csv` or `valid.csv` of different
    folders are then told apart)."""
    name = manifest.name or manifest.root.stem
    source = manifest.source
    if source is not None and source.suffix.lower() == ".csv" and manifest.root.name:
        folder = manifest.root.name
        return name if name == folder or name.startswith(folder + "-") else f"{folder}-{name}"
    return name


def _name(key: tuple[str, str | None]) -> str:
    """metrics.json's name of an engine metric: `roc_auc`, or `auc_<class>` per class."""
    metric, cls = key
    return metric if cls is None else f"{metric}_{cls}"


def _coded(task: Task, y: np.ndarray) -> np.ndarray:
    """Labels as the engine scores them: binary 1 for the positive class, 0 else; as given."""
    return (y == task.positive_index).astype(np.int64) if task.binary else y


def _strata(task: Task, y: np.ndarray) -> np.ndarray:
    """The label a local calibration draw is stratified by: the class, or for multi-label
    whether the image shows any finding (so both kinds reach the fit)."""
    return (np.nansum(y, axis=1) > 0).astype(np.int64) if task.multilabel else y


def _counts(task: Task, y: np.ndarray) -> dict[str, Any]:
    """Images per class (`per_class`; binary also `positives`, as before), or positive images
    per finding (`positives`)."""
    if task.multilabel:
        return {"positives": {n: int(np.sum(y[:, k] == 1)) for k, n in enumerate(task.class_names)}}
    per_class = {c: int(np.sum(y == k)) for k, c in enumerate(task.class_names)}
    if task.binary:
        return {"positives": per_class[task.positive_class], "per_class": per_class}
    return {"per_class": per_class}


def _split_scores(run: RunRecord, split: str, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,) or targets (N, L), `Task.scores` of the evaluated columns) of a run split."""
    sp = run.split_predictions(split)
    if "targets" in sp:
        return sp["targets"][:, columns], sp["probabilities"][:, columns]
    if "probabilities" in sp:
        return sp["label"], sp["probabilities"][:, columns]
    return sp["label"], sp["probability"]


def _run_operating_point(
    run: RunRecord, task: Task, columns: list[int], policy: str | None
) -> tuple[dict[str, Any], Thresholds]:
    """The operating point without local patients: the run's own (chosen on its validation
    set), or chosen again by `policy` on the run's validation predictions, never on the
    evaluated split. Returns metrics.json's `threshold` record and the thresholds."""

    if policy is not None:
        record, cut = choose_operating_point(task, *_split_scores(run, "val", columns),
                                             policy=policy)  # fmt: skip
        return {**record, "source": f"the validation predictions of {run.name}"}, cut
    record = {**run.metrics["threshold"], "source": f"the run {run.name}"}
    own = decisions(run.task, run)[0].thresholds
    if task.multiclass:
        return record, None
    if task.binary:
        return record, float(own)  # type: ignore[arg-type]
    cut = np.asarray(own, dtype=np.float64)[columns]
    ran = record.get("ran") or {}
    record.update(per_label=dict(zip(task.class_names, cut.tolist(), strict=True)),
                  ran={n: ran.get(n, True) for n in task.class_names}, chosen_on="val")  # fmt: skip
    return record, cut


def _internal_arrays(run: RunRecord, columns: list[int]) -> TestArrays:
    """The run's own test rows (`test_arrays`), restricted to the evaluated columns."""
    arrays = test_arrays(run)
    if arrays.labels.ndim == 2:
        return replace(arrays, labels=arrays.labels[:, columns], scores=arrays.scores[:, columns])
    return arrays


def _scored(
    task: Task, arrays: TestArrays, cut: Thresholds, *, n_boot: int, seed: int
) -> tuple[dict[MetricKey, float], dict[MetricKey, np.ndarray]]:
    """Every metric of the task at the thresholds `cut` (binary: `BOOT_METRICS`), as a point
    estimate and as (n_boot,) whole-patient bootstrap replicates (`compare.engine`)."""
    thresholds = (
        None
        if cut is None
        else (
            float(cut) if np.ndim(cut) == 0 else tuple(np.asarray(cut, dtype=np.float64).tolist())
        )
    )
    decision = Decision("evaluation", "", thresholds)
    score = kernel(task, arrays, decision, binary_metrics=BOOT_METRICS)
    point = point_estimates(score, arrays.n)
    reps = replicates(score, arrays.n, groups=arrays.groups, n_boot=n_boot, seed=seed)
    return point, reps


def _macro(
    point: dict[MetricKey, float],
    reps: dict[MetricKey, np.ndarray],
    findings: list[str],
    n_boot: int,
) -> tuple[float | None, np.ndarray]:
    """The macro ROC-AUC over `findings` (estimate, (n_boot,) replicates); None without any."""
    if not findings:
        return None, np.full(n_boot, np.nan)
    estimate = float(np.mean([point["auc", n] for n in findings]))
    return estimate, np.mean([reps["auc", n] for n in findings], axis=0)


def _predictions(
    task: Task,
    keys: np.ndarray,
    groups: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    cut: Thresholds,
    mask: np.ndarray,
) -> SplitPredictions:
    """predictions.csv rows of the images `mask` selects, decided by the task's rule."""
    decided = task.decide(s[mask], cut)  # type: ignore[arg-type]
    return SplitPredictions(list(keys[mask]), list(groups[mask]), y[mask], s[mask], decided)


def _plot(
    task: Task,
    folder: Path,
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: Any,
    internal: TestArrays,
    metrics: dict[str, Any],
    title: str,
) -> None:
    """reliability.png, roc.png and (single-label tasks) confusion.png of an evaluation.

    `test`: (labels, model scores, reported scores) of the evaluated images; `title` the
    confusion matrix's."""
    from featurestore.plots import plot_confusion, plot_reliability, plot_roc

    y, raw, s = test
    recalibrated = fitted.method != "identity"
    if task.multilabel:
        per = {}
        for k, n in enumerate(task.class_names):
            seen = ~np.isnan(y[:, k])
            per[n] = (y[seen, k], s[seen, k])
        plot_reliability(per, folder / "reliability.png")
        plot_roc(per, folder / "roc.png")
        return
    if task.binary:
        y_pos = _coded(task, y)
        curves = {"external": (y_pos, raw)}
        if recalibrated:
            curves["external, recalibrated"] = (y_pos, fitted.apply(raw))
        roc = {"external": (y_pos, s), "internal test": (internal.labels, internal.scores)}
        matrix = metrics["at_threshold"]["confusion_matrix"]
    else:
        curves = {"external (top label)": top_label(y, raw)}
        if recalibrated:
            curves["external, recalibrated"] = top_label(y, fitted.apply(raw))
        roc = {c: (y == k, s[:, k]) for k, c in enumerate(task.class_names)}
        matrix = metrics["argmax"]["confusion_matrix"]
    plot_reliability(curves, folder / "reliability.png")
    plot_roc(roc, folder / "roc.png")
    plot_confusion(matrix, list(task.class_names), folder / "confusion.png", title=title)
