"""Stage 1's inner loop: decode images in loader workers, run the frozen trunk, persist chunks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress
    from torch import nn

    from featurestore.data import Manifest, Record, Split
    from featurestore.models import Preprocessing
    from featurestore.store.write import PartialStore


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one split: the unit of work persisted as one chunk file."""

    split: Split
    start: int
    stop: int


class _ImageDataset:
    """Item i -> (i, (3, crop, crop) tensor or None, error or None); never raises on bad files."""

    def __init__(self, manifest: Manifest, keys: Sequence[str], pre: Preprocessing) -> None:
        self.manifest, self.keys, self.pre = manifest, list(keys), pre

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = self.manifest.open_image(self.keys[i], min_size=self.pre.resize)
        except XrayError as exc:  # ImageDecodeError: reported by the main process
            return i, None, str(exc)
        return i, self.pre(image), None


def _collate(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Stack the good images (B, 3, H, W); bad ones come back as (item, error) pairs."""
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    errors = [(i, err) for i, x, err in items if x is None and err is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, errors


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
) -> float:
    """Compute and persist every pending chunk; returns images per second."""
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
    loader: DataLoader[Any] = DataLoader(
        _ImageDataset(manifest, keys, pre),  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
    )
    trunk.eval().to(device).to(memory_format=torch.channels_last)
    task = progress.add_task(label, total=len(items), unit="img") if progress else None
    # The chunk in flight: feature blocks (B, D), their rows in the split, skipped keys.
    feats: list[np.ndarray] = []
    rows: list[int] = []
    bad: list[str] = []
    current = 0
    began = chunk_began = time.perf_counter()
    with torch.inference_mode():
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
                x = batch.to(device, non_blocking=True, memory_format=torch.channels_last)
                with torch.autocast(device.type, enabled=cuda):
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
