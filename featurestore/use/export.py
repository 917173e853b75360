"""Export a run's whole model to ONNX (backbone + head + the task's probabilities and decision
rule; binary runs also their recalibration), check it, and score images with the exported file
through onnxruntime."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.runs import run_warnings
from featurestore.tasks import Task
from featurestore.use.predict import PredictionRow, load_predictor, prediction_row

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.models import Preprocessing
    from featurestore.use.predict import Predictor

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("probability", "calibrated", "prediction")
"""A binary graph's outputs (P(positive), recalibrated, class index), as exports always had."""
TASK_OUTPUTS = ("probabilities", "prediction")
"""A multi-class or multi-label graph's outputs: (N, C) probabilities and the decisions."""
NO_RECALIBRATION = (
    "no recalibration in the graph: it outputs the probabilities the run computed; the "
    "recalibration the run fitted on validation (temperature scaling, or Platt per finding) is "
    "under recorded_calibration in this metadata, to apply to those outputs"
)
EXPORT_FORMATS = ("onnx",)
OPSET = 17
METADATA_KEY = "xray"
"""The ONNX metadata_props key holding the JSON of what a user needs beside the graph."""
ONNX_HINT = (
    "install the onnx extra: pip install -e '.[onnx]' in the xray folder (onnx and onnxruntime)"
)


def onnx_outputs(task: Task) -> tuple[str, ...]:
    """The output names of a task's graph: binary keeps its three, the others two."""
    return ONNX_OUTPUTS if task.binary else TASK_OUTPUTS


class TaskModel(nn.Module):
    """Multi-class and multi-label runs: (N, 3, S, S) preprocessed images -> probabilities
    (N, C) and decisions, both by the run's `Task`.

    Multi-class: softmax over classes, the decision the argmax class index (N,) int64.
    Multi-label: a sigmoid per finding, the decisions (N, L) int64, finding k present when
    p_k >= its validation-chosen threshold t_k (metrics.json `threshold.per_label`).
    """

    def __init__(self, predictor: Predictor, task: Task):
        super().__init__()
        if task.binary:
            raise ValueError("binary runs export as ExportedModel")
        self.trunk = predictor.trunk
        self.head = predictor.head
        self.task = task
        t = _label_thresholds(task, predictor.label_thresholds) or []
        self.register_buffer("thresholds", torch.tensor(t, dtype=torch.float32))  # (L,)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(self.trunk(image).float()).float()  # (N, C)
        probs = self.task.probabilities(logits)  # (N, C)
        if self.task.multilabel:
            t: Tensor = self.thresholds  # type: ignore[assignment]  # a buffer
            return probs, (probs >= t[None, :]).to(torch.int64)  # (N, L)
        return probs, probs.argmax(1).to(torch.int64)  # (N,)


