"""What the trainer optimises with: AdamW param groups, warmup+cosine schedule, class weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from featurestore.errors import XrayError

if TYPE_CHECKING:
    from featurestore.train.loop import TrainConfig


def class_weights(
    labels: np.ndarray,
    n_classes: int,
    policy: str,
    class_names: tuple[str, ...] | None = None,
) -> Tensor:
    """Cross-entropy weights (C,): balanced n / (C * n_c), or ones.

    Raises XrayError naming the class when train has none of its images (a store or dataset
    whose validation carve took the class's only train patients).
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        names = class_names or tuple(f"index {i}" for i in range(n_classes))
        empty = ", ".join(repr(names[i]) for i in np.flatnonzero(counts == 0))
        raise XrayError(
            f"the train split has no images of class {empty}: if the dataset's train folder "
            "has some, the validation carve moved all of their patients to val; add train "
            "images of that class from more patients, or give a val split of >= 100 images so "
            "nothing is carved"
        )
    if policy == "none":
        return torch.ones(n_classes)
    return torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with head / backbone (`trunk.*`) groups, no weight decay on biases and norms."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("trunk.") else "head"
        # 1-D parameters are biases and norm scales: decaying them only hurts.
        groups.setdefault((part, param.ndim > 1), []).append(param)
    if not groups:
        raise XrayError("the model has no trainable parameters: choose a lighter --freeze")
    param_groups = []
    for part in ("head", "backbone"):
        mult = config.backbone_lr_mult if part == "backbone" else 1.0
        for decay in (True, False):
            if (part, decay) in groups:
                param_groups.append(
                    {
                        "name": f"{part}{'' if decay else '_no_decay'}",
                        "params": groups[(part, decay)],
                        "lr": config.lr * mult,
                        "weight_decay": config.weight_decay if decay else 0.0,
                    }
                )
    return torch.optim.AdamW(param_groups, lr=config.lr)


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Step -> multiplier of the peak lr: linear warmup, then cosine decay to 0 (or constant)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup then cosine decay to 0 at the last step (or constant)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
