"""One training loop for heads on cached features and for backbones fine-tuned on images."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from featurestore import devices, distributed
from featurestore.config import TrainConfig
from featurestore.errors import XrayError
from featurestore.train import checkpoints
from featurestore.train.checkpoints import LoopState
from featurestore.train.evaluation import (
    MULTICLASS_RULE,
    FitResult,
    conclude,
    predict,
    source_task_of,
)
from featurestore.train.objectives import (
    MaskedBCEWithLogits,
    label_pos_weights,
    multilabel_summary,
    scored_images,
    source_task,
    summed_loss,
    to_probabilities,
)
from featurestore.train.optim import class_weights, make_optimizer, make_scheduler

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from featurestore.train.sources import Source


def _summary(probs: np.ndarray, labels: np.ndarray, positive_index: int) -> dict[str, float]:
    """Accuracy, macro F1 and AUC of the argmax predictions, for the history and the monitor.

    The AUC is the positive class's for two classes, the macro one-vs-rest AUC for more (NaN
    when a class is missing from the split: undefined, and it never counts as improving).
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    if labels.ndim == 2:  # multi-label targets (N, L): per-label figures at 0.5
        return multilabel_summary(probs, labels)
    pred = probs.argmax(1)
    if probs.shape[1] > 2:
        from featurestore.compare import one_vs_rest_auc

        aucs = [one_vs_rest_auc(labels, probs, k) for k in range(probs.shape[1])]
        auc = math.nan if None in aucs else float(np.mean(aucs))  # type: ignore[arg-type]
    else:
        y_pos = labels == positive_index
        auc = (
            float(roc_auc_score(y_pos, probs[:, positive_index]))
            if 0 < y_pos.sum() < len(y_pos)
            else math.nan
        )
    return {
        "acc": float(accuracy_score(labels, pred)),
        "f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "auc": auc,
    }


def selection_monitor(
    monitor: str, y_val: np.ndarray, class_names: tuple[str, ...]
) -> tuple[str, str | None]:
    """The metric that selects the best epoch: `monitor`, or val_loss when it is undefined.

    AUC and macro F1 need both classes in validation; with one class they are NaN or
    degenerate every epoch, and selecting on them would silently keep epoch 1. Returns (the
    monitor used, a one-line note saying why it differs from the one asked for, else None).
    """
    present = np.unique(np.asarray(y_val))
    if monitor == "val_loss" or len(present) > 1:
        return monitor, None
    only = class_names[int(present[0])] if present.size else "no"
    return "val_loss", (
        f"the validation split holds {only} images only, so {monitor} is undefined: the best "
        "epoch is selected on val_loss instead, and the decision threshold stays at 0.5 "
        "(recorded in metrics.json); add validation images of every class to select on it"
    )


def _score(row: dict[str, float], monitor: str) -> float:
    """Larger is better; NaN (e.g. AUC of a one-class split) never improves."""
    value = -row["val_loss"] if monitor == "val_loss" else row[monitor]
    return -math.inf if math.isnan(value) else value


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


VERBOSE_ENV = "XRAY_VERBOSE"
"""Set to 1 (`xray fit-head --verbose`, `xray finetune --verbose` set it) for the per-epoch
table of every run; otherwise a run shows one live progress line and one summary line."""


def epoch_table_wanted(verbose: bool | None = None) -> bool:
    """Whether runs print their per-epoch table: `verbose`, else $XRAY_VERBOSE is 1/true/yes."""
    import os

    if verbose is not None:
        return verbose
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def announce_start(out: Console | None, line: str) -> None:
    """The first line of a run in a log (a console that is not a terminal), where no live bar
    shows that work has started; on a terminal the live progress line says it."""
    if out is not None and not out.is_terminal and not out.is_jupyter:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _fmt_monitor(monitor: str, score: float) -> str:
    """`val_auc 0.913` from a larger-is-better score (val_loss is stored negated)."""
    if math.isinf(score) or math.isnan(score):
        return f"{monitor} -"
    return f"{monitor} {-score if monitor == 'val_loss' else score:.4f}"


def summary_line(
    what: str, *, epochs_run: int, epochs: int, best_epoch: int, monitor: str, score: float,
    seconds: float,
) -> str:  # fmt: skip
    """The one line a run ends with: `training: 12/60 epochs (stopped early), best epoch 9,
    val_auc 0.9132, 3.4 s`."""
    stopped = " (stopped early)" if epochs_run < epochs else ""
    return (
        f"{what}: {epochs_run}/{epochs} epochs{stopped}, best epoch {best_epoch}, "
        f"{_fmt_monitor(monitor, score)}, {seconds:.1f} s"
    )


EPOCH_HEADER = "epoch     train loss    acc   val loss    acc     f1    auc  s/epoch"
"""The header of the per-epoch lines (printed once, before the first epoch's line)."""


