"""torchrun support: process group from the launcher's env, rank-0 helpers, gathers, shards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from featurestore.errors import XrayError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

T = TypeVar("T")

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every worker (plus LOCAL_WORLD_SIZE, GROUP_RANK, ...)."""


def cores_per_process() -> int:
    """CPU cores this process may use: its affinity mask (else `os.cpu_count()`), shared with
    the other processes torchrun started on this node (LOCAL_WORLD_SIZE); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, cores // share)


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a torchrun job, read from the launcher's env vars."""

    rank: int
    """Global rank, 0 .. world_size - 1 (RANK)."""
    world_size: int
    """Number of processes over all nodes (WORLD_SIZE)."""
    local_rank: int
    """Rank on this node: the GPU index it uses (LOCAL_RANK)."""
    local_world_size: int
    """Processes on this node (LOCAL_WORLD_SIZE): they share its CPU cores."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise XrayError(
                f"torchrun env is inconsistent: RANK={self.rank}, WORLD_SIZE={self.world_size}; "
                "launch with torchrun, not by setting these by hand"
            )
        if not 0 <= self.local_rank < max(1, self.local_world_size):
            raise XrayError(
                f"torchrun env is inconsistent: LOCAL_RANK={self.local_rank}, "
                f"LOCAL_WORLD_SIZE={self.local_world_size}"
            )


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """This process's torchrun placement; None outside torchrun or with a single process."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        placement = LaunchEnv(
            rank=int(env["RANK"]),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
        )
    except ValueError:
        shown = ", ".join(f"{k}={env.get(k)!r}" for k in LAUNCH_VARS if k in env)
        raise XrayError(f"torchrun env vars must be integers ({shown})") from None
    if placement.world_size == 1:
        return None  # `torchrun --nproc-per-node 1`: the plain single-process path
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise XrayError(
            f"{' and '.join(missing)} not set: launch with torchrun (it sets them) or set them "
            "to rank 0's address and a free port"
        )
    return placement


def pick_backend(device: str) -> str:
    """ "nccl" when the ranks compute on CUDA GPUs (and NCCL is built in), else "gloo"."""
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def process_group(
    device: str = "auto", *, environ: Mapping[str, str] | None = None, timeout_s: float = 1800.0
) -> Iterator[LaunchEnv | None]:
    """Join torchrun's process group for the block (NCCL on GPUs, gloo on CPUs); no-op outside.

    Under NCCL each process takes GPU LOCAL_RANK, so `cuda` means its own GPU everywhere.
    A group that is already set up (a caller's own) is used as is and left open.
    """
    import torch
    import torch.distributed as dist

    placement = launch_env(environ)
    if placement is None or dist.is_initialized():
        yield placement
        return
    backend = pick_backend(device)
    if backend == "nccl":
        if placement.local_rank >= torch.cuda.device_count():
            raise XrayError(
                f"local rank {placement.local_rank} has no GPU (this node has "
                f"{torch.cuda.device_count()}): lower --nproc-per-node"
            )
        torch.cuda.set_device(placement.local_rank)
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=placement.rank,
        world_size=placement.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        yield placement
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes stores, run folders and output."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op outside a process group)."""
    import torch.distributed as dist

    if active():
        dist.barrier()