class ExportedModel(nn.Module):
    """Binary runs: (N, 3, S, S) preprocessed images -> P(positive) (N,), recalibrated
    P(positive) (N,) and the class index at the run's threshold (N,) int64.

    The recalibration is the run's Platt scaling on the logit, sigmoid(scale * z + bias) with
    z = logit(P(positive)), fitted on validation (identity for runs without one); the class is
    taken on the uncalibrated probability, as predictions.csv does.
    """

    def __init__(self, predictor: Predictor, *, scale: float, bias: float):
        super().__init__()
        self.trunk = predictor.trunk
        self.head = predictor.head
        self.positive_index = predictor.positive_index
        self.register_buffer("threshold", torch.tensor(float(predictor.threshold)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("bias", torch.tensor(float(bias)))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.head(self.trunk(image).float()).float()  # (N, C)
        p = logits.softmax(1)[:, self.positive_index]  # (N,)
        # The logit of P(positive) for two classes: z_pos - z_neg, exact and finite.
        z = logits[:, self.positive_index] - logits[:, 1 - self.positive_index]  # (N,)
        calibrated = torch.sigmoid(self.scale * z + self.bias)  # (N,)
        pred = torch.where(p >= self.threshold, self.positive_index, 1 - self.positive_index)
        return p, calibrated, pred.to(torch.int64)


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote and how well it reproduces the run."""

    path: Path
    metadata: dict[str, Any]
    checked_images: int
    max_abs_difference: float | None
    """max |P_onnx - P_reference| over the run's test images; None when not checked."""
    predictions_agree: bool | None
    """Every test image gets the reference's class; None when not checked."""
    reference: str = "predictions.csv"
    """What the file was checked against: predictions.csv for float32 runs; for runs that
    recorded bf16/fp16 (which ONNX's float32 graph does not compute in), the run's model
    scoring the same images in float32 ("the run's model in fp32")."""
    recorded_max_abs_difference: float | None = None
    """max |P_onnx - P_predictions.csv|: how far the file is from the figures the run reports
    (equal to `max_abs_difference` when the reference is predictions.csv); None: not checked."""
    recorded_decisions_differ: int | None = None
    """Test images whose class (any finding, multi-label) differs from predictions.csv's."""
    recorded_precision: str = "float32"
    """What predictions.csv was computed in: float32, or the run's bf16/fp16 autocast."""


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise XrayError(
            f"ONNX export and inference need onnx and onnxruntime: {ONNX_HINT}"
        ) from None


def export_run(
    run_dir: Path,
    out: Path | None = None,
    *,
    fmt: str = "onnx",
    weights: Path | None = None,
    data: Path | None = None,
    check: bool = True,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a run's whole model to `out` (default `<run>/model.onnx`), then check it.

    Every task exports: binary graphs give P(positive), its recalibration and the class at the
    threshold (as always); multi-class graphs the softmax probabilities (N, C) and the argmax;
    multi-label graphs a sigmoid per finding (N, L) and each finding at its own threshold. The
    metadata records the task, the class names and the decision rule.

    The check runs the exported file through onnxruntime on the run's test images (from `data`,
    else the dataset the run recorded) and compares every probability column and every decision
    with predictions.csv.

    Raises:
        XrayError: an unknown format, onnx missing, a run that cannot be rebuilt, or test
            images that cannot be found.
    """
    if fmt not in EXPORT_FORMATS:
        raise XrayError(f"unknown --format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    _require_onnx()
    import onnx

    predictor = load_predictor(Path(run_dir), weights=weights, device="cpu")
    run = predictor.run
    task = run.task
    model: nn.Module
    if task.binary:
        scale, bias, calibration = _recorded_calibration(run.metrics.get("calibration"))
        model = ExportedModel(predictor, scale=scale, bias=bias).eval()
    else:
        model = TaskModel(predictor, task).eval()
    pre = predictor.preprocessing
    metadata: dict[str, Any] = {
        "run": run.name,
        "mode": predictor.mode,
        "model": run.config.get("model"),
        "task": task.kind,
        "class_names": list(predictor.class_names),
        "positive_index": predictor.positive_index,
        "decision_rule": task.decision_rule,
    }
    if task.binary:
        metadata |= {
            "threshold": predictor.threshold,
            "threshold_policy": run.metrics["threshold"].get("policy"),
            "calibration": calibration,
            "temperature": 1.0 / scale if scale else math.inf,
        }
    else:
        metadata |= {
            "threshold": None,
            "label_thresholds": (
                dict(zip(task.class_names, t, strict=True))
                if (t := _label_thresholds(task, predictor.label_thresholds)) is not None
                else None
            ),
            "threshold_policy": run.metrics["threshold"].get("policy") if task.multilabel else None,
            "calibration": {"method": "none", "note": NO_RECALIBRATION},
            "recorded_calibration": run.metrics.get("calibration"),
            "temperature": None,
        }
    metadata |= {
        # Random weights or synthetic data travel with the model, as they do with the run.
        "warnings": run_warnings(run.config),
        "preprocessing": pre.as_dict(),
        "input": f"{ONNX_INPUT}: float32 (N, 3, {pre.crop}, {pre.crop}), RGB after "
        "resize, center crop, /255 and (x - mean) / std",
        "outputs": _output_docs(task),
    }
    path = Path(out) if out is not None else run.path / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, pre.crop, pre.crop)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _onnx_export(model, example, tmp, onnx_outputs(task))
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(proto, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if not check:
        return ExportResult(path, metadata, 0, None, None)
    return _check(path, metadata, predictor, data, batch_size, progress)


def _output_docs(task: Task) -> dict[str, str]:
    """What each graph output is, for the metadata."""
    if task.binary:
        return {
            "probability": "P(positive) (N,)",
            "calibrated": "recalibrated P(positive) (N,)",
            "prediction": "class index at the threshold (N,) int64",
        }
    if task.multiclass:
        return {
            "probabilities": f"softmax P(class) (N, {task.n_outputs}), class_names order",
            "prediction": "the most probable class's index (argmax) (N,) int64",
        }
    return {
        "probabilities": f"sigmoid P(finding) (N, {task.n_outputs}), class_names order",
        "prediction": f"1 where P(finding) >= its label_thresholds entry (N, {task.n_outputs}) "
        "int64",
    }


def _recorded_calibration(doc: Any) -> tuple[float, float, dict[str, Any]]:
    """(scale, bias, the record) of the run's Platt scaling; the identity when it has none."""
    if not isinstance(doc, dict) or doc.get("method") != "platt":
        return 1.0, 0.0, {"method": "identity", "scale": 1.0, "bias": 0.0}
    try:
        scale, bias = float(doc["scale"]), float(doc["bias"])
    except (KeyError, TypeError, ValueError) as exc:
        raise XrayError(f"malformed calibration in metrics.json ({exc})") from None
    keep = ("method", "scale", "bias", "fitted_on", "n")
    return scale, bias, {k: doc[k] for k in keep if k in doc}


def _onnx_export(
    model: nn.Module, example: Tensor, path: Path, outputs: Sequence[str] = ONNX_OUTPUTS
) -> None:
    """torch.onnx.export with the TorchScript exporter (no onnxscript needed), batch dynamic."""
    kwargs: dict[str, Any] = {
        "input_names": [ONNX_INPUT],
        "output_names": list(outputs),
        "dynamic_axes": {ONNX_INPUT: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        "opset_version": OPSET,
    }
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # torch < 2.5 has no `dynamo` argument and exports this way anyway
            torch.onnx.export(model, (example,), str(path), **kwargs)


def _check(
    path: Path,
    metadata: dict[str, Any],
    predictor: Predictor,
    data: Path | None,
    batch_size: int,
    progress: Progress | None,
) -> ExportResult:
    """Score the run's test images with the exported file; compare every probability column
    and every decision with predictions.csv (binary: P(positive) and the class; multi-class:
    P(class) (N, C) and the argmax; multi-label: P(finding) (N, L) and the 0/1 findings), and
    for a bf16/fp16 run also with its model in float32 (the graph's own arithmetic)."""
    from featurestore.data import load_manifest

    run = predictor.run
    task = run.task
    source = data or _run_dataset(run.config)
    if source is None or not Path(source).exists():
        raise XrayError(
            f"the test images of {run.name} are not at {source}: pass --data with its dataset "
            "to check the export (or --no-check)"
        )
    manifest = load_manifest(Path(source))
    test = run.split_predictions("test")
    session = OnnxModel(path)
    known = {r.key for r in manifest.records}
    missing = [k for k in test["key"] if k not in known]
    if missing:
        raise XrayError(
            f"{source} lacks {len(missing)} test images of {run.name} (e.g. {missing[0]})"
        )
    images = [
        manifest.open_image(str(k), min_size=session.preprocessing.resize) for k in test["key"]
    ]
    outs = session.run_images(images, batch_size=batch_size, progress=progress)
    p, pred = outs[0], outs[-1]  # binary: (N,) P(positive); else (N, C) probabilities
    if task.binary:
        ref_p, ref_pred = test["probability"], test["prediction"]
    elif task.multiclass:
        ref_p, ref_pred = test["probabilities"], test["prediction"]
    else:
        ref_p, ref_pred = test["probabilities"], test["predictions"]
    recorded_diff = float(np.max(np.abs(p - ref_p))) if p.size else 0.0
    unequal = np.asarray(pred != ref_pred)  # (N,), or (N, L) findings
    differ = np.asarray(unequal.any(1) if unequal.ndim == 2 else unequal)  # (N,)
    if predictor.autocast is None and predictor.head_autocast is None:
        agree = not bool(differ.any())
        return ExportResult(path, metadata, len(images), recorded_diff, agree,
                            "predictions.csv", recorded_diff, int(differ.sum()))  # fmt: skip
    # Like with like: the graph is float32, so is this reference (same weights, images). The
    # distance from predictions.csv is kept: it is what a bf16 run's figures and the file differ by.
    amp = predictor.autocast or predictor.head_autocast
    precision = "fp16" if amp == torch.float16 else "bf16"
    fp32_p, fp32_pred = _score_fp32(predictor, images, batch_size)
    diff = float(np.max(np.abs(p - fp32_p))) if p.size else 0.0
    agree = bool(np.array_equal(pred, fp32_pred))
    return ExportResult(path, metadata, len(images), diff, agree, "the run's model in fp32",
                        recorded_diff, int(differ.sum()), precision)  # fmt: skip


def _score_fp32(
    predictor: Predictor, images: list[Any], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The run's model in float32, laid out as the graph's outputs: P(positive) (N,) and the
    class at the threshold (N,) of a binary run; (N, C) probabilities and the task's decisions
    (argmax (N,), or findings (N, L) at their thresholds) otherwise."""
    import dataclasses

    task = predictor.run.task
    fp32 = dataclasses.replace(predictor, autocast=None, head_autocast=None)
    probs = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([fp32.preprocessing(im) for im in images[start : start + batch_size]])
        with torch.inference_mode():
            probs.append(task.probabilities(fp32.logits(x)).double().numpy())  # (B, C)
    q = np.concatenate(probs) if probs else np.zeros((0, task.n_outputs))
    if task.binary:
        pos = fp32.positive_index
        p = q[:, pos]
        return p, np.where(p >= fp32.threshold, pos, 1 - pos).astype(np.int64)
    return q, task.decide(q, _label_thresholds(task, predictor.label_thresholds))


def _label_thresholds(task: Task, per_label: dict[str, float] | None) -> list[float] | None:
    """A multi-label task's thresholds in finding order; None for a multi-class task."""
    if not task.multilabel:
        return None
    if per_label is None or any(c not in per_label for c in task.class_names):
        raise XrayError(
            "the run records no threshold for every finding (metrics.json threshold.per_label)"
        )
    return [float(per_label[c]) for c in task.class_names]


def _run_dataset(config: dict[str, Any]) -> Path | None:
    """The dataset a run recorded: the CSV/npz file when there is one, else its root folder."""
    store = config.get("store") if isinstance(config.get("store"), dict) else None
    for doc in (store, config):
        if doc:
            where = doc.get("dataset_path") or doc.get("dataset_root")
            if where:
                return Path(str(where))
    return None


class OnnxModel:
    """An exported xray model in onnxruntime: preprocessing from its metadata, batches in, the
    graph's outputs out: P(positive), recalibrated P(positive) and the class index (binary), or
    the task's probabilities and decisions (multi-class, multi-label)."""

    def __init__(self, path: Path):
        _require_onnx()
        import onnxruntime as ort

        if not Path(path).is_file():
            raise XrayError(
                f"--model {path} does not exist: --model takes a model file written by "
                "`xray export` (.onnx); to predict with a run folder, pass --run RUN"
            )
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise XrayError(f"{path} is not a readable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise XrayError(f"{path} was not exported by `xray export` (no xray metadata)")
        self.path = Path(path)
        self.metadata: dict[str, Any] = json.loads(meta)
        # Files exported before the task was recorded are binary (export refused the others).
        self.spec = Task.from_record(self.metadata)
        self.task = self.spec.kind
        self.class_names: tuple[str, ...] = self.spec.class_names
        self.positive_index = int(self.metadata["positive_index"])
        value = self.metadata.get("threshold")
        self.threshold = float(value) if self.spec.binary else math.nan
        self.preprocessing = _preprocessing(self.metadata["preprocessing"])
        self.warnings: list[str] = list(self.metadata.get("warnings", []))
        per_label = self.metadata.get("label_thresholds")
        self.label_thresholds: dict[str, float] | None = (
            {str(k): float(v) for k, v in per_label.items()} if self.spec.multilabel else None
        )
        self.outputs = onnx_outputs(self.spec)

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(B, 3, S, S) float32 -> the graph's outputs: P(positive) (B,), recalibrated (B,) and
        the class index (B,) of a binary model; probabilities (B, C) and the decisions (B,)
        argmax or (B, L) findings otherwise. Probabilities float64, decisions int64."""
        outs = self.session.run(list(self.outputs), {ONNX_INPUT: x.astype(np.float32)})
        *probs, pred = outs
        return (*(q.astype(np.float64) for q in probs), pred.astype(np.int64))

    def run_images(
        self, images: Sequence[Any], *, batch_size: int = 32, progress: Progress | None = None
    ) -> tuple[np.ndarray, ...]:
        """PIL images -> `run_batch`'s outputs over all of them (N first)."""
        outs: list[tuple[np.ndarray, ...]] = []
        task = progress.add_task("onnx", total=len(images), unit="img") if progress else None
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([self.preprocessing(img) for img in chunk]).numpy()
            outs.append(self.run_batch(x))
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
        if not outs:
            c = self.spec.n_outputs
            if self.spec.binary:
                return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
            shape = (0, c) if self.spec.multilabel else (0,)
            return np.zeros((0, c)), np.zeros(shape, dtype=np.int64)
        return tuple(np.concatenate([o[i] for o in outs]) for i in range(len(self.outputs)))

    def predict(
        self, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress | None = None
    ) -> list[PredictionRow]:
        """One row per file, in input order, as `Predictor.predict` gives them; unreadable
        files become rows with an error."""
        from featurestore.data import decode_image, printable

        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        rows: list[PredictionRow | None] = [None] * len(paths)
        good, images = [], []
        for i, path in enumerate(paths):
            try:
                images.append(decode_image(Path(path), min_size=self.preprocessing.resize))
                good.append(i)
            except XrayError as exc:  # ImageDecodeError: one line naming the file
                rows[i] = PredictionRow(printable(str(path)), None, None, str(exc))
        outs = self.run_images(images, batch_size=batch_size, progress=progress)
        p, pred = outs[0], outs[-1]
        for i, prob, decided in zip(good, p.tolist(), pred.tolist(), strict=True):
            name = printable(str(paths[i]))
            if self.spec.binary:
                rows[i] = PredictionRow(name, prob, self.class_names[decided])
            else:
                rows[i] = prediction_row(self.spec, name, prob, decided)
        return [r for r in rows if r is not None]


def _preprocessing(doc: dict[str, Any]) -> Preprocessing:
    from featurestore.models import Preprocessing

    return Preprocessing(
        mean=tuple(float(v) for v in doc["mean"]),
        std=tuple(float(v) for v in doc["std"]),
        resize=int(doc["resize"]),
        crop=int(doc["crop"]),
        interpolation=str(doc["interpolation"]),
    )
