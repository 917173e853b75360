"""External validation (`xray evaluate`): a trained run scored on another labelled dataset.

The run's exact model scores the other dataset's split: frozen runs through a feature store of
that dataset (extracted once with the run's backbone and preprocessing, provenance-checked),
fine-tuned runs on the decoded images. The result is an evaluation folder that `compare` reads
like a run's test result, with patient-clustered intervals, calibration, and the difference
from the run's internal test result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.compare.bootstrap import (
    BOOT_METRICS,
    BootMetric,
    bootstrap_interval,
    bootstrap_replicates,
)
from featurestore.compare.calibration import (
    calibration_from_dict,
    calibration_report,
    fit_calibration,
)
from featurestore.compare.metrics import (
    evaluate_split,
    expected_calibration_error,
    operating_point,
)
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.data import Manifest
    from featurestore.runs import RunRecord
    from featurestore.use import Predictor

DIFFERENCE_METRICS: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "f1_positive",
    "roc_auc",
    "pr_auc",
    "brier",
)
"""Metrics whose external - internal difference gets an interval."""
# Provenance a frozen run's store and the external store must share (the dataset differs).
MODEL_PROVENANCE = (
    "backbone",
    "weights_id",
    "weights_sha256",
    "preprocessing",
    "image_size",
    "dtype",
)


@dataclass(frozen=True)
class Scores:
    """One split of a dataset scored by a run's model, in manifest order."""

    keys: list[str]
    groups: list[str]
    """Patient ids (N,)."""
    labels: np.ndarray
    """(N,) int64 class indices, in the run's class order."""
    probabilities: np.ndarray
    """(N,) float64 P(positive class), the model's own output."""
    fingerprint: str
    """The dataset's fingerprint (every file hashed)."""


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


def calibration_patients(
    groups: np.ndarray | list[str],
    n: int,
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) bool mask of the images of `n` patients drawn at random (seeded) from `groups`.

    Whole patients move: no patient has images on both sides, so the evaluated images never
    share a patient with the images the recalibration and threshold were chosen on. With
    `labels` (N,) the draw is stratified by each patient's most frequent label: classes get
    seats in proportion to their patients (largest remainder), at least one each when `n`
    allows, so a small calibration set still holds both classes.

    Raises:
        XrayError: when `n` < 1 or the split does not have more than `n` patients.
    """
    g = np.asarray(groups).astype(str)
    patients, inverse = np.unique(g, return_inverse=True)  # sorted: independent of file order
    if n < 1:
        raise XrayError(f"--recalibrate takes at least 1 patient, got {n}")
    if n >= patients.size:
        raise XrayError(
            f"--recalibrate {n} would take every patient of the split ({patients.size}): "
            "leave some patients to evaluate"
        )
    rng = np.random.default_rng(seed)
    if labels is None:
        chosen = rng.choice(patients.size, size=n, replace=False)
        return np.isin(inverse, chosen)
    y = np.asarray(labels).astype(np.int64)
    counts = np.zeros((patients.size, int(y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (inverse, y), 1)
    patient_class = counts.argmax(1)  # (P,)
    classes, members = np.unique(patient_class, return_counts=True)
    quota = n * members / members.sum()
    seats = np.floor(quota).astype(np.int64)
    if n >= classes.size:
        seats = np.maximum(seats, 1)
    while seats.sum() > n:  # the minimum of one seat overshot: take from the largest
        seats[np.argmax(seats)] -= 1
    for k in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if seats.sum() >= n:
            break
        seats[k] += 1
    seats = np.minimum(seats, members)
    chosen_list: list[int] = []
    for c, k in zip(classes, seats, strict=True):
        pool = np.flatnonzero(patient_class == c)
        chosen_list.extend(rng.choice(pool, size=int(k), replace=False).tolist())
    return np.isin(inverse, np.array(chosen_list, dtype=np.int64))


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

    Raises:
        XrayError: a run or dataset that cannot be read, other class names, an empty split,
            an impossible `recalibrate`, or a backbone whose weights are not at hand.
    """
    from featurestore.data import load_manifest
    from featurestore.use import load_predictor

    config = config or EvaluateConfig()
    predictor = load_predictor(Path(run_dir), weights=weights, device=config.device)
    run = predictor.run
    manifest = load_manifest(Path(data))
    if tuple(manifest.class_names) != tuple(predictor.class_names):
        raise XrayError(
            f"{data} has classes {', '.join(manifest.class_names)} but {run.name} was trained on "
            f"{', '.join(predictor.class_names)}: evaluate on a dataset with the same labels"
        )
    if not manifest.split(config.split):
        raise XrayError(f"{data} has no {config.split} images: choose another --split")
    if predictor.mode == "frozen":
        scores = _score_frozen(predictor, manifest, config, weights, progress, notice)
    else:
        scores = _score_images(predictor, manifest, config, progress)
    return _conclude(run, predictor, manifest, scores, config)


