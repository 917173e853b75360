"""External validation (`xray evaluate`): a trained run scored on another labelled dataset.

The run's exact model scores the other dataset's split: frozen runs through a feature store of
that dataset (extracted once with the run's backbone and preprocessing, provenance-checked),
fine-tuned runs on the decoded images. The result is an evaluation folder that `compare` reads
like a run's test result, with patient-clustered intervals, calibration, and the difference
from the run's internal test result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare.bootstrap import BOOT_METRICS
from featurestore.compare.calibration import (
    calibration_from_dict,
    calibration_report,
    fit_calibration,
)
from featurestore.compare.external_data import (
    EvaluationResult,
    Findings,
    Scores,
    check_options,
    external_manifest,
    match_classes,
    match_findings,
)
from featurestore.compare.external_stats import (
    DIFFERENCE_METRICS,
    calibration_patients,
    external_difference,
    patient_interval,
)
from featurestore.compare.metrics import (
    evaluate_split,
    expected_calibration_error,
    operating_point,
)
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError

__all__ = ["EvaluationResult", "Scores", "evaluate_run", "match_classes"]

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.data import Manifest
    from featurestore.runs import RunRecord
    from featurestore.tasks import Task
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
    if task.binary:
        return _conclude(run, predictor, manifest, scores, config)
    from featurestore.compare.external_tasks import conclude_multiclass, conclude_multilabel

    if task.multiclass:
        return conclude_multiclass(run, task, manifest, scores, config)
    assert findings is not None
    return conclude_multilabel(run, task, manifest, scores, config, findings)


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
        probs = task.probabilities(predictor.head(features))  # (N, C)
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
    predictor: Predictor,
    manifest: Manifest,
    scores: Scores,
    config: EvaluateConfig,
) -> EvaluationResult:
    """Threshold, recalibration, metrics, intervals and the folder."""
    from featurestore.runs import write_evaluation

    pos = predictor.positive_index
    labels, p_raw = scores.labels, scores.probabilities
    keys, groups = np.array(scores.keys), np.array(scores.groups)
    run_policy = str(run.metrics["threshold"].get("policy", "youden"))
    policy = config.threshold_policy or run_policy
    local: dict[str, Any] | None = None
    rows: list[tuple[str, str, str, int, float, int]] = []
    if config.recalibrate:
        # The other site's own calibration set: whole patients out of the evaluated split.
        held = calibration_patients(groups, config.recalibrate, labels=labels, seed=config.seed)
        calibration = fit_calibration(labels[held], p_raw[held], positive_index=pos,
                                      split="calibration")  # fmt: skip
        p_cal = calibration.apply(p_raw)
        point = operating_point(labels[held], p_cal[held], policy=policy, positive_index=pos,
                                split="calibration")  # fmt: skip
        local = {
            "patients": int(np.unique(groups[held]).size),
            "images": int(held.sum()),
            "positives": int(np.sum(labels[held] == pos)),
            "seed": config.seed,
            "patient_ids": sorted(np.unique(groups[held]).tolist()),
        }
        for k, g, y, q in zip(keys[held], groups[held], labels[held], p_cal[held], strict=True):
            rows.append(("calibration", k, g, int(y), float(q), _cls(q, point["value"], pos)))
        keep = ~held
        p_used = p_cal
    else:
        calibration = calibration_from_dict(run.metrics.get("calibration"))
        if config.threshold_policy is None:
            point = {**run.metrics["threshold"], "source": f"the run {run.name}"}
        else:  # chosen again on the run's own validation predictions, never on this split
            val = run.split_predictions("val")
            point = operating_point(val["label"], val["probability"], policy=policy,
                                    positive_index=pos, split="val")  # fmt: skip
            point["source"] = f"the validation predictions of {run.name}"
        keep = np.ones(labels.size, dtype=bool)
        p_used = p_raw
    threshold = float(point["value"])
    y, p, g = labels[keep], p_used[keep], groups[keep]
    if y.size == 0:
        raise XrayError("no images left to evaluate")
    for k, gg, yy, q in zip(keys[keep], g, y, p, strict=True):
        rows.append(("test", k, gg, int(yy), float(q), _cls(q, threshold, pos)))

    metrics = evaluate_split(y, p, threshold=threshold, class_names=predictor.class_names,
                             positive_index=pos)  # fmt: skip
    y_pos = (y == pos).astype(np.int64)
    boot: dict[str, Any] = {"n_boot": config.n_boot, "alpha": config.alpha, "seed": config.seed}
    intervals = {m: patient_interval(m, threshold, y_pos, p, g, **boot) for m in BOOT_METRICS}
    internal = run.split_predictions("test")
    run_threshold = float(run.metrics["threshold"]["value"])
    yi = (internal["label"] == pos).astype(np.int64)
    difference = {
        m: external_difference(m, (y_pos, p, g, threshold),
                               (yi, internal["probability"], internal["patient"], run_threshold),
                               **boot)
        for m in DIFFERENCE_METRICS
    }  # fmt: skip
    # Calibration of the reported probabilities, and what the recalibration does to them.
    cal = calibration_report(calibration, {"test": (y, p_raw[keep])}, positive_index=pos)
    cal["reported_probability"] = "recalibrated" if config.recalibrate else "model output"
    cal["ece"] = expected_calibration_error(y_pos, p)
    cal["brier"] = float(np.mean((p - y_pos) ** 2))

    dataset = manifest.name or manifest.root.stem
    evaluation = {
        "run": str(run.path),
        "run_name": run.name,
        "data": str(Path(manifest.source or manifest.root)),
        "dataset": dataset,
        "dataset_fingerprint": scores.fingerprint,
        "split": config.split,
        "images": int(y.size),
        "patients": int(np.unique(g).size),
        "positives": int(y_pos.sum()),
        "threshold_source": point.get("source", "the local calibration patients"),
        "recalibrate": config.recalibrate,
        "local_calibration": local,
        "n_boot": config.n_boot,
        "alpha": config.alpha,
        "seed": config.seed,
        "interval_unit": "patients",
    }
    doc = {
        "best_epoch": run.metrics.get("best_epoch"),
        "epochs_run": run.metrics.get("epochs_run"),
        "stopped_early": run.metrics.get("stopped_early", False),
        "threshold": point,
        "test": metrics,
        "intervals": {"at_threshold": intervals},
        "calibration": cal,
        "internal_difference": difference,
    }
    name = f"{run.name}-on-{dataset}-{config.split}"
    if config.recalibrate:
        name += f"-local{config.recalibrate}"

    def plots(folder: Path) -> None:
        from featurestore.plots import plot_confusion, plot_reliability, plot_roc

        curves = {"external": (y_pos, p_raw[keep])}
        if calibration.method != "identity":
            curves["external, recalibrated"] = (y_pos, calibration.apply(p_raw[keep]))
        plot_reliability(curves, folder / "reliability.png")
        plot_roc({"external": (y_pos, p), "internal test": (yi, internal["probability"])},
                 folder / "roc.png")  # fmt: skip
        plot_confusion(metrics["at_threshold"]["confusion_matrix"], predictor.class_names,
                       folder / "confusion.png", title=f"{dataset} @ {threshold:.3f}")  # fmt: skip

    config_doc = {**run.config, "evaluation": evaluation}
    path = write_evaluation(
        config.out_dir, name, run=run, config=config_doc, metrics=doc, evaluation=evaluation,
        rows=rows, plots=plots,
    )  # fmt: skip
    return EvaluationResult(
        path, run.name, dataset, config.split, int(y.size), int(np.unique(g).size), point,
        metrics, intervals, difference, cal, local,
    )  # fmt: skip


def _cls(p: float, threshold: float, positive_index: int) -> int:
    """The class index at a threshold (predict positive when p >= threshold)."""
    return positive_index if p >= threshold else 1 - positive_index
