"""Stage 1's inner loop: decode images beside the model, run the frozen trunk, persist chunks."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from rich.progress import Progress
    from torch import nn

    from featurestore.data import Manifest, Record, Split
    from featurestore.data.pixel_cache import PixelCache
    from featurestore.models import Preprocessing
    from featurestore.store.write import PartialStore


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one split: the unit of work persisted as one chunk file."""

    split: Split
    start: int
    stop: int


Batch = tuple[list[int], "torch.Tensor | None", list[tuple[int, str]]]
"""(item positions of the good images, their uint8 pixels (B, S, S, 3), [(item, error)])."""


def _pixels(
    manifest: Manifest, key: str, pre: Preprocessing, cache: PixelCache | None = None
) -> tuple[np.ndarray | None, str | None]:
    """One image -> (uint8 (S, S, 3) pixels, None), or (None, error) for an unreadable file.

    With a pixel cache the decoded, resized image comes from (or goes to) it; the crop and
    channels follow either way (the resize inside `pre.pixels` is then a no-op).
    """
    from featurestore.data.pixel_cache import resized_image

    try:
        if cache is None:
            image = manifest.open_image(key, min_size=pre.resize, grey=True)
        else:
            image, _ = resized_image(manifest, key, pre, cache)
    except XrayError as exc:  # ImageDecodeError: reported by the main process
        return None, str(exc)
    return pre.pixels(image), None


class _ImageDataset:
    """Item i -> (i, uint8 (S, S, 3) pixels or None, error or None); never raises on bad files."""

    def __init__(
        self,
        manifest: Manifest,
        keys: Sequence[str],
        pre: Preprocessing,
        cache: PixelCache | None = None,
    ) -> None:
        self.manifest, self.keys, self.pre, self.cache = manifest, list(keys), pre, cache

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        return (i, *_pixels(self.manifest, self.keys[i], self.pre, self.cache))


def _collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> Batch:
    """Stack the good images' pixels (B, S, S, 3); bad ones come back as (item, error) pairs."""
    import numpy as np
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    errors = [(i, err) for i, x, err in items if x is None and err is not None]
    batch = torch.from_numpy(np.stack([x for _, x in good])) if good else None
    return [i for i, _ in good], batch, errors


def decoded_in_threads(
    manifest: Manifest,
    keys: Sequence[str],
    pre: Preprocessing,
    batches: Sequence[Sequence[int]],
    *,
    threads: int = 1,
    ahead: int = 2,
    cache: PixelCache | None = None,
) -> Generator[Batch, None, None]:
    """Batches of pixels decoded by `threads` threads, `ahead` batches before they are needed.

    Pillow releases the GIL while it decodes and resizes and torch while it computes, so the
    next batches decode while the model runs this one, in the same process: no forked workers
    (and their copies of the torch thread pool) competing with torch's threads for the cores.
    `ahead` = 0 decodes each batch only when it is asked for, with the model idle: what the
    CPU path does when torch's threads already take every core (see `decode_overlaps`).
    """
    pending: deque[list[Future[tuple[np.ndarray | None, str | None]]]] = deque()
    todo = iter(batches)
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="xray-decode")

    def submit() -> bool:
        batch = next(todo, None)
        if batch is not None:
            pending.append([pool.submit(_pixels, manifest, keys[i], pre, cache) for i in batch])
        return batch is not None

    try:
        for batch in batches:
            while len(pending) <= max(0, ahead) and submit():
                pass  # this batch and `ahead` more are queued
            futures = pending.popleft()
            yield _collate([(i, *f.result()) for i, f in zip(batch, futures, strict=True)])
    finally:  # also when the consumer stops early (a bad image): drop what is queued
        pool.shutdown(wait=True, cancel_futures=True)


def decode_overlaps(device: torch.device) -> bool:
    """Whether decoding threads should run beside the forward pass (else between batches).

    On a GPU, or when torch's threads leave a core free, the decoding threads have a core to
    themselves while the model computes. When torch's threads take every core (the CPU
    default), a decoding thread beside them oversubscribes the cores: the OpenMP parallel
    regions stall whenever one of their threads is preempted, so the forward pass lost about
    twice the decode's own CPU time. Decoding each batch in as many threads as torch's while
    the model waits costs only that CPU time (vit-small bf16 at 224 px on 2 cores, full-size
    JPEGs: extraction 0.68 -> 0.78 of the bare forward pass; bench/README.md). The features
    are the same either way: the batches and their pixels do not change.
    """
    import torch

    from featurestore.distributed import cores_per_process

    if device.type != "cpu":
        return True
    return torch.get_num_threads() < cores_per_process()


