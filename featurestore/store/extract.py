"""Stage 1: run a frozen backbone once per image of a manifest into an HDF5 feature store."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from featurestore import distributed, library_versions
from featurestore.config import FEATURE_DTYPES, ExtractConfig
from featurestore.devices import autocast_dtype, resolve_device, resolve_precision
from featurestore.errors import XrayError
from featurestore.fileio import file_digest
from featurestore.models import backbones
from featurestore.store import read as store
from featurestore.store import write as store_write
from featurestore.store.extract_loop import Chunk, run_chunks

if TYPE_CHECKING:
    from rich.progress import Progress

    from featurestore.data import Manifest

Status = Literal["reused", "resumed", "built", "rebuilt"]
DTYPES = FEATURE_DTYPES


def default_workers(device_type: str = "cpu") -> int:
    """Decoding worker processes: on a GPU all cores but one, at most 8 per process; on CPU
    the cores torch's threads leave free when that is more than one, else none.

    On CPU the forward pass usually uses every core through torch's threads: one forked
    worker beside the torch threads measured 0.86/0.61 of forward-only (resnet50/densenet121,
    bench/README.md), so with 0 workers images decode in a thread of the main process,
    overlapping the model (Pillow and torch both release the GIL). When torch is held to
    fewer threads than there are cores (OMP_NUM_THREADS, torch.set_num_threads) and two or
    more cores are idle, they decode as processes, out of reach of the GIL. On a GPU the
    cores are free for decoding, which then must keep up with the forward pass.
    """
    from featurestore.distributed import cores_per_process

    cores = cores_per_process()  # torchrun's processes on a node share its cores
    if device_type == "cuda":
        return max(0, min(8, cores - 1))
    import torch

    free = cores - torch.get_num_threads()
    return min(8, free) if free > 1 else 0


@dataclass(frozen=True)
class ExtractResult:
    """What `extract_features` did and what the store holds."""

    path: Path
    status: Status
    reason: str
    """Why the store was reused, resumed, built or rebuilt, in words."""
    backbone: str
    weights_id: str
    precision: str
    """What the trunk computed in: fp32, bf16 or fp16."""
    counts: dict[str, int]
    """Rows per split in the store."""
    feature_dim: int
    seconds: float
    """Wall time of this call."""
    images_per_second: float | None
    """Throughput of the images computed by this call (None when none were)."""
    skipped: list[str]
    """Keys of unreadable images left out (--skip-bad)."""
    pixel_cache_bytes: int | None = None
    """Size of the pixel cache folder after this call (None: off, or nothing computed)."""
    pixel_cache_hits: int | None = None
    """Images this call read from the pixel cache instead of decoding them (None: unknown,
    decoded in worker processes, or the cache off)."""


_EXTRACT = ExtractConfig()


def extract_features(
    manifest: Manifest,
    *,
    model: str,
    weights: str = _EXTRACT.weights,
    cache_dir: Path,
    image_size: int = _EXTRACT.image_size,
    batch_size: int = _EXTRACT.batch_size,
    workers: int | None = _EXTRACT.workers,
    device: str = _EXTRACT.device,
    dtype: str = _EXTRACT.dtype,
    precision: str | None = _EXTRACT.precision,
    rehash: bool = _EXTRACT.rehash,
    skip_bad: bool = _EXTRACT.skip_bad,
    pixel_cache_gb: float = _EXTRACT.pixel_cache_gb,
    progress: Progress | None = None,
    chunk_size: int = 256,
    notice: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract (or reuse, or resume) the store of `model` x `weights` x preprocessing x
    precision x dataset.

    `precision` (auto | fp32 | bf16, see `featurestore.config.Precision`) is what the trunk
    computes in; the features are stored as `dtype` either way. It is part of the store's
    identity: its file name and its `precision` attribute (fp32, bf16 or fp16 on CUDA).
    The dataset's fingerprint reuses file digests recorded under `cache_dir` while the files'
    stat is unchanged; `rehash` hashes every file anyway. It is taken again before the store
    is assembled: a file added, removed or replaced while extracting raises XrayError (the
    store is not written, so it never claims the old content's fingerprint for new pixels).
    Decoded, resized images are kept in the pixel cache under `cache_dir` (at most
    `pixel_cache_gb` GB, 0: off), shared with the other backbones that resize alike.
    """
    from featurestore.data import dataset_fingerprint
    from featurestore.data.pixel_cache import open_pixel_cache

    began = time.perf_counter()
    say = notice or (lambda _msg: None)
    if dtype not in DTYPES:
        raise XrayError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or chunk_size < 1:
        raise XrayError("--batch-size and the chunk size must be at least 1")
    torch_device = resolve_device(device)
    workers = default_workers(torch_device.type) if workers is None else workers
    if workers < 0:
        raise XrayError(f"--workers must be 0 or more, got {workers}")
    if not pixel_cache_gb >= 0:
        raise XrayError(f"--pixel-cache-gb must be 0 or more, got {pixel_cache_gb}")
    # On CUDA `auto` keeps torch.autocast's float16, as extraction always did there.
    resolved = resolve_precision(precision, torch_device, cuda_auto="fp16")
    spec = backbones.get_spec(model)
    model = spec.name  # `hf:microsoft/rad-dino` is filed under its alias `rad-dino`
    pre = backbones.preprocessing_for(model, weights, image_size)
    weights_id, weights_sha = backbones.weights_identity(model, weights)
    path = store.store_path(
        cache_dir,
        store.dataset_folder(manifest.name or manifest.root.stem, manifest.source or manifest.root),
        model,
        backbones.weights_tag(weights_id, weights_sha),
        image_size,
        # Token models hold every pooling side by side; the name says which (cls+mean).
        pooling=spec.pooling
        if isinstance(spec, backbones.ProviderSpec) and spec.family == "vit"
        else None,
        precision=resolved,
    )
    # Torchvision stores keep the attributes they always had (so they stay up to date).
    provider_attrs: dict[str, Any] = (
        {
            "provider": spec.provider,
            "provider_model": spec.model_id,
            "pooling": spec.pooling,
            "poolings": {k: list(v) for k, v in spec.poolings.items()},
        }
        if isinstance(spec, backbones.ProviderSpec)
        else {}
    )
    provenance: dict[str, Any] = {
        "format_version": store.FORMAT_VERSION,
        "backbone": model,
        "weights_id": weights_id,
        "weights_sha256": weights_sha,
        "preprocessing": pre.as_dict(),
        "image_size": image_size,
        "precision": resolved,
        "dtype": dtype,
        # Hashing every file is rank 0's job; torchrun's other ranks get the result.
        "dataset_fingerprint": distributed.on_main(
            lambda: dataset_fingerprint(
                manifest, progress=progress, cache_dir=cache_dir, rehash=rehash
            )
        ),
        "class_names": list(manifest.class_names),
        "positive_index": manifest.positive_index,
        "carve": manifest.carve.as_dict() if manifest.carve else None,
        # Not provenance keys (the fingerprint already covers labels): what fit-head needs to
        # re-read the dataset the same way and to pick the head, loss and metrics.
        "task": manifest.task,
        "label_scheme": manifest.label_scheme,
        **provider_attrs,
    }
    partial = store_write.PartialStore(path)

    pixels: dict[str, int | None] = {"bytes": None, "hits": None}

    def result(
        status: Status, reason: str, counts: dict[str, int], skipped: list[str], rate: float | None
    ) -> ExtractResult:
        return ExtractResult(
            path,
            status,
            reason,
            model,
            weights_id,
            resolved,
            counts,
            spec.feature_dim,
            round(time.perf_counter() - began, 3),
            rate,
            skipped,
            pixel_cache_bytes=pixels["bytes"],
            pixel_cache_hits=pixels["hits"],
        )

    records = {s: manifest.split(s) for s in store.SPLIT_NAMES}
    plan = [
        Chunk(s, a, min(a + chunk_size, len(records[s])))
        for s in store.SPLIT_NAMES
        for a in range(0, len(records[s]), chunk_size)
    ]
    with contextlib.ExitStack() as held:

        def settle() -> tuple[Status, str, store.FeatureStore | None, list[Chunk]]:
            # Under torchrun only rank 0 holds the lock and touches the partial folder's
            # provenance; the other ranks wait for its verdict (on_main broadcasts it).
            held.enter_context(store_write.store_lock(path))
            status, reason, reusable = _settle_existing(path, partial, provenance, chunk_size, say)
            if reusable is not None:
                return status, reason, reusable, []
            pending = [c for c in plan if not partial.done(c.split, c.start)]
            if status == "built" and len(pending) < len(plan):
                status = "resumed"
                reason = f"{len(plan) - len(pending)} of {len(plan)} chunks already done"
                say(f"{path}: resuming, {reason}")
            return status, reason, None, pending

        status, reason, reusable, pending = distributed.on_main(settle)
        if reusable is not None:
            return result("reused", reason, reusable.counts, reusable.attrs["skipped"], None)

        # Each rank computes its own chunks (pending chunk i -> rank i % world) into the shared
        # partial folder; chunk files are per (split, start), so no two ranks write one file.
        mine = distributed.shard_items(pending)
        world = distributed.world_size()

        def compute() -> tuple[float | None, str | None]:
            if not mine:
                return None, None
            import torch

            # Seeded so random init ("none") gives the same trunk every run (and on every
            # rank); the caller's RNG state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                loaded = backbones.load_backbone(model, weights)
            cache = open_pixel_cache(cache_dir, pre, pixel_cache_gb)
            rate = run_chunks(
                loaded.trunk,
                manifest,
                pre,
                records,
                mine,
                partial,
                device=torch_device,
                batch_size=batch_size,
                workers=workers,
                dtype=dtype,
                dim=spec.feature_dim,
                skip_bad=skip_bad,
                progress=progress,
                label=f"extract {model}" + (f" (1 of {world} shards)" if world > 1 else ""),
                autocast=autocast_dtype(resolved),
                pixel_cache=cache,
            )
            if cache is not None:
                pixels["bytes"] = cache.size_bytes()
                pixels["hits"] = cache.hits if workers == 0 else None
            return rate, loaded.weights_sha256

        computing = time.perf_counter()
        try:
            rate, loaded_sha = distributed.everywhere(compute)  # every rank is done after this
        except BaseException:
            # A failure before any chunk (weights not found offline, a first bad image) leaves
            # no half-done extraction behind, only what a later run can resume from.
            if distributed.is_main() and not partial.has_chunks():
                partial.discard()
            raise
        if world > 1 and pending:
            images = sum(c.stop - c.start for c in pending)
            rate = images / max(time.perf_counter() - computing, 1e-9)

        def assemble() -> tuple[dict[str, int], list[str]]:
            # The chunks were computed from the files as they are now only if the dataset
            # still has the fingerprint taken before (stat-only for unchanged files).
            now = dataset_fingerprint(manifest, cache_dir=cache_dir, rehash=False)
            if now != provenance["dataset_fingerprint"]:
                raise XrayError(
                    f"{manifest.root}: images were added, removed or replaced while extracting "
                    f"{model}; the store was not written: run extract again"
                )
            sha = loaded_sha
            if sha is None and weights == "imagenet" and isinstance(spec, backbones.BackboneSpec):
                hub_file = backbones.hub_checkpoint_dir() / spec.weights_file
                sha = file_digest(hub_file) if hub_file.is_file() else None
            attrs = {
                **provenance,
                "weights_sha256": weights_sha or sha,
                "dataset_root": str(Path(manifest.root).resolve()),
                # What to re-read to check freshness when it is not dataset_root: a CSV file.
                "dataset_path": (
                    str(manifest.source) if manifest.source not in (None, manifest.root) else None
                ),
                "dataset_name": path.parent.name,
                "versions": library_versions(),
            }
            starts = {s: [c.start for c in plan if c.split == s] for s in store.SPLIT_NAMES}
            counts, skipped, _ = partial.assemble(
                attrs,
                starts,
                records,
                feature_dim=spec.feature_dim,
                dtype=dtype,
                chunk_rows=chunk_size,
            )
            return counts, skipped

        # Rank 0 joins every rank's chunks into the one store, exactly as a single process does.
        counts, skipped = distributed.on_main(assemble)
        return result(status, reason, counts, skipped, rate)


