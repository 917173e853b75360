"""Use a trained run: rebuild its exact model from the run folder and score new images."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from featurestore.data import printable
from featurestore.devices import channels_last_for
from featurestore.errors import XrayError
from featurestore.tasks import Task

if TYPE_CHECKING:
    from PIL import Image
    from rich.progress import Progress

    from featurestore.models import Preprocessing
    from featurestore.runs import RunRecord

MODES = ("frozen", "finetune")


@dataclass(frozen=True)
class PredictionRow:
    """One input file's result: P(positive) and the class at the run's threshold, or an error."""

    path: str
    probability: float | None
    """P(positive class); None when the file could not be read."""
    prediction: str | None
    """Class name at the run's validation-chosen threshold; None on error."""
    error: str | None = None
    """Why the file could not be read (one line); None when it was scored."""
    probabilities: dict[str, float] | None = None
    """Multi-class runs: P(class) for every class, in class order (`probability` is then the
    predicted class's); multi-label runs: P(finding) for every finding (`probability` is then
    the highest); None for binary runs and on error."""


def prediction_row(
    task: Task, path: str, probs: Sequence[float], decision: int | Sequence[int]
) -> PredictionRow:
    """A result row from one image's probabilities (C,) and the task's decision
    (`Task.decide`: the class index at the threshold or the argmax, or 0/1 per finding).

    Binary: P(positive) and the class at the run's threshold. Multi-class: the decided class,
    its probability and every class's. Multi-label: every finding's probability; `prediction`
    lists the findings decided present (`|`-separated, `No Finding` when none), `probability`
    is the highest finding probability.
    """
    if task.binary:
        k = int(cast(int, decision))
        return PredictionRow(path, float(probs[task.positive_index]), task.class_names[k])
    per_class = dict(zip(task.class_names, (float(q) for q in probs), strict=True))
    if task.multiclass:
        k = int(cast(int, decision))
        return PredictionRow(path, float(probs[k]), task.class_names[k], None, per_class)
    on = [c for c, d in zip(task.class_names, cast(Sequence[int], decision), strict=True) if d]
    return PredictionRow(path, max(per_class.values()), "|".join(on) or "No Finding", None,
                         per_class)  # fmt: skip


class RunHead(nn.Module):
    """What follows the trunk in a run: (N, D) pooled features -> (N, C) logits.

    Frozen runs first round the features to the store's dtype (the head was trained on float16
    features by default), then standardise and apply the head as saved in best.pt.
    """

    def __init__(self, head: nn.Module, *, feature_dtype: torch.dtype | None = None):
        super().__init__()
        self.head = head
        self.feature_dtype = feature_dtype

    def forward(self, features: Tensor) -> Tensor:
        if self.feature_dtype is not None:
            features = features.to(self.feature_dtype).float()  # the store's rounding
        return self.head(features)


