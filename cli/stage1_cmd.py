"""Stage 1 commands: `xray models` (the backbone registry) and `xray extract` (feature store)."""

from __future__ import annotations

from typing import Annotated

import typer

from featurestore.config import ExtractConfig

from .common import emit_table, err_console, notice, resolve_data, user_errors
from .options import (
    DEFAULT_CACHE,
    CacheDir,
    DataPath,
    Device,
    DeviceOpt,
    FeatureDtype,
    ImageSizeOpt,
    JsonFlag,
    LabelScheme,
    LabelsOpt,
    PixelCacheOpt,
    PrecisionOpt,
    RehashFlag,
    Uncertain,
    UncertainOpt,
    WeightsOpt,
)


@user_errors
def models(as_json: JsonFlag = False) -> None:
    """List the backbones: torchvision names, provider aliases (rad-dino, medsiglip, dinov2-*,
    txv-*, ...) and the timm: / hf: / txv: schemes, with feature size, parameters, whether
    the provider's library is installed and whether the weights are on disk.

    Example: `xray models --json`
    """
    from featurestore.models import describe_models
    from featurestore.models import hub_checkpoint_dir as hub_dir

    infos = describe_models()

    def on_disk(offline: bool | None) -> str:
        return "-" if offline is None else "yes" if offline else "no"

    if as_json:
        columns: tuple[str, ...] = (
            "name",
            "provider",
            "target",
            "installed",
            "family",
            "features",
            "poolings",
            "parameters",
            "weights",
            "weights_file",
            "offline",
            "licence",
        )
        rows: list[tuple[object, ...]] = [
            (m.name, m.provider, m.target, m.installed, m.family, m.feature_dim, m.poolings,
             m.parameters, m.weights_id, m.weights_file, m.offline, m.licence)
            for m in infos
        ]  # fmt: skip
        emit_table("Backbones", columns, rows, as_json=True, extra={"hub": str(hub_dir())})
        return
    from rich.markup import escape

    columns = ("name", "provider", "installed", "features", "parameters", "weights on disk")
    rows = [
        (
            m.name if m.target in ("", m.name) else f"{m.name} = {m.target}",
            m.provider,
            # Escaped: `[timm]` is an extra's name, not rich markup.
            "yes" if m.installed else escape(f"no: pip install -e '.[{m.provider}]'"),
            "-" if m.feature_dim is None else f"{m.feature_dim} ({'+'.join(m.poolings)})",
            "-" if m.parameters is None else f"{m.parameters / 1e6:.1f}M",
            on_disk(m.offline),
        )
        for m in infos
    ]
    emit_table("Backbones", columns, rows, as_json=False)
    err_console.print(
        f"torchvision weights are read from {hub_dir()}; `xray models --json` gives each "
        "provider's file or snapshot folder",
        highlight=False,
    )


_EXTRACT = ExtractConfig()


@user_errors
def extract(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone name (see `xray models`).")],
    data: DataPath = None,
    weights: WeightsOpt = _EXTRACT.weights,
    image_size: ImageSizeOpt = _EXTRACT.image_size,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward pass.")
    ] = _EXTRACT.batch_size,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Decoding processes (default: 0 on CPU, where images decode in a thread "
            "beside the model's; CPU cores - 1, at most 8, on a GPU).",
            show_default=False,
        ),
    ] = _EXTRACT.workers,
    device: DeviceOpt = Device(_EXTRACT.device),
    dtype: Annotated[
        FeatureDtype, typer.Option("--dtype", help="How the features are stored.")
    ] = FeatureDtype(_EXTRACT.dtype),
    precision: PrecisionOpt = None,
    rehash: RehashFlag = _EXTRACT.rehash,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Leave unreadable images out (listed in the store) instead of stopping.",
        ),
    ] = _EXTRACT.skip_bad,
    cache: CacheDir = DEFAULT_CACHE,
    pixel_cache_gb: PixelCacheOpt = _EXTRACT.pixel_cache_gb,
    as_json: JsonFlag = False,
    labels: LabelsOpt = LabelScheme(_EXTRACT.labels),
    uncertain: UncertainOpt = Uncertain(_EXTRACT.uncertain),
) -> None:
    """Stage 1: run a frozen backbone once per image and write its HDF5 feature store.

    Idempotent and resumable: an up-to-date store is reused at once, an interrupted one resumes,
    a store whose dataset or weights changed is rebuilt (saying why).

    Under torchrun each process extracts a shard of the images into the same store; rank 0
    assembles it and alone prints (see "More than one GPU" in docs/SPEED.md).

    Examples:

    * `xray extract --model densenet121 --data data/chest_xray`
    * `xray extract --model resnet50 --labels kermany3` (three classes, stores apart)
    * `torchrun --standalone --nproc-per-node 4 $(which xray) extract --model resnet50`
    """
    from featurestore import distributed
    from featurestore.data import load_manifest, synth_label_hint
    from featurestore.models import get_spec
    from featurestore.progress import make_progress
    from featurestore.store import extract_features

    get_spec(model)  # an unknown name fails before any data is read or generated
    with distributed.process_group(str(device)) as launch, make_progress(err_console) as progress:
        if launch is not None and launch.rank != 0:
            err_console.quiet = True  # rank 0 speaks for all: every rank's errors reach it
        # Rank 0 alone may generate the default dataset; the others then read it.
        path = distributed.on_main(lambda: resolve_data(data))
        hint = synth_label_hint(path, labels.value)
        if hint is not None:
            notice(hint)
        manifest = load_manifest(path, labels=labels.value, uncertain=uncertain.value)
        result = extract_features(
            manifest,
            model=model,
            weights=weights,
            cache_dir=cache,
            image_size=image_size,
            batch_size=batch_size,
            workers=workers,
            device=str(device),
            dtype=str(dtype),
            precision=str(precision) if precision is not None else None,
            rehash=rehash,
            skip_bad=skip_bad,
            pixel_cache_gb=pixel_cache_gb,
            progress=progress,
            notice=notice,
        )
    if launch is not None and launch.rank != 0:
        return
    if result.status == "reused":
        notice(f"reusing up-to-date store {result.path}")
    if result.skipped:
        notice(f"left out {len(result.skipped)} unreadable image(s): {', '.join(result.skipped)}")
    fields = {
        "store": str(result.path),
        "backbone": result.backbone,
        "weights": result.weights_id,
        "precision": result.precision,
        "status": result.status,
        **{f"{split} rows": n for split, n in result.counts.items()},
        "D": result.feature_dim,
        "skipped": len(result.skipped),
        "seconds": result.seconds,
        "img/s": result.images_per_second,
        "pixel cache": (
            "off"
            if result.pixel_cache_bytes is None
            else f"{result.pixel_cache_bytes / 1e9:.2f} GB"
            + (f", {result.pixel_cache_hits} hits" if result.pixel_cache_hits is not None else "")
        ),
    }
    if as_json:
        extra = {"reason": result.reason, "skipped_keys": result.skipped}
        emit_table(
            "Feature store", list(fields), [list(fields.values())], as_json=True, extra=extra
        )
    else:  # one store: a vertical table stays readable in 80 columns
        emit_table("Feature store", ("field", "value"), list(fields.items()), as_json=False)


def register(app: typer.Typer) -> None:
    """Add `models` and `extract` to the app."""
    app.command("models")(models)
    app.command("extract")(extract)