def _num(value: float, width: int, digits: int = 3) -> str:
    """Right-aligned number; `-` where undefined (NaN)."""
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def format_epoch(row: dict[str, float], epochs: int) -> str:
    """One epoch's line under EPOCH_HEADER, under 80 columns: `  3/20   0.412  0.830 ...`.

    Columns: epoch/epochs, train loss and accuracy, val loss, accuracy, macro F1 and ROC-AUC,
    seconds; an undefined value (val AUC of a one-class split) is `-`.
    """
    return (
        f"{int(row['epoch']):>3}/{epochs:<4}"
        f"{_num(row['train_loss'], 12)}{_num(row['train_acc'], 7)}"
        f"{_num(row['val_loss'], 11)}{_num(row['val_acc'], 7)}{_num(row['val_f1'], 7)}"
        f"{_num(row['val_auc'], 7)}{_num(row['seconds'], 9, 2)}"
    )


def train_one_epoch(
    model: nn.Module,
    source: Source,
    epoch: int,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
    *,
    bar: tuple[Progress, TaskID] | None,
) -> dict[str, float]:
    """One pass over train; returns loss/acc/F1 of the epoch's running predictions."""
    model.train()
    device = next(model.parameters()).device
    params = [p for g in optimizer.param_groups for p in g["params"]]
    task = source_task(source)
    loss_sum, lr_sum, probs, labels = 0.0, 0.0, [], []
    for x, y in source.batches("train", shuffle=True, epoch=epoch):
        x, y = devices.to_device(x, y, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            logits = model(x).float()  # (B, C)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        lr_sum += float(optimizer.param_groups[0]["lr"])  # head lr used by this step
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        # History reports the unweighted cross-entropy so train and val losses compare.
        detached = logits.detach()
        loss_sum += summed_loss(detached, y, task)
        probs.append(to_probabilities(detached, task).cpu())
        labels.append(y.cpu())
        if bar is not None:
            bar[0].advance(bar[1], len(y))
    # The history describes the whole epoch: gather every rank's running predictions.
    p = np.concatenate(distributed.all_gather_arrays(torch.cat(probs).double().numpy()))
    y_all = np.concatenate(distributed.all_gather_arrays(torch.cat(labels).numpy()))
    loss_sum = distributed.all_reduce_sum([loss_sum])[0]
    s = _summary(p, y_all, source.positive_index)
    return {
        "lr": lr_sum / len(probs),  # mean over the epoch's steps
        "train_loss": loss_sum / scored_images(y_all, task),
        "train_acc": s["acc"],
        "train_f1": s["f1"],
    }


def check_threshold_policy(source: Source, config: TrainConfig) -> None:
    """Refuse, before any training, an operating-point policy that a multi-class task cannot
    use (issue #28.3: it was recorded as argmax with no word). The default (youden) stands for
    "the task's own rule" and is recorded as argmax with MULTICLASS_RULE as its note.

    Raises:
        XrayError: a non-default `threshold_policy` on a multi-class source.
    """
    takes = source_task_of(source).takes_threshold_policy
    if not takes and config.threshold_policy != TrainConfig.threshold_policy:
        raise XrayError(f"--threshold {config.threshold_policy}: {MULTICLASS_RULE}")


def fit(
    model: nn.Module,
    source: Source,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: Progress | None = None,
    resume_from: Path | None = None,
    console: Console | None = None,
    verbose: bool | None = None,
) -> FitResult:
    """Train `model` on `source`: AdamW, warmup+cosine, early stopping, best weights restored.

    Reporting: a live progress line (epochs; images per epoch when streaming) and one summary
    line at the end; the per-epoch table too when `verbose` (None: $XRAY_VERBOSE, see
    `epoch_table_wanted`). A console that is not a terminal gets a first line when training
    starts, then the progress display's periodic lines.

    Two classes: a binary task (threshold chosen on val); more: multi-class softmax
    cross-entropy, the monitor's AUC being the macro one-vs-rest AUC, decisions by argmax.
    Writes `run_dir/last.pt` after every epoch (when run_dir is given) so `resume_from` can
    continue an interrupted run exactly. The threshold is chosen on val; test is scored once.
    """
    if len(source.class_names) < 2 and source_task(source) != "multilabel":
        raise XrayError(
            f"the dataset has {len(source.class_names)} class: at least two are needed to train"
        )
    check_threshold_policy(source, config)
    device = devices.resolve_device(config.device)
    # Under torchrun the seed is offset by rank so augmentation differs between ranks (DDP
    # starts every rank from rank 0's weights); a single process seeds exactly `config.seed`.
    torch.manual_seed(config.seed + distributed.rank())
    if not distributed.is_main():
        progress, console = None, None  # rank 0 reports for every rank
    model.to(device)
    if devices.channels_last_for(device):
        model.to(memory_format=torch.channels_last)  # 4-D conv weights NHWC; others unchanged
    precision = config.precision
    if precision in (None, "auto") and not source.streaming and device.type == "cpu":
        precision = "fp32"  # heads on cached features: bf16 gains nothing (see fit_heads)
    amp_dtype = devices.amp_dtype(config.amp, device, precision)
    _, _, y_train = source.records("train")
    monitor, monitor_note = selection_monitor(
        config.monitor, source.records("val")[2], source.class_names
    )
    criterion: nn.Module
    if source_task(source) == "multilabel":  # y_train (N, L) with NaN = masked
        weights = label_pos_weights(y_train, source.class_names, config.class_weight)
        criterion = MaskedBCEWithLogits(weights.to(device))
    else:
        criterion = nn.CrossEntropyLoss(
            weight=class_weights(
                y_train, len(source.class_names), config.class_weight, source.class_names
            ).to(device)
        )
    n_train = source.train_size()  # images this rank trains on per epoch
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, source.steps_per_epoch())
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loop = LoopState()
    if resume_from is not None:
        loop = checkpoints.resume(resume_from, config, model, optimizer, scheduler, scaler)
    # DDP averages gradients over ranks in backward; `model` itself stays unwrapped for
    # evaluation and state dicts (no `module.` prefix), sharing the same parameters.
    trained = distributed.wrap_ddp(model)
    out = console or (progress.console if progress is not None else None)
    streaming = source.streaming
    overall = None
    if progress is not None and not streaming:
        overall = progress.add_task(
            "training", total=config.epochs, completed=loop.epoch, unit="epochs", announced=True
        )
    ckpt_path = run_dir / "last.pt" if run_dir is not None and distributed.is_main() else None
    if out is not None and monitor_note is not None:
        out.print(f"[yellow]warning:[/] {monitor_note}", highlight=False)
    table = epoch_table_wanted(verbose)
    announce_start(out, f"training: up to {config.epochs} epochs, best epoch on {monitor}")
    began = time.perf_counter()

    header_shown = False
    while loop.epoch < config.epochs and loop.bad_epochs < config.patience:
        epoch = loop.epoch + 1
        start = time.perf_counter()
        bar = None
        if progress is not None and streaming:
            bar = (
                progress,
                progress.add_task(f"epoch {epoch}/{config.epochs}", total=n_train, unit="img"),
            )
        train_row = train_one_epoch(
            trained,
            source,
            epoch,
            criterion,
            optimizer,
            scheduler,
            scaler,
            config,
            amp_dtype,
            bar=bar,
        )
        distributed.sync_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
        val_p, val_y, val_loss = predict(model, source, "val", amp_dtype=amp_dtype)
        val = _summary(val_p, val_y, source.positive_index)
        row = {
            "epoch": float(epoch),
            **train_row,
            "val_loss": val_loss,
            "val_acc": val["acc"],
            "val_f1": val["f1"],
            "val_auc": val["auc"],
            "seconds": time.perf_counter() - start,
        }
        loop.history.append(row)
        loop.epoch = epoch
        score = _score(row, monitor)
        improved = loop.best_state is None or score > loop.best_score + config.min_delta
        # Rank 0 decides for all, so every rank stops at the same epoch (no collective hangs).
        improved, score = distributed.broadcast_object((improved, score))
        if improved:
            loop.best_state, loop.best_score, loop.best_epoch = _clone_state(model), score, epoch
            loop.bad_epochs = 0
        else:
            loop.bad_epochs += 1
        if bar is not None:
            bar[0].remove_task(bar[1])
        if overall is not None:
            progress.update(  # type: ignore[union-attr]
                overall,
                completed=epoch,
                description=f"training (best {_fmt_monitor(monitor, loop.best_score)} "
                f"at epoch {loop.best_epoch})",
            )
        if out is not None and table:
            if not header_shown:
                out.print(EPOCH_HEADER, highlight=False)
                header_shown = True
            line = format_epoch(row, config.epochs) + ("  [green]best[/]" if improved else "")
            out.print(line, highlight=False)
            if loop.bad_epochs >= config.patience and epoch < config.epochs:
                out.print(
                    f"early stop at epoch {epoch}/{config.epochs}: no better "
                    f"{monitor} for {config.patience} epochs; keeping epoch "
                    f"{loop.best_epoch}",
                    highlight=False,
                )
        if ckpt_path is not None:
            payload = loop.checkpoint(config, model, optimizer, scheduler, scaler)
            checkpoints.save_checkpoint(ckpt_path, payload)
    if overall is not None:
        progress.remove_task(overall)  # type: ignore[union-attr]

    assert loop.best_state is not None
    model.load_state_dict(loop.best_state)
    seconds = [r["seconds"] for r in loop.history]
    if out is not None:
        out.print(
            summary_line("training", epochs_run=loop.epoch, epochs=config.epochs,
                         best_epoch=loop.best_epoch, monitor=monitor, score=loop.best_score,
                         seconds=time.perf_counter() - began),
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    return conclude(
        model,
        source,
        config,
        best_state=loop.best_state,
        history=loop.history,
        best_epoch=loop.best_epoch,
        stopped_early=loop.epoch < config.epochs,
        seconds_per_epoch=float(np.mean(seconds)) if seconds else 0.0,
        selection={"requested": config.monitor, "used": monitor, "note": monitor_note},
        amp_dtype=amp_dtype,  # the restored model is scored as it was trained and validated
    )