class Columns(nn.Module):
    """A trunk whose output keeps columns [start, stop) only: (N, D) -> (N, stop - start)."""

    def __init__(self, trunk: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.start, self.stop = start, stop

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(x)[:, self.start : self.stop]

    def cam_split(self) -> tuple[Any, Any]:
        """The wrapped trunk's Grad-CAM split, its pooled output sliced alike."""
        acts, pool = self.trunk.cam_split()  # type: ignore[operator]
        return acts, lambda a: pool(a)[:, self.start : self.stop]


@dataclass
class Predictor:
    """A run's model rebuilt for inference: trunk, head, preprocessing, threshold."""

    run: RunRecord
    trunk: nn.Module
    """(N, 3, S, S) -> (N, D), eval mode, on `device`."""
    head: RunHead
    """(N, D) -> (N, C) logits, eval mode, on `device`."""
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    positive_index: int
    threshold: float
    device: torch.device
    family: str
    """Backbone family (`resnet`, `densenet`, ...), for Grad-CAM's target layer."""
    mirror_extract: bool
    """Frozen runs: run the trunk the way `extract` did (channels_last, its precision)."""
    autocast: torch.dtype | None = None
    """The trunk's autocast dtype: its store's precision (frozen runs), else None (float32)."""
    head_autocast: torch.dtype | None = None
    """Frozen runs: the autocast dtype the head trained and was scored in (`_head_autocast`);
    None: float32."""

    @property
    def mode(self) -> str:
        """`frozen` or `finetune`."""
        return str(self.run.config["mode"])

    def prepare(self, x: Tensor) -> Tensor:
        """Move a batch (B, 3, S, S) to the device in the memory layout training used."""
        x = x.to(self.device)
        if self.mirror_extract or channels_last_for(self.device):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def logits(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C) float32 logits."""
        x = self.prepare(x)
        amp = self.autocast
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            features = self.trunk(x)  # (B, D)
            if not self.mirror_extract:  # fine-tune: trunk + head ran under one autocast
                return self.head(features).float()
        return self.head_logits(features)

    def head_logits(self, features: Tensor) -> Tensor:
        """A frozen run's head on features (N, D) -> (N, C) float32 logits, in the precision the
        head trained and was scored in (`head_autocast`), as predictions.csv was written."""
        amp = self.head_autocast
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return self.head(features.float()).float()

    label_thresholds: dict[str, float] | None = None
    """Multi-label runs: each finding's validation-chosen threshold; None otherwise."""

    @property
    def task(self) -> str:
        """`binary` (decided at the threshold), `multiclass` (argmax) or `multilabel` (each
        finding at its own threshold): the run's `Task` kind."""
        return self.run.task.kind

    def classify(self, p_pos: float) -> str:
        """A binary run's decision for one P(positive): the class name at the run's threshold."""
        pos = self.positive_index
        return self.class_names[pos if p_pos >= self.threshold else 1 - pos]

    def label_threshold_list(self) -> list[float] | None:
        """A multi-label run's thresholds in finding order; None for the other tasks."""
        if self.task != "multilabel":
            return None
        per_label = self.label_thresholds or {}
        return [float(per_label[c]) for c in self.class_names]

    def decision_thresholds(self) -> float | list[float] | None:
        """What `Task.decide` takes for this run: its threshold (binary), one per finding
        (multi-label), or None (multi-class: the argmax)."""
        return self.threshold if self.task == "binary" else self.label_threshold_list()

    def task_rows(self, paths: Sequence[str], probs: np.ndarray) -> list[PredictionRow]:
        """Result rows from probabilities (B, C), decided by the task's rule."""
        task = self.run.task
        decided = task.decide(probs, self.decision_thresholds())
        return [
            prediction_row(task, p, q, d)
            for p, q, d in zip(paths, probs.tolist(), decided.tolist(), strict=True)
        ]

    def load_image(self, path: Path) -> Image.Image:
        """Decode a file the way training did (reduced-scale JPEG decode down to the resize)."""
        from featurestore.data import decode_image

        return decode_image(path, min_size=self.preprocessing.resize)

    def predict(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> list[PredictionRow]:
        """One row per file, in input order; unreadable files become rows with an error."""
        if batch_size < 1:
            raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
        rows: list[PredictionRow | None] = [None] * len(paths)
        task = progress.add_task("predict", total=len(paths), unit="img") if progress else None
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            good: list[int] = []
            tensors: list[Tensor] = []
            for i in chunk:
                try:
                    tensors.append(self.preprocessing(self.load_image(Path(paths[i]))))
                    good.append(i)
                except XrayError as exc:  # ImageDecodeError: one line naming the file
                    rows[i] = PredictionRow(printable(str(paths[i])), None, None, str(exc))
            if tensors:
                with torch.inference_mode():
                    logits = self.logits(torch.stack(tensors))  # (B, C) float32
                    probs = self.run.task.probabilities(logits)  # softmax, or sigmoid per finding
                names = [printable(str(paths[i])) for i in good]
                done = self.task_rows(names, probs.double().cpu().numpy())
                for i, row in zip(good, done, strict=True):
                    rows[i] = row
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
        return [r for r in rows if r is not None]


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; folders replaced by their images (recursive, sorted, hidden ignored).

    A path that does not exist stays in the list: predicting it reports "file not found".
    """
    from featurestore.data import READ_FORMATS, is_image_file

    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise XrayError(f"folder {printable(str(path))} holds no images ({READ_FORMATS})")
        out.extend(found)
    if not out:
        raise XrayError("no images given: pass image files or folders")
    return out


def load_predictor(
    run_dir: Path, *, weights: Path | None = None, device: str = "auto"
) -> Predictor:
    """Rebuild a run's exact model: frozen (store's backbone + best.pt head) or fine-tune."""
    from featurestore.devices import resolve_device
    from featurestore.models import get_spec
    from featurestore.runs import load_run

    run = load_run(Path(run_dir))
    cfg = run.config
    mode, name = cfg.get("mode"), cfg.get("model")
    if mode not in MODES or not isinstance(name, str):
        raise XrayError(
            f"{run.path} is not a run of this xray (mode {mode!r}, model {name!r}): "
            "pass a folder written by `xray fit-head` or `xray finetune`"
        )
    if cfg.get("fused"):
        raise XrayError(
            f"{run.name} is a fused run (a head over several stores): predict and explain "
            "take runs on one backbone"
        )
    name = str(cfg.get("backbone_name") or name)  # frozen runs with --pooling: `rad-dino-cls`
    spec = get_spec(name)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise XrayError(f"--device must be auto, cpu or cuda, got {device!r}")
    torch_device = resolve_device(device)
    task = run.task  # as config.json records it
    class_names = task.class_names
    try:
        positive_index = task.positive_index
        recorded = run.metrics["threshold"]
        # Binary runs decide at one threshold; multi-class runs by argmax and multi-label runs
        # per finding (threshold.per_label): no single threshold.
        threshold = float(recorded["value"]) if task.binary else math.nan
        per_label = recorded.get("per_label") if task.multilabel else None
    except (KeyError, ValueError, TypeError) as exc:
        raise XrayError(f"{run.path} lacks what a run records ({exc}): retrain it") from None
    if task.binary and not math.isfinite(threshold):
        raise XrayError(f"{run.path}: a binary run needs a finite threshold in metrics.json")
    if task.multilabel and (
        not isinstance(per_label, dict) or any(c not in per_label for c in class_names)
    ):
        raise XrayError(
            f"{run.path}: a multi-label run needs a threshold per finding in metrics.json "
            "(threshold.per_label): retrain it"
        )
    if mode == "finetune" and weights is not None:
        raise XrayError(
            "--weights-file is only for frozen runs extracted with a weights file: "
            f"{run.name} is a fine-tune run whose best.pt holds the whole model"
        )
    state = _read_best(run.path / "best.pt")
    # Building modules draws random inits (overwritten by best.pt): keep the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        if mode == "frozen":
            trunk, head, pre = _frozen_parts(run, state, weights, n_classes=len(class_names))
        else:
            trunk, head, pre = _finetune_parts(run, state, n_classes=len(class_names))
    trunk.eval().to(torch_device)
    head.eval().to(torch_device)
    mirror = mode == "frozen"
    if mirror or channels_last_for(torch_device):  # as extract / the trainer ran it
        trunk.to(memory_format=torch.channels_last)
    return Predictor(
        run, trunk, head, pre, class_names, positive_index, threshold, torch_device,
        spec.family, mirror, _run_autocast(cfg, torch_device),
        _head_autocast(cfg, torch_device) if mirror else None, label_thresholds=per_label,
    )  # fmt: skip


def _run_autocast(cfg: dict[str, Any], device: torch.device) -> torch.dtype | None:
    """The autocast dtype that produced the run's recorded predictions, to repeat its numbers.

    Frozen: the trunk runs in its store's `precision` (bf16 features are what the head saw;
    stores from before precision was recorded ran float16 autocast on CUDA, float32 on CPU).
    Fine-tune: the run's `resolved_precision`, in which the trainer also scored val and test
    for predictions.csv (`conclude`); runs that did not record it scored in float32.
    """
    from featurestore.runs import run_precision

    if cfg.get("mode") == "finetune":
        recorded = run_precision(cfg) or "fp32"
    elif cfg.get("mode") != "frozen" or not isinstance(cfg.get("store"), dict):
        return None
    else:
        recorded = run_precision(cfg) or "fp16"
    if recorded == "bf16":
        return torch.bfloat16
    if recorded == "fp16" and device.type == "cuda":
        return torch.float16
    return None


def _head_autocast(cfg: dict[str, Any], device: torch.device) -> torch.dtype | None:
    """The autocast dtype a frozen run's head trained in, as `train.loop.fit` chose it: the
    recorded `precision` through `devices.amp_dtype`, float32 on CPU when it was left at
    None or auto (heads on cached features train in float32 there)."""
    from featurestore.devices import amp_dtype

    precision = cfg.get("precision")
    if cfg.get("head") == "logreg" or isinstance(cfg.get("sweep"), dict):
        return None  # fitted by scikit-learn, or by the sweep, in float32
    if precision in (None, "auto") and device.type == "cpu":
        return None
    return amp_dtype(bool(cfg.get("amp", True)), device, precision)


def _read_best(path: Path) -> dict[str, Tensor]:
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise XrayError(f"cannot read {path} as a state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise XrayError(f"{path} does not hold a state dict")
    return state


def _load_strict(module: nn.Module, state: dict[str, Tensor], run: RunRecord, what: str) -> None:
    """load_state_dict(strict=True), turning a mismatch into one line."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise XrayError(
            f"best.pt of {run.name} does not fit a {run.config.get('model')} {what} ({first}); "
            "the run folder was not written by this xray or was altered"
        ) from None