def _dataset_tag(manifest: Manifest) -> str:
    """`<dataset name>-<8 hex of its resolved path>`: two datasets that share a folder name
    (two hospitals' `chest_xray/`) never share a store."""
    where = str(Path(manifest.source or manifest.root).resolve())
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return f"{manifest.name or manifest.root.stem}-{digest}"


def _score_frozen(
    predictor: Predictor,
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
        replace(manifest, name=_dataset_tag(manifest)),
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
        probs = predictor.head(features).float().softmax(1)  # (N, C)
    p = probs[:, predictor.positive_index].double().cpu().numpy()
    return Scores(
        list(arrays.keys),
        list(arrays.groups),
        arrays.labels.astype(np.int64),
        p,
        str(store.attrs["dataset_fingerprint"]),
    )


def _score_images(
    predictor: Predictor,
    manifest: Manifest,
    config: EvaluateConfig,
    progress: Progress | None,
) -> Scores:
    """A fine-tuned run: decode, preprocess and score the split's images (any layout)."""
    import torch

    from featurestore.data import dataset_fingerprint

    records = manifest.split(config.split)
    task = progress.add_task("evaluate", total=len(records), unit="img") if progress else None
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
            probs = predictor.logits(x).softmax(1)  # (B, C)
        p_all.append(probs[:, predictor.positive_index].double().cpu().numpy())
        if progress is not None and task is not None:
            progress.advance(task, len(batch))
    return Scores(
        [r.key for r in records],
        [r.group for r in records],
        np.array([r.label for r in records], dtype=np.int64),
        np.concatenate(p_all),
        dataset_fingerprint(manifest, progress=progress),
    )


def _interval(metric: str, threshold: float, y: np.ndarray, p: np.ndarray, groups: np.ndarray,
              config: EvaluateConfig) -> dict[str, float | None]:  # fmt: skip
    """A patient-clustered percentile interval; None values where the metric is undefined."""
    try:
        r = bootstrap_interval(
            BootMetric(metric, threshold), y, p, groups=groups,
            n_boot=config.n_boot, alpha=config.alpha, seed=config.seed,
        )  # fmt: skip
    except XrayError:  # undefined on this split (one class only)
        return {"estimate": None, "lo": None, "hi": None}
    return {"estimate": r.estimate, "lo": r.lo, "hi": r.hi}


def _difference(
    metric: str,
    external: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    internal: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    config: EvaluateConfig,
) -> dict[str, float | None]:
    """external - internal with a two-sample bootstrap interval (Efron & Tibshirani 1993,
    sec. 8.3): each test set resampled by patient on its own, the differences of the
    replicates taken pairwise, percentile interval. The sets share no images, so unpaired."""
    ye, pe, ge, te = external
    yi, pi, gi, ti = internal
    me, mi = BootMetric(metric, te), BootMetric(metric, ti)
    est_e, est_i = me(ye, pe), mi(yi, pi)
    out: dict[str, float | None] = {
        "external": None if np.isnan(est_e) else est_e,
        "internal": None if np.isnan(est_i) else est_i,
        "difference": None,
        "lo": None,
        "hi": None,
    }
    if np.isnan(est_e) or np.isnan(est_i):
        return out
    de = bootstrap_replicates(me, ye, pe, groups=ge, n_boot=config.n_boot, seed=config.seed)
    di = bootstrap_replicates(mi, yi, pi, groups=gi, n_boot=config.n_boot, seed=config.seed + 1)
    d = (de - di)[np.isfinite(de - di)]
    out["difference"] = est_e - est_i
    if d.size:
        lo, hi = np.quantile(d, [config.alpha / 2, 1 - config.alpha / 2])
        out["lo"], out["hi"] = float(lo), float(hi)
    return out


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
    intervals = {m: _interval(m, threshold, y_pos, p, g, config) for m in BOOT_METRICS}
    internal = run.split_predictions("test")
    run_threshold = float(run.metrics["threshold"]["value"])
    yi = (internal["label"] == pos).astype(np.int64)
    difference = {
        m: _difference(m, (y_pos, p, g, threshold),
                       (yi, internal["probability"], internal["patient"], run_threshold), config)
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


SECTION_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc")
"""Metrics of the report's external-validation table (each with its interval)."""


def find_evaluations(folder: Path, runs: dict[str, str]) -> list[dict[str, Any]]:
    """Summaries of the evaluation folders under `folder` made from the runs named in `runs`
    (run folder name -> display label), oldest first; [] when there are none."""
    import json

    from featurestore.runs import EVALUATION_FILE, is_evaluation

    if not Path(folder).is_dir():
        return []
    out = []
    for path in sorted(Path(folder).iterdir()):
        if not is_evaluation(path):
            continue
        try:
            evaluation = json.loads((path / EVALUATION_FILE).read_text())
            metrics = json.loads((path / "metrics.json").read_text())
        except ValueError:
            continue  # unreadable: compare reports runs, not broken side files
        if evaluation.get("run_name") not in runs:
            continue
        out.append(
            {
                "path": str(path),
                "run": evaluation["run_name"],
                "label": runs[evaluation["run_name"]],
                "dataset": evaluation.get("dataset"),
                "split": evaluation.get("split"),
                "images": evaluation.get("images"),
                "patients": evaluation.get("patients"),
                "recalibrate": evaluation.get("recalibrate", 0),
                "threshold": metrics["threshold"],
                "intervals": metrics["intervals"]["at_threshold"],
                "ece": metrics["calibration"].get("ece"),
                "difference": metrics["internal_difference"],
            }
        )
    return out


def _fmt(iv: dict[str, Any], *, signed: bool = False) -> str:
    """`0.91 [0.88, 0.93]`; `-` where undefined."""
    value = iv.get("estimate", iv.get("difference"))
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if iv.get("lo") is None:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{iv['lo']:{sign}.3f}, {iv['hi']:{sign}.3f}]"


def external_section(evaluations: list[dict[str, Any]]) -> list[str]:
    """The report's "External validation" section (Markdown lines); [] without evaluations."""
    if not evaluations:
        return []
    out = [
        "## External validation",
        "",
        "Each run scored on another labelled dataset by `xray evaluate`, at the threshold "
        "shown (the run's own, chosen on its validation set, unless stated). Intervals: 95% "
        "percentile bootstrap over patients; Δ = external - internal test, with a two-sample "
        "patient bootstrap interval. With local recalibration, N patients of the external "
        "split were used to refit and are not counted.",
        "",
    ]
    head = ["run", "dataset", "images / patients", "threshold", "accuracy", "sensitivity"]
    head += ["specificity", "ROC-AUC", "ECE", "Δ accuracy", "Δ ROC-AUC"]
    rows = []
    for e in evaluations:
        t = e["threshold"]
        where = f"{e['dataset']} ({e['split']})"
        if e.get("recalibrate"):
            where += f", recalibrated on {e['recalibrate']} local patients"
        rows.append(
            [e["label"], where, f"{e['images']} / {e['patients']}",
             f"{t['value']:.3f} ({t.get('policy', '?')}, on {t.get('chosen_on', 'val')})"]
            + [_fmt(e["intervals"][m]) for m in SECTION_METRICS]
            + ["-" if e["ece"] is None else f"{e['ece']:.3f}",
               _fmt(e["difference"]["accuracy"], signed=True),
               _fmt(e["difference"]["roc_auc"], signed=True)]
        )  # fmt: skip
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]
