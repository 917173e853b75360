"""Stage 1 commands: `xray models` (the backbone registry) and `xray extract` (feature store)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    CacheOption,
    DataOption,
    JsonOption,
    emit_table,
    err_console,
    notice,
    resolve_data,
    user_errors,
)


@user_errors
def models(as_json: bool = JsonOption) -> None:
    """List the registered backbones: feature size, parameters, ImageNet weights offline or not.

    Example: `xray models --json`
    """
    from featurestore.models import describe_models
    from featurestore.models import hub_checkpoint_dir as hub_dir

    infos = describe_models()
    if as_json:
        columns: tuple[str, ...] = (
            "name",
            "family",
            "features",
            "parameters",
            "weights",
            "weights_file",
            "offline",
        )
        rows: list[tuple[object, ...]] = [
            (m.name, m.family, m.feature_dim, m.parameters, m.weights_id, m.weights_file, m.offline)
            for m in infos
        ]
        emit_table("Backbones", columns, rows, as_json=True, extra={"hub": str(hub_dir())})
        return
    columns = ("name", "features", "parameters", "weights", "offline")
    rows = [
        (
            m.name,
            m.feature_dim,
            f"{m.parameters / 1e6:.1f}M",
            m.weights_id,
            "yes" if m.offline else "no",
        )
        for m in infos
    ]
    emit_table("Backbones", columns, rows, as_json=False)
    err_console.print(f"ImageNet weights are read from {hub_dir()}", highlight=False)


@user_errors
def extract(
    model: str = typer.Option(..., "--model", "-m", help="Backbone name (see `xray models`)."),
    data: Path | None = DataOption,
    weights: str = typer.Option(
        "imagenet", "--weights", help="imagenet | none (random init) | PATH to a state dict."
    ),
    image_size: int = typer.Option(224, "--image-size", help="Center-crop side in pixels."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Decoding processes (default: 0 on CPU, where torch threads use every core; "
        "CPU cores - 1, at most 8, on a GPU).",
        show_default=False,
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored features: float16 | float32."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Leave unreadable images out (listed in the store) instead of stopping.",
    ),
    cache: Path = CacheOption,
    as_json: bool = JsonOption,
) -> None:
    """Stage 1: run a frozen backbone once per image and write its HDF5 feature store.

    Idempotent and resumable: an up-to-date store is reused at once, an interrupted one resumes,
    a store whose dataset or weights changed is rebuilt (saying why).

    Under torchrun each process extracts a shard of the images into the same store; rank 0
    assembles it and alone prints (see docs/scaling.md).

    Examples:

    * `xray extract --model densenet121 --data data/chest_xray`
    * `torchrun --standalone --nproc-per-node 4 $(which xray) extract --model resnet50`
    """
    from featurestore import distributed
    from featurestore.data import load_manifest
    from featurestore.models import get_spec
    from featurestore.progress import make_progress
    from featurestore.store import extract_features

    get_spec(model)  # an unknown name fails before any data is read or generated
    with distributed.process_group(device) as launch, make_progress(err_console) as progress:
        if launch is not None and launch.rank != 0:
            err_console.quiet = True  # rank 0 speaks for all: every rank's errors reach it
        # Rank 0 alone may generate the default dataset; the others then read it.
        manifest = load_manifest(distributed.on_main(lambda: resolve_data(data)))
        result = extract_features(
            manifest,
            model=model,
            weights=weights,
            cache_dir=cache,
            image_size=image_size,
            batch_size=batch_size,
            workers=workers,
            device=device,
            dtype=dtype,
            skip_bad=skip_bad,
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
        "status": result.status,
        **{f"{split} rows": n for split, n in result.counts.items()},
        "D": result.feature_dim,
        "skipped": len(result.skipped),
        "seconds": result.seconds,
        "img/s": result.images_per_second,
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