def _preprocessing(doc: Any, run: RunRecord) -> Preprocessing:
    from featurestore.data import INTENSITY_RULE
    from featurestore.models import Preprocessing

    rule = doc.get("intensity") if isinstance(doc, dict) else None
    if rule != INTENSITY_RULE:
        # Another rule gives the same file other pixels: its probabilities would be wrong.
        raise XrayError(
            f"{run.path} was trained under another image intensity rule "
            f"({rule or 'none recorded'}; this xray uses {INTENSITY_RULE}): train it again"
        )
    try:
        return Preprocessing.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise XrayError(f"{run.path}: no usable preprocessing recorded ({exc})") from None


def _frozen_parts(
    run: RunRecord, state: dict[str, Tensor], weights: Path | None, *, n_classes: int
) -> tuple[nn.Module, RunHead, Preprocessing]:
    """The store's backbone (rebuilt from provenance) and best.pt's standardisation + head."""
    from featurestore.fileio import file_digest
    from featurestore.models import build_head, export_head, load_backbone

    store = run.config.get("store")
    if not isinstance(store, dict) or "weights_id" not in store:
        raise XrayError(f"{run.path}: a frozen run without store provenance in config.json")
    name = str(run.config.get("backbone_name") or run.config["model"])
    weights_id = str(store["weights_id"])
    recorded_sha = store.get("weights_sha256")
    if weights is not None and not weights_id.startswith("file:"):
        raise XrayError(
            f"--weights-file is not needed: {run.name}'s backbone used weights {weights_id}"
        )
    if weights_id == "none":
        # extract_features builds random-init trunks under torch.manual_seed(0): same trunk.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = load_backbone(name, "none")
    elif weights_id.startswith("file:"):
        if weights is None:
            raise XrayError(
                f"{run.name}'s backbone weights came from the file {weights_id[5:]}: "
                "pass it with --weights-file PATH"
            )
        if not Path(weights).is_file():
            raise XrayError(f"--weights-file {weights} not found")
        sha = file_digest(Path(weights))
        if recorded_sha and sha != recorded_sha:
            raise XrayError(
                f"--weights-file {weights} is not the file the run's features came from "
                f"(sha256 {sha[:12]}... != recorded {str(recorded_sha)[:12]}...)"
            )
        loaded = load_backbone(name, str(weights))
    else:
        loaded = load_backbone(name, "imagenet")
        if loaded.weights_id != weights_id or (
            recorded_sha and loaded.weights_sha256 and loaded.weights_sha256 != recorded_sha
        ):
            raise XrayError(
                f"{run.name} used ImageNet weights {weights_id} (sha256 {recorded_sha}), but "
                f"this torchvision gives {loaded.weights_id} ({loaded.weights_sha256})"
            )
    # A head trained on some columns of the store (one pooling) reads those columns only.
    start, stop = run.config.get("feature_columns") or (0, loaded.spec.feature_dim)
    dim = int(stop) - int(start)
    kind = str(run.config.get("head", "linear"))
    if kind == "mlp" and "head.net.0.weight" in state:
        hidden = int(state["head.net.0.weight"].shape[0])
        head = build_head("mlp", dim, n_classes, hidden=hidden)
    elif kind in ("linear", "logreg", "mlp"):
        head = build_head(kind, dim, n_classes)
    else:
        raise XrayError(f"{run.path}: unknown head {kind!r}")
    exported = export_head(head, torch.zeros(dim), torch.ones(dim))
    _load_strict(exported, state, run, f"frozen {kind} head")
    dtype = torch.float16 if str(store.get("dtype", "float32")) == "float16" else None
    pre = _preprocessing(store.get("preprocessing"), run)
    trunk = loaded.trunk
    if (int(start), int(stop)) != (0, loaded.spec.feature_dim):
        trunk = Columns(trunk, int(start), int(stop))
    return trunk, RunHead(exported, feature_dtype=dtype), pre


