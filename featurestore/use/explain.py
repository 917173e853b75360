"""Grad-CAM for a run's model: heatmaps on the last convolutional stage, overlaid on radiographs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.fileio import atomic_path

if TYPE_CHECKING:
    from PIL import Image
    from rich.progress import Progress

    from featurestore.models import Preprocessing
    from featurestore.runs import RunRecord
    from featurestore.use.predict import Predictor

CONTACT_SHEET = "contact_sheet.png"
OVERLAY_ALPHA = 0.55
"""Colour weight where the heat is 1; cold regions show the radiograph unchanged."""
MULTILABEL_PICKS = (
    "a multi-label image has findings instead of one true class: pick_finding_images picks "
    "them finding by finding"
)
"""Why `pick_test_images` refuses a multi-label run."""
_CAM_TARGETS = {
    "binary": "the positive-class logit",
    "multiclass": "the predicted class's logit",
    "multilabel": "each finding's logit",
}
"""What a report heatmap maps, per task."""


@dataclass(frozen=True)
class ExplainRow:
    """One image explained: where its overlay is and what the model said, or an error."""

    path: str
    heatmap: str | None
    """The overlay PNG (the original image's size); None on error."""
    probability: float | None
    prediction: str | None
    peak: tuple[int, int] | None
    """(x, y) of the heat's maximum in original image pixels; None when the map is all zero
    (nothing in the image raises the positive logit) or on error."""
    error: str | None = None
    explained: str | None = None
    """The class (finding) whose map this is and whose probability `probability` is: the
    positive class of a binary run, the predicted (or `--class`) class, the finding."""


@dataclass(frozen=True)
class ExplainResult:
    """Every image's row and the contact sheet (None when no image could be explained)."""

    rows: list[ExplainRow]
    contact_sheet: Path | None


def cam_stages(
    trunk: nn.Module, family: str
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Split a registry trunk at its last convolutional stage: (x -> A, A -> pooled features).

    A is (N, C, h, w). The two halves reproduce the trunk's own forward exactly. DenseNet's
    forward applies an in-place ReLU to `features`' output; here that ReLU is taken out of
    place, so A is the post-ReLU map the pooling sees and its gradient is not overwritten.
    """
    t: Any = trunk
    if hasattr(t, "cam_split"):  # provider trunks (txv DenseNet, ViT token grid) know theirs
        acts_, pool_ = t.cam_split()
        return acts_, pool_
    if family == "cnn":  # a timm CNN: its own feature map and pooled head (num_classes=0)
        return t.forward_features, lambda a: t.forward_head(a, pre_logits=True)
    if family == "resnet":

        def acts(x: Tensor) -> Tensor:
            x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
            return t.layer4(t.layer3(t.layer2(t.layer1(x))))  # (N, C, h, w)

        return acts, lambda a: t.fc(torch.flatten(t.avgpool(a), 1))
    if family == "densenet":
        return (
            lambda x: F.relu(t.features(x)),  # after norm5, not in place
            lambda a: t.classifier(torch.flatten(F.adaptive_avg_pool2d(a, (1, 1)), 1)),
        )
    if family == "efficientnet":
        return t.features, lambda a: t.classifier(torch.flatten(t.avgpool(a), 1))
    if family == "convnext":
        return t.features, lambda a: t.classifier(t.avgpool(a))
    raise XrayError(f"Grad-CAM does not know the {family!r} family")


def grad_cam(
    activations: Callable[[Tensor], Tensor],
    classify: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    target: int | None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of class `target`: (cams (N, h, w) >= 0, logits (N, C)), both detached.

    `target` None explains each image's own most probable class (Selvaraju et al. 2017,
    "Grad-CAM", ICCV: the map of the predicted class by default).

    cam = ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit_target / d A_k.
    Samples do not interact in eval mode, so one backward of the summed logits serves the batch.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # a graph even when every weight is frozen
        a = activations(x)  # (N, C, h, w)
        logits = classify(a)  # (N, K)
        if target is None:
            chosen = logits.gather(1, logits.detach().argmax(1, keepdim=True))  # (N, 1)
        else:
            chosen = logits[:, target]  # (N,)
        (grads,) = torch.autograd.grad(chosen.sum(), a)  # (N, C, h, w)
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cams = F.relu((alpha * a).sum(1))  # (N, h, w)
    return cams.detach().float(), logits.detach().float()


def predictor_cam(
    predictor: Predictor, x: Tensor, *, target: int | None = -1
) -> tuple[Tensor, Tensor]:
    """Grad-CAM through a run's trunk + head as one model.

    `target`: a class index; -1 (default) the positive class of a binary run and each image's
    predicted class for a multi-class run; None each image's predicted class.
    """
    acts, pool = cam_stages(predictor.trunk, predictor.family)
    x = predictor.prepare(x)
    if target == -1:
        binary = predictor.task == "binary"
        target = predictor.positive_index if binary else None
    # In the precision the run recorded, as `Predictor.logits`: a fine-tuned trunk + head
    # under its autocast; a frozen run's head in the precision it trained in.
    amp, device = predictor.autocast, predictor.device.type

    def classify(a: Tensor) -> Tensor:
        features = pool(a)
        if not predictor.mirror_extract:
            return predictor.head(features)
        return predictor.head_logits(features)

    with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
        return grad_cam(acts, classify, x, target=target)


def cam_to_image(
    cam: np.ndarray, pre: Preprocessing, decoded: tuple[int, int], original: tuple[int, int]
) -> np.ndarray:
    """A (h, w) map over the network input -> (H, W) heat in [0, 1] over the original image.

    Undoes the preprocessing: the map covers the center crop of the image resized to short
    side `pre.resize` (`decoded` = (W, H) fed to it); the cropped-away margin gets zero heat.
    `original` = (W, H) of the full-resolution image (a reduced-scale JPEG decode has the
    same field of view).
    """
    w, h = decoded
    # torchvision Resize(int): the short side becomes `resize`, the long one int(resize * ratio).
    if pre.squash:  # Resize((s, s)): both sides become `resize`
        new_w = new_h = pre.resize
    elif w <= h:
        new_w, new_h = pre.resize, int(pre.resize * h / w)
    else:
        new_w, new_h = int(pre.resize * w / h), pre.resize
    top = round((new_h - pre.crop) / 2.0)  # CenterCrop's own rounding
    left = round((new_w - pre.crop) / 2.0)
    canvas = torch.zeros(1, 1, new_h, new_w)
    up = F.interpolate(
        torch.from_numpy(np.asarray(cam, np.float32))[None, None],
        size=(pre.crop, pre.crop),
        mode="bilinear",
        align_corners=False,
    )  # (1, 1, crop, crop)
    canvas[..., top : top + pre.crop, left : left + pre.crop] = up
    heat = F.interpolate(canvas, size=(original[1], original[0]), mode="bilinear")[0, 0]
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat).clamp_(0, 1).numpy()


def overlay(image: Image.Image, heat: np.ndarray, *, cmap: str = "jet") -> Image.Image:
    """The radiograph in gray with the heat (H, W) in colour on top, the image's own size."""
    import matplotlib
    from PIL import Image as PILImage

    gray = np.asarray(image.convert("L"), np.float32)[..., None] / 255.0  # (H, W, 1)
    color = matplotlib.colormaps[cmap](heat)[..., :3].astype(np.float32)  # (H, W, 3)
    alpha = OVERLAY_ALPHA * heat[..., None]
    blended = gray * (1.0 - alpha) + color * alpha
    return PILImage.fromarray(np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """`<stem>.png`, with `-2`, `-3` added when stems repeat."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def explain_images(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    batch_size: int = 8,
    titles: Sequence[str] | None = None,
    progress: Progress | None = None,
    target_class: str | None = None,
) -> ExplainResult:
    """Write one overlay PNG per image (its original size) and a contact sheet into out_dir.

    The heat is of `target_class` (a class name) when given; otherwise of the positive class
    for a binary run and of each image's predicted class for a multi-class run. Multi-class
    rows give the explained class's probability and the predicted class.
    """
    from featurestore.data import decode_image

    if batch_size < 1:
        raise XrayError(f"--batch-size must be at least 1, got {batch_size}")
    if predictor.task == "multilabel" and target_class is None:
        return explain_findings(
            predictor, paths, out_dir, batch_size=batch_size, titles=titles, progress=progress
        )
    class_index: int | None = -1
    if target_class is not None:
        if target_class not in predictor.class_names:
            raise XrayError(
                f"--class {target_class!r} is not a class of the run; choose one of: "
                f"{', '.join(predictor.class_names)}"
            )
        class_index = predictor.class_names.index(target_class)
    multiclass = predictor.task != "binary"  # multi-label too: one map per image, of one finding
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _unique_names(paths)
    rows: list[ExplainRow] = []
    thumbs: list[tuple[Image.Image, str]] = []
    task = progress.add_task("explain", total=len(paths), unit="img") if progress else None
    for start in range(0, len(paths), batch_size):
        batch: list[tuple[int, Image.Image, Image.Image]] = []  # (index, model input, full)
        errors: dict[int, str] = {}
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                small = predictor.load_image(Path(paths[i]))
                batch.append((i, small, decode_image(Path(paths[i]))))
            except XrayError as exc:
                errors[i] = str(exc)
        results: dict[int, ExplainRow] = {}
        if batch:
            x = torch.stack([predictor.preprocessing(small) for _, small, _ in batch])
            cams, logits = predictor_cam(predictor, x, target=class_index)  # (B, h, w), (B, C)
            multilabel = predictor.task == "multilabel"
            probs = predictor.run.task.probabilities(logits).double()  # (B, C)
            if multiclass and (class_index is None or class_index < 0):
                explained = probs.argmax(1)  # (B,) each image's predicted class
            elif multiclass:
                explained = torch.full((len(batch),), int(class_index or 0))
            else:  # binary: P(positive) (or of --class) and the class at the threshold
                k_map = class_index if class_index is not None and class_index >= 0 else None
                explained = torch.full((len(batch),), predictor.positive_index if k_map is None
                                       else k_map)  # fmt: skip
            p_pos = probs.gather(1, explained[:, None])[:, 0].tolist()  # (B,)
            # Multi-label rows name the explained finding, the others the predicted class.
            named = explained if multilabel else probs.argmax(1)
            predicted = named.tolist()  # (B,)
            explained_k = explained.tolist()  # (B,) whose probability p is
            decide = probs[:, predictor.positive_index].tolist()  # (B,) binary: P(positive)
            for (i, small, full), cam, p, k, e, q in zip(
                batch, cams.cpu().numpy(), p_pos, predicted, explained_k, decide, strict=True
            ):
                heat = cam_to_image(cam, predictor.preprocessing, small.size, full.size)
                picture = overlay(full, heat)
                target = out_dir / names[i]
                with atomic_path(target) as tmp:
                    picture.save(tmp, format="PNG")
                y, xx = np.unravel_index(int(np.argmax(heat)), heat.shape)
                peak = (int(xx), int(y)) if heat.max() > 0 else None
                if multiclass:  # p is the explained class's (or finding's) probability
                    label = predictor.class_names[int(k)]
                else:  # the class at the threshold, whichever class the map is of
                    label = predictor.classify(q)
                results[i] = ExplainRow(str(paths[i]), str(target), p, label, peak,
                                        explained=predictor.class_names[e])  # fmt: skip
                picture.thumbnail((320, 320))
                title = titles[i] if titles is not None else Path(paths[i]).name
                # The probability shown is of the class whose map this is.
                shown = predictor.class_names[e]
                if multilabel:  # the finding's decision at its validation threshold
                    cut = (predictor.label_thresholds or {}).get(shown, 0.5)
                    label = "present" if p >= cut else "absent"
                thumbs.append((picture, f"{title}\n{label}, P({shown})={p:.2f}"))
        for i in range(start, min(start + batch_size, len(paths))):
            rows.append(
                results.get(i) or ExplainRow(str(paths[i]), None, None, None, None, errors[i])
            )
        if progress is not None and task is not None:
            progress.advance(task, min(batch_size, len(paths) - start))
    from featurestore.runs import plot_note

    note = plot_note(predictor.run.config)
    sheet = write_contact_sheet(thumbs, out_dir / CONTACT_SHEET, note=note) if thumbs else None
    return ExplainResult(rows, sheet)


def explain_findings(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    batch_size: int = 8,
    titles: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> ExplainResult:
    """Multi-label runs: one Grad-CAM overlay per image and positive finding (probability at
    or above the finding's validation threshold), `<stem>-<finding>.png`; an image with no
    positive finding gets the map of its most probable one. Rows: one per overlay, in input
    order then finding order; unreadable files one row each with the error."""
    from featurestore.data import decode_image
    from featurestore.runs import plot_note

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _unique_names(paths)
    thresholds = predictor.label_thresholds or {}
    rows: list[ExplainRow] = []
    thumbs: list[tuple[Image.Image, str]] = []
    task = progress.add_task("explain", total=len(paths), unit="img") if progress else None
    for start in range(0, len(paths), batch_size):
        stop = min(start + batch_size, len(paths))
        batch: list[tuple[int, Image.Image, Image.Image]] = []
        found: dict[int, list[ExplainRow]] = {i: [] for i in range(start, stop)}
        for i in range(start, stop):
            try:
                small = predictor.load_image(Path(paths[i]))
                batch.append((i, small, decode_image(Path(paths[i]))))
            except XrayError as exc:
                found[i].append(ExplainRow(str(paths[i]), None, None, None, None, str(exc)))
        if batch:
            x = torch.stack([predictor.preprocessing(small) for _, small, _ in batch])
            with torch.inference_mode():
                probs = predictor.logits(x).sigmoid().double().cpu()  # (B, L)
            t = torch.tensor([thresholds.get(c, 0.5) for c in predictor.class_names])
            chosen = probs >= t  # (B, L) positive findings
            none = ~chosen.any(1)
            chosen[none, probs[none].argmax(1)] = True  # else the most probable finding
            for k, finding in enumerate(predictor.class_names):
                members = torch.nonzero(chosen[:, k]).flatten().tolist()
                if not members:
                    continue
                cams, _ = predictor_cam(predictor, x[members], target=k)  # (M, h, w)
                for b, cam in zip(members, cams.cpu().numpy(), strict=True):
                    i, small, full = batch[b]
                    heat = cam_to_image(cam, predictor.preprocessing, small.size, full.size)
                    picture = overlay(full, heat)
                    target = out_dir / names[i].replace(".png", f"-{finding}.png")
                    with atomic_path(target) as tmp:
                        picture.save(tmp, format="PNG")
                    y, xx = np.unravel_index(int(np.argmax(heat)), heat.shape)
                    peak = (int(xx), int(y)) if heat.max() > 0 else None
                    p = float(probs[b, k])
                    found[i].append(ExplainRow(str(paths[i]), str(target), p, finding, peak,
                                               explained=finding))  # fmt: skip
                    picture.thumbnail((320, 320))
                    title = titles[i] if titles is not None else Path(paths[i]).name
                    thumbs.append((picture, f"{title}\n{finding} p={p:.2f}"))
        for i in range(start, stop):
            order = {c: n for n, c in enumerate(predictor.class_names)}
            rows.extend(sorted(found[i], key=lambda r: order.get(r.prediction or "", -1)))
        if progress is not None and task is not None:
            progress.advance(task, stop - start)
    note = plot_note(predictor.run.config)
    sheet = write_contact_sheet(thumbs, out_dir / CONTACT_SHEET, note=note) if thumbs else None
    return ExplainResult(rows, sheet)


def write_contact_sheet(
    tiles: Sequence[tuple[Image.Image, str]], path: Path, *, note: str | None = None
) -> Path:
    """A grid of titled overlays (at most 4 per row) in one PNG, with the heat's colour bar
    and `note` (e.g. "RANDOM WEIGHTS") in the corner."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from featurestore.plots import new_figure, save_figure, stamp

    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = new_figure(figsize=(3.2 * cols, 3.5 * rows), nrows=rows, ncols=cols, squeeze=False)
    fig.set_layout_engine("constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, title) in zip(axes.flat, tiles, strict=False):
        ax.imshow(np.asarray(image))
        ax.set_title(title, fontsize=8)
    # The overlay's colours: heat scaled to each image's own peak (cam_to_image).
    bar = fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), cmap="jet"), ax=axes, shrink=0.8, pad=0.02
    )
    bar.set_label("Grad-CAM relevance (1 = the image's peak)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    stamp(fig, note)
    save_figure(fig, path, tight=False)
    return path


def explain_run(
    run_dir: Path,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    weights: Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    progress: Progress | None = None,
    target_class: str | None = None,
) -> ExplainResult:
    """`xray explain`: load the run's model, then explain_images (of `target_class` if given)."""
    from featurestore.use.predict import load_predictor

    predictor = load_predictor(run_dir, weights=weights, device=device)
    return explain_images(
        predictor, paths, out_dir, batch_size=batch_size, progress=progress,
        target_class=target_class,
    )  # fmt: skip


def _pick(labels: np.ndarray, decided: np.ndarray, confidence: np.ndarray, n: int) -> list[int]:
    """Row indices: up to n per true label (ascending), wrong and correct when both exist (half
    each, the rest from the other), most confident first within each."""
    picked: list[int] = []
    for label in sorted(set(labels.tolist())):
        rows = [i for i in np.argsort(-confidence, kind="stable") if labels[i] == label]
        wrong = [i for i in rows if decided[i] != label]
        right = [i for i in rows if decided[i] == label]
        n_wrong = min(len(wrong), n // 2)
        n_right = min(len(right), n - n_wrong)
        n_wrong = min(len(wrong), n - n_right)
        picked += right[:n_right] + wrong[:n_wrong]
    return picked


def pick_test_images(record: RunRecord, n: int) -> list[tuple[str, int, int, float]]:
    """Up to n test images per true class, wrong and correct when both exist, most confident first.

    Returns (key, label, prediction, probability) rows: binary runs give P(positive) and rank
    by its distance from the threshold; multi-class runs give and rank by P(predicted class).
    Raises XrayError for a multi-label run: its images have findings, not one true class
    (`pick_finding_images` picks them per finding).
    """
    task = record.task
    if task.multilabel:
        raise XrayError(MULTILABEL_PICKS)
    test = record.split_predictions("test")
    if task.binary:
        threshold = float(record.metrics["threshold"]["value"])
        probability = test["probability"]
        confidence = np.abs(probability - threshold)
    else:  # the predicted class's probability
        probability = test["probabilities"][np.arange(len(test["key"])), test["prediction"]]
        confidence = probability
    return [
        (str(test["key"][i]), int(test["label"][i]), int(test["prediction"][i]),
         float(probability[i]))
        for i in _pick(test["label"], test["prediction"], confidence, n)
    ]  # fmt: skip


def pick_finding_images(record: RunRecord, n: int) -> dict[str, list[tuple[str, int, int, float]]]:
    """A multi-label run's picks, finding by finding, as a binary run's are for its one
    positive class: up to n test images where the finding is present and n where it is absent
    (masked labels left out), wrong and correct at the finding's validation threshold when both
    exist, most confident (farthest from the threshold) first.

    Returns finding -> (key, label 0/1, decision 0/1, P(finding)) rows.
    Raises XrayError for a run that is not multi-label.
    """
    task = record.task
    if not task.multilabel:
        raise XrayError(f"{record.name} is a {task.kind} run: pick_test_images picks its images")
    test = record.split_predictions("test")
    per = (record.metrics.get("threshold") or {}).get("per_label") or {}
    out: dict[str, list[tuple[str, int, int, float]]] = {}
    for k, finding in enumerate(task.class_names):
        observed = np.flatnonzero(~np.isnan(test["targets"][:, k]))
        y = test["targets"][observed, k].astype(np.int64)  # (M,)
        p = test["probabilities"][observed, k]  # (M,)
        threshold = float(per.get(finding, 0.5))
        decided = (p >= threshold).astype(np.int64)
        out[finding] = [
            (str(test["key"][observed[i]]), int(y[i]), int(decided[i]), float(p[i]))
            for i in _pick(y, decided, np.abs(p - threshold), n)
        ]
    return out


def report_section(
    records: Sequence[RunRecord],
    out_dir: Path,
    *,
    n: int,
    folder_name: str = "explain",
    device: str = "auto",
    progress: Progress | None = None,
) -> list[str]:
    """Markdown lines of "What the model looks at": heatmaps of n test images per class per run
    (multi-label: per finding, n where it is present and n where absent, each the map of that
    finding).

    Images go to out_dir/<run name>/ (multi-label: out_dir/<run name>/<finding>/); links are
    relative to out_dir's parent (the report). A run whose images or weights cannot be found
    gets a line saying so instead.
    """
    from featurestore.use.predict import load_predictor

    kinds = [k for k in _CAM_TARGETS if any(r.task.kind == k for r in records)]
    target = ", ".join(_CAM_TARGETS[k] + (f" ({k})" if len(kinds) > 1 else "") for k in kinds)
    lines = ["## What the model looks at", ""]
    lines += [
        f"Grad-CAM of {target} on the last convolutional stage, for up to {n} test images "
        + (
            "where each finding is present and where it is absent"
            if "multilabel" in kinds
            else "per true class"
        )
        + " (correct and wrong when both exist, most confident first).",
        "",
    ]
    for record in records:
        lines += [f"### {record.name}", ""]
        cfg = record.config
        store = cfg.get("store") if isinstance(cfg.get("store"), dict) else {}
        root = Path(str(cfg.get("dataset_root") or (store or {}).get("dataset_root") or ""))
        if record.task.multilabel:
            groups = pick_finding_images(record, n)
        else:
            groups = {"": pick_test_images(record, n)}
        keys = {k for picked in groups.values() for k, *_ in picked}
        missing = [k for k in keys if not (root / k).is_file()]
        if not str(root) or missing:
            lines += [f"Test images not found under `{root}`: no heatmaps.", ""]
            continue
        try:
            predictor = load_predictor(record.path, device=device)
        except XrayError as exc:
            lines += [f"Model not rebuilt ({exc}): no heatmaps.", ""]
            continue
        for finding, picked in groups.items():
            lines += _heatmap_table(
                predictor, record, root, picked, out_dir, folder_name, finding, progress
            )
    return lines


def _heatmap_table(
    predictor: Predictor,
    record: RunRecord,
    root: Path,
    picked: list[tuple[str, int, int, float]],
    out_dir: Path,
    folder_name: str,
    finding: str,
    progress: Progress | None,
) -> list[str]:
    """One run's (or, multi-label, one finding's) contact sheet and table of picked images."""
    names = list(record.config["class_names"])
    if finding:
        sub = "".join(c if c.isalnum() or c in "._-" else "_" for c in finding)
        rel, where = f"{folder_name}/{record.name}/{sub}", out_dir / record.name / sub
        words = ["absent", "present"]
        lines = [f"#### {finding}", ""]
        if not picked:
            return [*lines, "No test image has this finding observed: no heatmaps.", ""]
        titles = [f"{finding} {words[y]}" for _, y, _, _ in picked]
    else:
        rel, where = f"{folder_name}/{record.name}", out_dir / record.name
        words, lines = names, []
        titles = [f"true {names[y]}" for _, y, _, _ in picked]
    result = explain_images(
        predictor, [root / k for k, *_ in picked], where, titles=titles, progress=progress,
        target_class=finding or None,
    )  # fmt: skip
    if result.contact_sheet is not None:
        lines += [f"![{record.name}]({rel}/{CONTACT_SHEET})", ""]
    shown = f"P({finding})" if finding else "P(positive)" if record.task.binary else "P(predicted)"
    lines += [f"| image | true | predicted | {shown} | heatmap |", "|---|---|---|---|---|"]
    for (key, y, pred, prob), row in zip(picked, result.rows, strict=True):
        link = f"[png]({rel}/{Path(row.heatmap).name})" if row.heatmap else row.error or "-"
        mark = "" if pred == y else " (wrong)"
        lines.append(f"| `{key}` | {words[y]} | {words[pred]}{mark} | {prob:.3f} | {link} |")
    lines.append("")
    return lines