def run_chunks(
    trunk: nn.Module,
    manifest: Manifest,
    pre: Preprocessing,
    records: dict[Split, list[Record]],
    pending: list[Chunk],
    partial: PartialStore,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    dtype: str,
    dim: int,
    skip_bad: bool,
    progress: Progress | None,
    label: str,
    autocast: torch.dtype | None = None,
    decode_threads: int = 1,
    pixel_cache: PixelCache | None = None,
) -> float:
    """Compute and persist every pending chunk; returns images per second.

    `workers` > 0 decodes in that many DataLoader processes (free cores); 0 decodes in
    `decode_threads` threads of this process, overlapping the model when a core is free for
    them (`decode_overlaps`), else in as many threads as torch's, between batches. `autocast`: the
    torch.autocast dtype of the forward pass (None: float32). `pixel_cache`: decoded, resized
    images read from / added to it (each worker process writes its share of the budget).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    # One flat item list over all pending chunks, in manifest order; batches never cross a
    # chunk boundary, so each chunk is computed from the same batches whether resumed or not.
    items: list[tuple[int, int]] = []  # (chunk number, row in split)
    batches: list[list[int]] = []
    ends_chunk: list[bool] = []  # per batch: is it the last batch of its chunk?
    for n, chunk in enumerate(pending):
        first = len(items)
        items.extend((n, row) for row in range(chunk.start, chunk.stop))
        starts = range(first, len(items), batch_size)
        batches.extend(list(range(a, min(a + batch_size, len(items)))) for a in starts)
        ends_chunk.extend(a + batch_size >= len(items) for a in starts)
    keys = [records[pending[n].split][row].key for n, row in items]
    cuda = device.type == "cuda"
    cleanup = contextlib.ExitStack()
    loader: Generator[Batch, None, None] | DataLoader[Any]
    if workers > 0:
        loader = DataLoader(
            _ImageDataset(  # type: ignore[arg-type]
                manifest, keys, pre, pixel_cache.share(workers) if pixel_cache else None
            ),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=cuda,
        )
    else:
        overlap = decode_overlaps(device)
        loader = decoded_in_threads(
            manifest,
            keys,
            pre,
            batches,
            threads=decode_threads if overlap else max(decode_threads, torch.get_num_threads()),
            ahead=2 if overlap else 0,
            cache=pixel_cache,
        )
        cleanup.callback(loader.close)
    trunk.eval().to(device).to(memory_format=torch.channels_last)
    task = progress.add_task(label, total=len(items), unit="img") if progress else None
    # The chunk in flight: feature blocks (B, D), their rows in the split, skipped keys.
    feats: list[np.ndarray] = []
    rows: list[int] = []
    bad: list[str] = []
    current = 0
    began = chunk_began = time.perf_counter()
    with cleanup, torch.inference_mode():
        # The loader yields batches in batch_sampler order, so ends_chunk lines up with them.
        for (positions, batch, errors), last_of_chunk in zip(loader, ends_chunk, strict=True):
            for i, err in errors:
                if not skip_bad:
                    raise XrayError(
                        f"{err}; fix or remove it, or pass --skip-bad to leave bad images out "
                        "(finished chunks are kept)"
                    )
                bad.append(keys[i])
            if batch is not None:
                x = pre.normalize(batch.to(device, non_blocking=True))  # (B, 3, S, S) NHWC
                with torch.autocast(
                    device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                ):
                    out = trunk(x)  # (B, D)
                feats.append(out.float().cpu().numpy().astype(dtype))
                rows.extend(items[i][1] for i in positions)
            if progress is not None and task is not None:
                progress.advance(task, len(positions) + len(errors))
            if last_of_chunk:
                chunk = pending[current]
                partial.write_chunk(
                    chunk.split,
                    chunk.start,
                    features=np.concatenate(feats) if feats else np.zeros((0, dim), dtype),
                    labels=np.array([records[chunk.split][r].label for r in rows], np.int64),
                    indices=np.array(rows, np.int64),
                    skipped=bad,
                    seconds=time.perf_counter() - chunk_began,
                )
                feats, rows, bad = [], [], []
                current += 1
                chunk_began = time.perf_counter()
    elapsed = time.perf_counter() - began
    return len(items) / elapsed if elapsed > 0 else 0.0
