"""Export a run's whole model to ONNX (backbone + head + recalibration + threshold), check it,
and score images with the exported file through onnxruntime."""

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
from featurestore.use.predict import PredictionRow, load_predictor

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.models import Preprocessing
    from featurestore.use.predict import Predictor

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("probability", "calibrated", "prediction")
EXPORT_FORMATS = ("onnx",)
OPSET = 17
METADATA_KEY = "xray"
"""The ONNX metadata_props key holding the JSON of what a user needs beside the graph."""
ONNX_HINT = (
    "install the onnx extra: pip install -e '.[onnx]' in the xray folder (onnx and onnxruntime)"
)


class ExportedModel(nn.Module):
    """(N, 3, S, S) preprocessed images -> P(positive) (N,), recalibrated P(positive) (N,) and
    the class index at the run's threshold (N,) int64.

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

    The check runs the exported file through onnxruntime on the run's test images (from `data`,
    else the dataset the run recorded) and compares P(positive) with predictions.csv.

    Raises:
        XrayError: an unknown format, onnx missing, a run that cannot be rebuilt, or test
            images that cannot be found.
    """
    if fmt not in EXPORT_FORMATS:
        raise XrayError(f"unknown --format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    _require_onnx()
    import onnx

    predictor = load_predictor(Path(run_dir), weights=weights, device="cpu")
    if predictor.task != "binary":  # checked before anything is written
        raise XrayError(
            f"{Path(run_dir).name} is a {predictor.task} run: xray export writes binary "
            "classifiers only (one P(positive), a threshold, a recalibration)"
        )
    run = predictor.run
    scale, bias, calibration = _recorded_calibration(run.metrics.get("calibration"))
    model = ExportedModel(predictor, scale=scale, bias=bias).eval()
    pre = predictor.preprocessing
    metadata = {
        "run": run.name,
        "mode": predictor.mode,
        "model": run.config.get("model"),
        "class_names": list(predictor.class_names),
        "positive_index": predictor.positive_index,
        "threshold": predictor.threshold,
        "threshold_policy": run.metrics["threshold"].get("policy"),
        "calibration": calibration,
        # Random weights or synthetic data travel with the model, as they do with the run.
        "warnings": run_warnings(run.config),
        "temperature": 1.0 / scale if scale else math.inf,
        "preprocessing": pre.as_dict(),
        "input": f"{ONNX_INPUT}: float32 (N, 3, {pre.crop}, {pre.crop}), RGB after "
        "resize, center crop, /255 and (x - mean) / std",
        "outputs": {
            "probability": "P(positive) (N,)",
            "calibrated": "recalibrated P(positive) (N,)",
            "prediction": "class index at the threshold (N,) int64",
        },
    }
    path = Path(out) if out is not None else run.path / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, pre.crop, pre.crop)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _onnx_export(model, example, tmp)
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


def _onnx_export(model: nn.Module, example: Tensor, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter (no onnxscript needed), batch dynamic."""
    kwargs: dict[str, Any] = {
        "input_names": [ONNX_INPUT],
        "output_names": list(ONNX_OUTPUTS),
        "dynamic_axes": {ONNX_INPUT: {0: "batch"}, **{o: {0: "batch"} for o in ONNX_OUTPUTS}},
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
    """Score the run's test images with the exported file; compare with predictions.csv."""
    from featurestore.data import load_manifest

    run = predictor.run
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
    p, _, pred = session.run_images(images, batch_size=batch_size, progress=progress)
    ref_p, ref_pred, reference = test["probability"], test["prediction"], "predictions.csv"
    if predictor.autocast is not None:
        # Like with like: the graph is float32, so is this reference (same weights, images).
        ref_p, ref_pred = _score_fp32(predictor, images, batch_size)
        reference = "the run's model in fp32"
    diff = float(np.max(np.abs(p - ref_p))) if p.size else 0.0
    agree = bool(np.array_equal(pred, ref_pred))
    return ExportResult(path, metadata, int(p.size), diff, agree, reference)


def _score_fp32(
    predictor: Predictor, images: list[Any], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) (N,) and the class at the run's threshold (N,) of the run's model, float32."""
    import dataclasses

    fp32 = dataclasses.replace(predictor, autocast=None)
    probs = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([fp32.preprocessing(im) for im in images[start : start + batch_size]])
        with torch.inference_mode():
            probs.append(fp32.logits(x).softmax(1)[:, fp32.positive_index].double().numpy())
    p = np.concatenate(probs) if probs else np.zeros(0)
    pos = fp32.positive_index
    return p, np.where(p >= fp32.threshold, pos, 1 - pos).astype(np.int64)


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
    """An exported xray model in onnxruntime: preprocessing from its metadata, batches in,
    P(positive), recalibrated P(positive) and the class index out."""

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
        self.class_names: tuple[str, ...] = tuple(self.metadata["class_names"])
        self.positive_index = int(self.metadata["positive_index"])
        self.threshold = float(self.metadata["threshold"])
        self.preprocessing = _preprocessing(self.metadata["preprocessing"])
        self.warnings: list[str] = list(self.metadata.get("warnings", []))
        self.task = "binary"  # exported models are binary classifiers
        self.label_thresholds: dict[str, float] | None = None

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 -> P(positive) (B,), recalibrated (B,), class index (B,)."""
        p, q, pred = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x.astype(np.float32)})
        return p.astype(np.float64), q.astype(np.float64), pred.astype(np.int64)

    def run_images(
        self, images: Sequence[Any], *, batch_size: int = 32, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PIL images -> P(positive) (N,), recalibrated (N,), class index (N,)."""
        outs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        task = progress.add_task("onnx", total=len(images), unit="img") if progress else None
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([self.preprocessing(img) for img in chunk]).numpy()
            outs.append(self.run_batch(x))
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
        if not outs:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
        return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]

    def predict(
        self, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress | None = None
    ) -> list[PredictionRow]:
        """One row per file, in input order; unreadable files become rows with an error."""
        from featurestore.data import decode_image

        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        rows: list[PredictionRow | None] = [None] * len(paths)
        good, images = [], []
        for i, path in enumerate(paths):
            try:
                images.append(decode_image(Path(path), min_size=self.preprocessing.resize))
                good.append(i)
            except XrayError as exc:  # ImageDecodeError: one line naming the file
                rows[i] = PredictionRow(str(path), None, None, str(exc))
        p, _, pred = self.run_images(images, batch_size=batch_size, progress=progress)
        for i, prob, cls in zip(good, p.tolist(), pred.tolist(), strict=True):
            rows[i] = PredictionRow(str(paths[i]), prob, self.class_names[cls])
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