def _finetune_parts(
    run: RunRecord, state: dict[str, Tensor], *, n_classes: int
) -> tuple[nn.Module, RunHead, Preprocessing]:
    """Trunk + linear head, both from best.pt (`trunk.*`, `head.*`)."""
    from featurestore.models import TrunkHead, build_head, load_backbone

    name = str(run.config.get("backbone_name") or run.config["model"])
    loaded = load_backbone(name, "none")  # random init, overwritten by best.pt below
    net = TrunkHead(loaded.trunk, build_head("linear", loaded.spec.feature_dim, n_classes))
    _load_strict(net, state, run, "fine-tune model")
    pre = _preprocessing(run.config.get("preprocessing"), run)
    return net.trunk, RunHead(net.head), pre


def count_predictions(rows: Sequence[PredictionRow], class_names: Sequence[str]) -> dict[str, int]:
    """Images per predicted class (multi-label: per finding, and `No Finding`), plus
    `unreadable`."""
    counts = {c: 0 for c in class_names}
    counts["unreadable"] = 0
    for row in rows:
        if row.prediction is None:
            counts["unreadable"] += 1
        elif row.prediction in counts:
            counts[row.prediction] += 1
        else:  # multi-label: `A|B` counts once for each finding, `No Finding` once
            for name in row.prediction.split("|"):
                counts[name] = counts.get(name, 0) + 1
    return counts


def write_predictions_csv(
    path: Path, rows: Sequence[PredictionRow], class_names: Sequence[str] | None = None
) -> None:
    """`path,probability,prediction,error`; probabilities at full precision.

    Multi-class (`class_names` of more than two classes): `path,prob_<class>...,prediction,error`.
    """
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    if class_names is not None and (len(class_names) > 2 or any(r.probabilities for r in rows)):
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", *(f"prob_{c}" for c in class_names), "prediction", "error"])
            for r in rows:
                q = r.probabilities or {}
                probs = [repr(q[c]) if c in q else "" for c in class_names]
                writer.writerow([r.path, *probs, r.prediction or "", r.error or ""])
        return
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "probability", "prediction", "error"])
        for r in rows:
            prob = "" if r.probability is None else repr(r.probability)
            writer.writerow([r.path, prob, r.prediction or "", r.error or ""])