def shard(n: int, *, rank_: int | None = None, world: int | None = None) -> range:
    """Positions of n items this rank owns: rank, rank + world, ... (disjoint, covering all)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} is outside a world of {w}")
    return range(r, n, w)


def shard_items(
    items: Sequence[T], *, rank_: int | None = None, world: int | None = None
) -> list[T]:
    """Item i goes to rank i % world: balanced to within one item, whatever is already done."""
    return [items[i] for i in shard(len(items), rank_=rank_, world=world)]


def broadcast_object(obj: T, *, src: int = 0) -> T:
    """Rank `src`'s (picklable) object on every rank."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's (picklable) object, in rank order."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    An XrayError on rank 0 is raised on every rank (all exit with the same one-line message);
    any other failure raises a RuntimeError on the others, so no rank waits forever.
    """
    if not active():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    failure: BaseException | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except XrayError as exc:
            outcome, failure = ("user", str(exc)), exc
        except Exception as exc:
            outcome, failure = ("crash", f"{type(exc).__name__}: {exc}"), exc
    outcome = broadcast_object(outcome)
    if failure is not None:
        raise failure
    return _unwrap(outcome, "rank 0")


def everywhere(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank, then agree: if any rank failed, every rank raises.

    The first XrayError (by rank) is re-raised everywhere, so a bad image on one shard stops
    the whole job with one message instead of leaving the other ranks at the next collective.
    """
    if not active():
        return fn()
    outcome: tuple[str, Any]
    failure: BaseException | None = None
    result: Any = None
    try:
        result = fn()
        outcome = ("ok", None)
    except XrayError as exc:
        outcome, failure = ("user", str(exc)), exc
    except Exception as exc:
        outcome, failure = ("crash", f"{type(exc).__name__}: {exc}"), exc
    outcomes = all_gather_object(outcome)
    if failure is not None:
        raise failure
    for r, other in enumerate(outcomes):
        _unwrap(other, f"rank {r}")
    return result


def _unwrap(outcome: tuple[str, Any], who: str) -> Any:
    kind, value = outcome
    if kind == "user":
        raise XrayError(value)
    if kind == "crash":
        raise RuntimeError(f"{who} failed: {value}")
    return value


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over all ranks (float64)."""
    import torch
    import torch.distributed as dist

    if not active():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's array, in rank order: lengths (axis 0) may differ, the rest must match.

    Collectives need equal-sized tensors, so each rank pads to the longest and the padding is
    cut off again with the gathered lengths.
    """
    import numpy as np
    import torch
    import torch.distributed as dist

    if np.ndim(array) == 0:
        raise ValueError("all_gather_arrays needs arrays of at least one dimension")
    arr = np.ascontiguousarray(array)
    if not active():
        return [arr]
    metas = all_gather_object((arr.shape, arr.dtype.str))
    if any(shape[1:] != arr.shape[1:] or dtype != arr.dtype.str for shape, dtype in metas):
        raise ValueError(f"ranks disagree on trailing shape or dtype: {metas}")
    lengths = [shape[0] for shape, _ in metas]
    if max(lengths) == 0:
        return [arr.copy() for _ in metas]
    device = _device()
    local = torch.from_numpy(arr).to(device)
    padded = torch.zeros((max(lengths), *arr.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    out = [torch.empty_like(padded) for _ in metas]
    dist.all_gather(out, padded)
    return [o[:n].cpu().numpy() for o, n in zip(out, lengths, strict=True)]


def gather_by_index(values: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Rebuild an (n, ...) array from each rank's rows and their positions, each row once.

    Duplicated positions (a DistributedSampler pads shards by repeating items) are dropped;
    a position no rank produced is a bug and raises.
    """
    import numpy as np

    if len(values) != len(positions):
        raise ValueError(f"{len(values)} rows but {len(positions)} positions")
    rows = np.concatenate(all_gather_arrays(np.asarray(values)))
    where = np.concatenate(all_gather_arrays(np.asarray(positions, dtype=np.int64)))
    unique, first = np.unique(where, return_index=True)
    if len(unique) != n or (n and (unique[0] != 0 or unique[-1] != n - 1)):
        raise RuntimeError(f"gathered {len(unique)} distinct positions of {n}: shards left a gap")
    out = np.empty((n, *rows.shape[1:]), dtype=rows.dtype)
    out[unique] = rows[first]
    return out


def sync_buffers(module: nn.Module, *, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    Under DDP parameters are identical on all ranks but running statistics drift apart (each
    rank normalises its own batches), so evaluation shards would see different models.
    """
    import torch.distributed as dist

    if not active():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def wrap_ddp(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around `model` (already on its device); the model itself outside."""
    import torch

    if not active():
        return model
    device = next(model.parameters()).device
    if device.type != "cuda":
        return torch.nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[index])


def _device() -> torch.device:
    """Where collective tensors live: this rank's GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