def _settle_existing(
    path: Path,
    partial: store_write.PartialStore,
    provenance: dict[str, Any],
    chunk_size: int,
    say: Callable[[str], None],
) -> tuple[Status, str, store.FeatureStore | None]:
    """Reuse an up-to-date store, or discard what no longer matches; start the partial folder.

    Returns (status so far, reason, the store when it can be reused as is).
    """
    status: Status = "built"
    reason = "no store yet"
    if path.exists():
        try:
            old = store.read_attrs(path)
            diff = store.provenance_difference(old, provenance)
            if diff is None and old.get("complete"):
                partial.discard()  # leftover of a kill between the rename and the cleanup
                # verify: bytes damaged on disk fail their checksums here, and are rebuilt.
                return "reused", "up to date", store.open_store(path, verify=True)
            diff = diff or "store incomplete"
        except store.StoreInUseError:
            raise  # intact but held elsewhere: rebuilding it would replace a store in use
        except store.StoreDamagedError as exc:
            diff = f"existing store damaged ({exc.reason})"
        except XrayError as exc:
            diff = f"existing store unreadable ({exc})"
        status, reason = "rebuilt", f"{diff}: rebuilding"
        say(f"{path}: {reason}")
        # The old store stays until the new one replaces it (os.replace in assemble): a
        # rebuild that fails (bad image, full disk, kill) leaves it as it was.
    # Chunk boundaries must match to reuse finished chunks, so the chunk size is provenance too.
    partial_provenance = {**provenance, "chunk_size": chunk_size}
    if partial.exists():
        old_partial = partial.provenance()
        diff = (
            "unreadable progress"
            if old_partial is None
            else store.provenance_difference(old_partial, partial_provenance)
        )
        if diff is not None:
            status, reason = "rebuilt", f"{diff}: rebuilding"
            say(f"{path}: discarding partial extraction, {reason}")
            partial.discard()
    partial.start(partial_provenance)
    return status, reason, None
