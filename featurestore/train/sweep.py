"""Head sweeps (`fit-head --sweep`): a grid of heads trained as one batched module, picked on val.

Every member sees the same batches in the same order (one pass over the cached features per
epoch for the whole grid, like DINOv2's linear eval): the forward is one stacked matrix product,
the backward one autograd pass of the summed per-member losses (members share no parameters, so
each gets exactly its own gradient), and AdamW is hand-vectorised with a learning rate and a
weight decay per member. Each member clips its own gradient norm, keeps its own best epoch and
stops early on its own. The member with the best validation monitor becomes the run; test is
scored once, for it alone, by the trainer's `conclude`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata  # at import, not inside the first (timed) epoch
from torch import Tensor, nn

from featurestore.config import SweepConfig, TrainConfig
from featurestore.devices import resolve_device
from featurestore.models import StackedHeads
from featurestore.tasks import MAX_IMAGE_LOSS, Task
from featurestore.train.evaluation import FitResult, conclude, source_task_of
from featurestore.train.loop import announce_start, epoch_table_wanted, selection_monitor
from featurestore.train.objectives import label_pos_weights, scored_images
from featurestore.train.optim import class_weights, lr_factor

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.train.sources import FeatureSource

SWEEP_COLUMNS = (
    "member",
    "head",
    "lr",
    "weight_decay",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "monitor",
    "score",
    "val_loss",
    "val_acc",
    "val_f1",
    "val_auc",
    "chosen",
)
"""sweep.csv: one row per member; `score` is the monitor at the member's best epoch
(val_loss itself when the monitor is val_loss; lower is then better)."""


@dataclass
class SweepResult:
    """The chosen member as an ordinary trained head, its FitResult, and the whole grid."""

    head: nn.Module
    """The chosen member exported as `nn.Linear` or `MLPHead`, best weights loaded."""
    kind: str
    config: TrainConfig
    """The run's TrainConfig with the chosen member's lr and weight decay."""
    result: FitResult
    rows: list[dict[str, Any]]
    """sweep.csv rows (SWEEP_COLUMNS), in grid order."""
    chosen: int
    seconds: float
    """Wall-clock seconds of the whole batched training (every member, every epoch)."""


class _AdamW:
    """AdamW over stacked parameters with a (G,) learning rate and weight decay per member.

    The same update as `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8, decoupled decay
    p <- p (1 - lr wd) before the Adam step; Loshchilov & Hutter, ICLR 2019), with lr and wd
    broadcast over each member's slice. Members whose `active` flag is off are left untouched.
    """

    def __init__(self, params: dict[str, nn.Parameter], lr: Tensor, wd: dict[str, Tensor]):
        self.params, self.lr, self.wd = params, lr, wd
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.t = 0
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8

    @torch.no_grad()
    def step(self, factor: float, active: Tensor) -> None:
        self.t += 1
        bc1 = 1 - self.beta1**self.t
        bc2 = 1 - self.beta2**self.t
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            lr = (self.lr * factor * active).view(shape)  # (G, 1, ...): 0 for stopped members
            g = p.grad
            p.mul_(1 - lr * self.wd[name].view(shape))
            m, v = self.m[name], self.v[name]
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_(lr / bc1 * m / denom)


def _clip_per_member(params: list[nn.Parameter], max_norm: float) -> None:
    """clip_grad_norm_ applied to each member's gradients separately (as if trained alone)."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # (G,)
    coef = (max_norm / (torch.as_tensor(sq).sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view((-1,) + (1,) * (g.ndim - 1)))


def _acc_f1(pred: Tensor, y: Tensor, n_classes: int) -> dict[str, Tensor]:
    """Per member: accuracy and macro F1 of (N, G) predicted classes; each (G,).

    F1 counts 0 for a class never predicted nor present (sklearn's zero_division=0).
    """
    yy = y.view(-1, 1)
    acc = (pred == yy).double().mean(0)
    f1s = []
    for c in range(n_classes):
        tp = ((pred == c) & (yy == c)).sum(0).double()
        fp = ((pred == c) & (yy != c)).sum(0).double()
        fn = ((pred != c) & (yy == c)).sum(0).double()
        denom = 2 * tp + fp + fn
        f1s.append(torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp)))
    return {"acc": acc, "f1": torch.stack(f1s).mean(0)}


def _label_acc_f1(pred: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Multi-label, per member: accuracy over observed entries and the mean over findings of
    each finding's binary F1, of (N, G, L) decisions at 0.5 against (N, L) targets (NaN
    masked); each (G,). As `objectives.multilabel_summary` (sklearn, zero_division=0)."""
    observed = (~torch.isnan(y)).unsqueeze(1)  # (N, 1, L)
    truth = (y == 1.0).unsqueeze(1)  # (N, 1, L)
    n_obs = int(observed.sum())
    right = ((pred == truth) & observed).sum((0, 2)).double()
    acc = right / n_obs if n_obs else torch.zeros(pred.shape[1], dtype=torch.float64)
    tp = (pred & truth & observed).sum(0).double()  # (G, L)
    fp = (pred & ~truth & observed).sum(0).double()
    fn = (~pred & truth & observed).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return {"acc": acc, "f1": f1.mean(1)}


def _auc(scores: Tensor, positive: np.ndarray) -> Tensor:
    """Per member ROC-AUC (G,) of (N, G) scores against (N,) bool truth; NaN with one class.

    The Mann-Whitney statistic on average ranks: equal to sklearn's roc_auc_score, ties
    included (Hanley & McNeil, Radiology 1982).
    """
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    ranks = rankdata(scores.double().numpy(), axis=0)  # (N, G)
    u = ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2
    return torch.from_numpy(u / (n_pos * n_neg))


def _task_auc(logits: Tensor, y: Tensor, task: Task) -> Tensor:
    """The single trainer's monitor AUC per member (G,) from (N, G, C) logits.

    Binary: the positive class's AUC. Multi-class: the macro one-vs-rest AUC, NaN when a class
    is missing from the split. Multi-label: the mean over findings of each finding's AUC on
    its observed entries, over the findings where it is defined (NaN when none is).
    """
    probs = task.probabilities(logits.flatten(0, 1)).view(logits.shape)  # (N, G, C)
    if task.binary:
        # Softmax is monotone in the logit difference: rank the positive class's probability.
        pos = task.positive_index
        return _auc(probs[:, :, pos], (y == pos).numpy())
    if task.multiclass:
        aucs = torch.stack([_auc(probs[:, :, k], (y == k).numpy()) for k in range(task.n_outputs)])
        return aucs.mean(0)  # NaN as soon as one class's AUC is
    y_np = y.numpy()
    per_label = []
    for k in range(task.n_outputs):
        mask = ~np.isnan(y_np[:, k])
        auc = _auc(probs[mask][:, :, k], y_np[mask, k] == 1.0)
        if not bool(torch.isnan(auc).all()):
            per_label.append(auc)
    if not per_label:
        return torch.full((logits.shape[1],), math.nan, dtype=torch.float64)
    return torch.stack(per_label).mean(0)


def _masked_bce(logits: Tensor, y: Tensor, pos_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each member's BCE per (image, finding) (B, G, L) of (B, G, L) logits against (B, L)
    targets, 0 where masked (NaN), and the (B, 1, L) observed mask; `pos_weight` (L,) scales
    the positive term, as `objectives.MaskedBCEWithLogits`."""
    observed = (~torch.isnan(y)).unsqueeze(1)  # (B, 1, L)
    target = torch.where(observed, y.unsqueeze(1), torch.zeros_like(y.unsqueeze(1)))
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target.expand_as(logits), pos_weight=pos_weight, reduction="none"
    )  # (B, G, L)
    return per_entry * observed, observed


def _image_losses(logits: Tensor, y: Tensor, task: Task) -> Tensor:
    """Unweighted loss of each image for each member (B, G), in nats: cross-entropy, or the
    image's mean BCE over its observed findings (0 with none observed), each capped at
    `tasks.MAX_IMAGE_LOSS` as `objectives.summed_loss` of one head."""
    g = logits.shape[1]
    if not task.multilabel:
        return F.cross_entropy(logits.permute(0, 2, 1), y.view(-1, 1).expand(-1, g),
                               reduction="none").clamp(max=MAX_IMAGE_LOSS)  # fmt: skip
    per_entry, observed = _masked_bce(logits, y, None)
    per_entry = per_entry.clamp(max=MAX_IMAGE_LOSS)
    return per_entry.sum(2) / observed.sum(2).clamp(min=1)  # (B, G)


def _training_loss(logits: Tensor, y: Tensor, task: Task, weight: Tensor) -> Tensor:
    """The loss each member optimises (G,), as the single trainer's criterion of one head.

    Binary / multi-class: class-weighted cross-entropy, the weighted mean of
    `CrossEntropyLoss(weight=...)`. Multi-label: `MaskedBCEWithLogits(pos_weight=weight)`, the
    mean over the batch's observed entries, `weight` (L,) scaling each finding's positive term.
    """
    g = logits.shape[1]
    if not task.multilabel:
        per = F.cross_entropy(logits.permute(0, 2, 1), y.view(-1, 1).expand(-1, g),
                              weight=weight, reduction="none")  # fmt: skip
        return per.sum(0) / weight[y].sum()  # (G,)
    per_entry, observed = _masked_bce(logits, y, weight)
    return per_entry.sum((0, 2)) / observed.sum().clamp(min=1)


def _decisions(logits: Tensor, task: Task) -> Tensor:
    """What the history's accuracy and F1 score: argmax classes (B, G), or multi-label
    decisions at probability 0.5 (B, G, L) bool."""
    if task.multilabel:
        return torch.sigmoid(logits.float()).double() >= 0.5
    return logits.argmax(2)


def _acc_f1_of(pred: Tensor, y: Tensor, task: Task) -> dict[str, Tensor]:
    return _label_acc_f1(pred, y) if task.multilabel else _acc_f1(pred, y, task.n_outputs)


def _forward(stacks: list[StackedHeads], x: Tensor) -> Tensor:
    """(B, D) -> (B, G, C): every stack's members, in grid order."""
    return torch.cat([s(x) for s in stacks], dim=1)


@torch.inference_mode()
def _evaluate(
    stacks: list[StackedHeads], source: FeatureSource, split: str, device: torch.device, task: Task
) -> dict[str, Tensor]:
    for s in stacks:
        s.eval()
    x, y = source.arrays(split)  # type: ignore[arg-type]
    logits = _forward(stacks, x.to(device)).float().cpu()  # (N, G, C)
    per_image = _image_losses(logits, y, task)  # (N, G)
    loss = per_image.sum(0) / scored_images(y, task.kind) if task.multilabel else per_image.mean(0)
    out = _acc_f1_of(_decisions(logits, task), y, task)
    return {"loss": loss.double(), **out, "auc": _task_auc(logits, y, task)}


def _scores(val: dict[str, Tensor], monitor: str) -> Tensor:
    """Larger is better; NaN never improves (as the single trainer's `_score`)."""
    s = -val["loss"] if monitor == "val_loss" else val[monitor.removeprefix("val_")]
    return torch.nan_to_num(s, nan=-math.inf)


def fit_sweep(
    source: FeatureSource,
    config: TrainConfig,
    grid: SweepConfig,
    *,
    progress: Progress | None = None,
    console: Console | None = None,
    verbose: bool | None = None,
) -> SweepResult:
    """Train every member of `grid` at once on `source`, keep the best on validation.

    Reporting as `loop.fit`: one live progress line over the grid's epochs, one summary line
    naming the chosen member; a line per epoch only when `verbose` (None: $XRAY_VERBOSE).

    Members are seeded like a single `fit-head` with `config.seed` (same initialisation, same
    batch order), so a member matches the same head trained alone up to float rounding
    (dropout masks of MLP members differ). Computes on `config.device` (features move there
    batch by batch); the per-member bookkeeping stays on the CPU.

    Every task trains with its own loss and selects on its own monitor, as `fit` does for one
    head: class-weighted cross-entropy (binary, multi-class; AUC of the positive class or the
    macro one-vs-rest AUC) or masked BCE with per-finding positive weights (multi-label; the
    mean AUC over the findings where it is defined). The winner is concluded by `conclude`, as
    a single head of its task is.

    Raises:
        XrayError: when train lacks a class (or, multi-label, every finding lacks one).
    """
    task = source_task_of(source)
    members = grid.members()
    n_classes, dim = task.n_outputs, source.feature_dim
    _, _, y_train = source.records("train")
    device = resolve_device(config.device)
    if task.multilabel:  # (L,) positive weights over observed train entries
        weight = label_pos_weights(y_train, source.class_names, config.class_weight)
    else:  # (C,) class weights
        weight = class_weights(y_train, n_classes, config.class_weight, source.class_names)
    weight = weight.to(device)
    # A one-class validation split has no AUC: every member then selects on val_loss, as the
    # single trainer does, and metrics.json records it.
    monitor, monitor_note = selection_monitor(
        config.monitor, source.records("val")[2], source.class_names
    )
    if console is not None and monitor_note is not None:
        console.print(f"[yellow]warning:[/] {monitor_note}", highlight=False)
    stacks: list[StackedHeads] = []
    for kind in dict.fromkeys(h for h, _, _ in members):
        count = sum(h == kind for h, _, _ in members)
        stack = StackedHeads(kind, dim, n_classes, count, seeds=[config.seed] * count)  # type: ignore[arg-type]
        stacks.append(stack.to(device))
    torch.manual_seed(config.seed)
    params: dict[str, nn.Parameter] = {}
    decay: dict[str, Tensor] = {}
    wd = torch.tensor([m[2] for m in members], dtype=torch.float32, device=device)
    offset = 0
    lr_all = torch.tensor([m[1] for m in members], dtype=torch.float32, device=device)
    for i, s in enumerate(stacks):
        sl = slice(offset, offset + s.members)
        for name, p in s.named_parameters():
            key = f"{i}.{name}"
            params[key] = p
            decay[key] = wd[sl] if s.decays(name) else torch.zeros(s.members, device=device)
        offset += s.members
    optimizers = [
        _AdamW({k: p for k, p in params.items() if k.startswith(f"{i}.")}, lr_all[sl], decay)
        for i, sl in enumerate(_slices(stacks))
    ]
    factor = lr_factor(config, source.steps_per_epoch())  # the trainer's schedule, step by step
    g_total = len(members)
    active = torch.ones(g_total)
    best_score = torch.full((g_total,), -math.inf, dtype=torch.float64)
    best_epoch = torch.zeros(g_total, dtype=torch.long)
    bad = torch.zeros(g_total, dtype=torch.long)
    epochs_run = torch.zeros(g_total, dtype=torch.long)
    best_state = [{k: v.detach().clone() for k, v in s.state_dict().items()} for s in stacks]
    history: list[list[dict[str, float]]] = [[] for _ in members]
    bar = None
    if progress is not None:
        bar = progress.add_task("sweep", total=config.epochs, unit="epochs", announced=True)
    table = epoch_table_wanted(verbose)
    out = console or (progress.console if progress is not None else None)
    announce_start(out, f"sweep: {len(members)} heads, up to {config.epochs} epochs, "
                        f"each selecting its best epoch on {monitor}")  # fmt: skip
    began = time.perf_counter()
    step = 0
    for epoch in range(1, config.epochs + 1):
        if not bool(active.any()):
            break
        start = time.perf_counter()
        for s in stacks:
            s.train()
        loss_sum = torch.zeros(g_total, dtype=torch.float64)
        lr_sum, n_steps, run_pred, run_y = 0.0, 0, [], []
        for x_cpu, y_cpu in source.batches("train", shuffle=True, epoch=epoch):
            x, y = x_cpu.to(device), y_cpu.to(device)
            logits = _forward(stacks, x)  # (B, G, C)
            loss = _training_loss(logits, y, task, weight)  # (G,)
            for p in params.values():
                p.grad = None
            loss.sum().backward()
            f = factor(step)
            for stack_i, sl in enumerate(_slices(stacks)):
                group = [p for k, p in params.items() if k.startswith(f"{stack_i}.")]
                if config.grad_clip > 0:
                    _clip_per_member(group, config.grad_clip)
                optimizers[stack_i].step(f, active[sl].to(device))
            step += 1
            lr_sum += f
            n_steps += 1
            detached = logits.detach()
            loss_sum += _image_losses(detached, y, task).sum(0).double().cpu()
            run_pred.append(_decisions(detached, task).cpu())  # the history needs acc/F1 only
            run_y.append(y_cpu)
        train = _acc_f1_of(torch.cat(run_pred), torch.cat(run_y), task)
        val = _evaluate(stacks, source, "val", device, task)
        seconds = time.perf_counter() - start
        n_scored = scored_images(torch.cat(run_y), task.kind)
        for g in (int(i) for i in np.flatnonzero(active.numpy())):
            history[g].append(
                {
                    "epoch": float(epoch),
                    "lr": members[g][1] * lr_sum / n_steps,
                    "train_loss": float(loss_sum[g]) / n_scored,
                    "train_acc": float(train["acc"][g]),
                    "train_f1": float(train["f1"][g]),
                    "val_loss": float(val["loss"][g]),
                    "val_acc": float(val["acc"][g]),
                    "val_f1": float(val["f1"][g]),
                    "val_auc": float(val["auc"][g]),
                    "seconds": seconds,
                }
            )
        score = _scores(val, monitor)
        was_active = active.bool()
        improved = was_active & ((best_epoch == 0) | (score > best_score + config.min_delta))
        epochs_run[was_active] = epoch
        best_score = torch.where(improved, score, best_score)
        best_epoch = torch.where(improved, torch.tensor(epoch), best_epoch)
        bad = torch.where(improved, torch.zeros_like(bad), bad + was_active.long())
        for s, sl, state in zip(stacks, _slices(stacks), best_state, strict=True):
            mask = improved[sl]
            if bool(mask.any()):
                for k, v in s.state_dict().items():
                    state[k][mask.to(v.device)] = v.detach()[mask.to(v.device)]
        active = (was_active & (bad < config.patience)).float()
        alive = int(active.sum())
        if progress is not None and bar is not None:
            best_now = _fmt_best(best_score, monitor)
            progress.update(bar, completed=epoch, description=f"sweep ({alive}/{g_total} "
                            f"training, best {monitor} {best_now})")  # fmt: skip
        if console is not None and table:
            console.print(
                f"sweep epoch {epoch}/{config.epochs}: best {monitor} "
                f"{_fmt_best(best_score, monitor)}, {alive}/{g_total} members training, "
                f"{seconds:.2f} s"
            )
    if progress is not None and bar is not None:
        progress.remove_task(bar)
    seconds_total = time.perf_counter() - began

    # Selection on validation only: the best monitor at each member's best epoch. Small
    # validation sets tie often (several members at AUC 1.0): the lower validation loss at the
    # best epoch breaks ties, then grid order.
    tied = [int(g) for g in np.flatnonzero((best_score == best_score.max()).numpy())]
    chosen = min(tied, key=lambda g: (history[g][int(best_epoch[g]) - 1]["val_loss"], g))
    stack_i, local = _locate(stacks, chosen)
    head = stacks[stack_i].export(local, best_state[stack_i])
    kind, lr, weight_decay = members[chosen]
    chosen_config = replace(config, lr=lr, weight_decay=weight_decay)
    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    hist = history[chosen]
    result = conclude(
        head,
        source,
        chosen_config,
        best_state=state,
        history=hist,
        best_epoch=int(best_epoch[chosen]),
        stopped_early=int(epochs_run[chosen]) < config.epochs,
        seconds_per_epoch=float(np.mean([r["seconds"] for r in hist])),
        selection={"requested": config.monitor, "used": monitor, "note": monitor_note},
    )
    if console is not None:
        best_at = int(best_epoch[chosen])
        console.print(
            f"sweep: {g_total} heads, {int(epochs_run.max())}/{config.epochs} epochs, "
            f"{seconds_total:.1f} s; chosen member {chosen} ({kind}, lr {lr:g}, wd "
            f"{weight_decay:g}): best epoch {best_at}, {monitor} "
            f"{hist[best_at - 1][monitor]:.4f}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    rows = []
    for g, (h, lr_g, wd_g) in enumerate(members):
        at_best = history[g][int(best_epoch[g]) - 1]
        rows.append(
            {
                "member": g,
                "head": h,
                "lr": lr_g,
                "weight_decay": wd_g,
                "best_epoch": int(best_epoch[g]),
                "epochs_run": int(epochs_run[g]),
                "stopped_early": int(epochs_run[g]) < config.epochs,
                "monitor": monitor,
                "score": at_best[monitor],
                "val_loss": at_best["val_loss"],
                "val_acc": at_best["val_acc"],
                "val_f1": at_best["val_f1"],
                "val_auc": at_best["val_auc"],
                "chosen": g == chosen,
            }
        )
    return SweepResult(head, kind, chosen_config, result, rows, chosen, seconds_total)


def _slices(stacks: list[StackedHeads]) -> list[slice]:
    out, offset = [], 0
    for s in stacks:
        out.append(slice(offset, offset + s.members))
        offset += s.members
    return out


def _locate(stacks: list[StackedHeads], g: int) -> tuple[int, int]:
    """Grid index -> (stack, member within the stack)."""
    for i, sl in enumerate(_slices(stacks)):
        if sl.start <= g < sl.stop:
            return i, g - sl.start
    raise IndexError(g)


def _fmt_best(best: Tensor, monitor: str) -> str:
    value = float(best.max())
    return f"{-value if monitor == 'val_loss' else value:.4f}"


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """sweep.csv: SWEEP_COLUMNS, one row per member; floats at full precision."""
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SWEEP_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    repr(float(r[c])) if isinstance(r[c], float) else int(r[c])
                    if isinstance(r[c], bool) else r[c]
                    for c in SWEEP_COLUMNS
                ]
            )  # fmt: skip


def sweep_files(swept: SweepResult) -> Callable[[Path], None]:
    """Writes sweep.csv and plots/sweep.png into a run folder (for `write_run(extra=...)`)."""

    def write(folder: Path) -> None:
        from featurestore.plots import plot_sweep

        write_sweep_csv(folder / "sweep.csv", swept.rows)
        plot_sweep(swept.rows, str(swept.rows[0]["monitor"]), folder / "plots" / "sweep.png")

    return write


class SweepHead:
    """A sweep behind the frozen mode's one head interface (`head_fit.HeadTrainer`).

    `fit` trains the grid and returns the chosen member's FitResult; afterwards `module` is
    that member as an ordinary head, `kind` its head kind, `chosen_config` the TrainConfig
    with its lr and weight decay, `record()` what config.json keeps of the grid, and
    `write_files(folder)` writes sweep.csv and plots/sweep.png into the run folder.
    """

    def __init__(self, grid: SweepConfig):
        self.grid = grid
        self.kind = "sweep"
        self.module: nn.Module = nn.Identity()
        self.swept: SweepResult | None = None

    def fit(
        self,
        source: FeatureSource,
        config: TrainConfig,
        *,
        progress: Progress | None = None,
        console: Console | None = None,
    ) -> FitResult:
        """Train every member at once, keep the best on val, score test once for it."""
        self.swept = fit_sweep(source, config, self.grid, progress=progress, console=console)
        self.module, self.kind = self.swept.head, self.swept.kind
        return self.swept.result

    @property
    def chosen_config(self) -> TrainConfig:
        """The TrainConfig of the chosen member (its lr and weight decay)."""
        assert self.swept is not None, "fit first"
        return self.swept.config

    def record(self) -> dict[str, Any]:
        """config.json's `sweep`: the grid, its size, the chosen member, the grid's time."""
        assert self.swept is not None, "fit first"
        from dataclasses import asdict

        return {
            "sweep": {
                "grid": asdict(self.grid),
                "members": len(self.swept.rows),
                "chosen_member": self.swept.chosen,
                "monitor": self.swept.rows[0]["monitor"],
                "seconds": self.swept.seconds,
                "note": "lr and weight_decay above are the chosen member's; history.csv is "
                "its history, whose seconds are the whole grid's batched epochs",
            }
        }

    def write_files(self, folder: Path) -> None:
        """sweep.csv and plots/sweep.png, into a run folder being written."""
        assert self.swept is not None, "fit first"
        sweep_files(self.swept)(folder)
