"""Training checkpoints (last.pt): atomic saves, exact resume, weights_only-safe contents."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from featurestore.errors import XrayError
from featurestore.fileio import atomic_path

if TYPE_CHECKING:
    from featurestore.train.loop import TrainConfig

CHECKPOINT_FORMAT = 1


def _rng_state() -> dict[str, Any]:
    # Tensors and lists only, so the checkpoint loads with weights_only=True.
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    with atomic_path(path, kept=" with --resume (the last complete checkpoint is kept)") as tmp:
        torch.save(payload, tmp)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # A run may resume on another device (GPU lost, moved machine); everything else must match.
    return {k: v for k, v in config.items() if k != "device"}


@dataclass
class LoopState:
    """Everything the loop carries between epochs (and into last.pt)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def checkpoint(
        self,
        config: TrainConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(config),
            "epoch": self.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best_state": self.best_state,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng": _rng_state(),
        }


def resume(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> LoopState:
    """Load last.pt into model/optimizer/scheduler/RNG; the config must match the original."""
    if not path.is_file():
        raise XrayError(f"no checkpoint to resume at {path}; run again without --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so instead of a traceback
        raise XrayError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise XrayError(f"{path} is not an xray training checkpoint; delete it to start over")
    if _comparable(ckpt["config"]) != _comparable(asdict(config)):
        diff = sorted(
            k for k, v in _comparable(asdict(config)).items() if ckpt["config"].get(k) != v
        )
        raise XrayError(
            f"cannot resume {path}: settings differ ({', '.join(diff)}); "
            "rerun with the original options or without --resume"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    return LoopState(
        epoch=int(ckpt["epoch"]),
        history=list(ckpt["history"]),
        best_state=ckpt["best_state"],
        best_score=float(ckpt["best_score"]),
        best_epoch=int(ckpt["best_epoch"]),
        bad_epochs=int(ckpt["bad_epochs"]),
    )
