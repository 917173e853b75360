"""Frozen mode (`xray fit-head`): a head trained on each selected feature store, one run each."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.config import FitHeadConfig, TrainConfig, seeded
from featurestore.data import SPLITS
from featurestore.errors import XrayError
from featurestore.runs import Notice, RunSummary, class_counts, run_config, summarize

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.store import FeatureStore
    from featurestore.train.sources import FeatureSource

_HEAD = FitHeadConfig()


def select_stores(
    *,
    cache_dir: Path,
    model: str | None,
    store: Path | Sequence[Path] | None,
    data: Path | None,
    labels: str = "as-given",
    uncertain: str = "ignore",
) -> list[Path]:
    """The stores `fit-head` trains on: --store, else the cache's complete stores (of --model)."""
    from featurestore.store import find_stores, read_attrs

    stores = [store] if isinstance(store, (str, Path)) else list(store or [])
    if model is not None and stores:
        raise XrayError("pass either --model or --store, not both")
    if stores:
        return [Path(s) for s in stores]
    paths = find_stores(cache_dir)
    if data is not None:
        # Stores live in cache/<dataset name>/: keep the given dataset's folder only.
        paths = [p for p in paths if p.parent.name == _dataset_name(data, labels, uncertain)]
    if model is not None:
        from featurestore.models import get_spec, is_provider_name

        # `hf:microsoft/rad-dino` and `txv:all` are filed under their aliases.
        model = get_spec(model).name if is_provider_name(model) else model
        paths = [p for p in paths if read_attrs(p).get("backbone") == model]
    if not paths:
        what = f" for {model}" if model else ""
        hint = model or "resnet50"
        raise XrayError(
            f"no complete feature store{what} in {cache_dir}: run `xray extract --model {hint}` "
            "first (or pass --store FILE)"
        )
    return paths


def _dataset_name(data: Path, labels: str = "as-given", uncertain: str = "ignore") -> str:
    """The folder name `xray extract` files this dataset's stores under (`-kermany3` suffixed)."""
    from featurestore.data import load_manifest

    manifest = load_manifest(data, labels=labels, uncertain=uncertain)
    return manifest.name or manifest.root.stem


def open_checked_store(
    path: Path,
    *,
    data: Path | None,
    progress: Progress | None,
    notice: Notice,
    fingerprints: dict[Path, str] | None = None,
) -> FeatureStore:
    """open_store, checked against its dataset (--data, else the recorded root) when present.

    `fingerprints` memoises dataset fingerprints (they hash every file) across stores.
    """
    from featurestore.data import dataset_fingerprint, load_manifest
    from featurestore.store import open_store, read_attrs

    if not Path(path).is_file():
        raise XrayError(f"no feature store at {path}: run `xray extract` first")
    attrs = read_attrs(path)
    # dataset_path is the CSV itself for CSV datasets (dataset_root is its folder).
    recorded = str(attrs.get("dataset_path") or attrs.get("dataset_root") or "")
    root = data if data is not None else Path(recorded)
    if data is None and (not recorded or not root.exists()):
        notice(f"dataset of {path.name} not found ({root}): its freshness is not checked")
        return open_store(path)
    memo = fingerprints if fingerprints is not None else {}
    # The store says how its labels were read (kermany3 relabels from file names): same here.
    scheme = str(attrs.get("label_scheme") or "as-given")
    key = root.resolve() if scheme == "as-given" else Path(f"{root.resolve()}#{scheme}")
    if key not in memo:
        # The fingerprint covers files, labels and given splits, not the validation carving.
        manifest = load_manifest(root, labels=scheme)
        memo[key] = dataset_fingerprint(manifest, progress=progress)
    return open_store(path, expect_fingerprint=memo[key])


def fit_heads(
    *,
    model: str | None = None,
    store: Path | Sequence[Path] | None = None,
    data: Path | None = None,
    cache_dir: Path = Path("cache"),
    runs_dir: Path = Path("runs"),
    head: str = _HEAD.head,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
    seeds: int = _HEAD.seeds,
    labels: str = "as-given",
    uncertain: str = "ignore",
    pooling: str | None = _HEAD.pooling,
    fuse: bool = _HEAD.fuse,
) -> list[RunSummary]:
    """Train a head on each selected feature store (all complete ones by default); one run each.

    `labels` and `uncertain` (with `data`) pick the stores of that label scheme (`kermany3`: the
    three-class ones) or uncertainty policy (multi-label data).
    With `seeds` > 1 each store gets runs with seeds config.seed, config.seed + 1, ...; the
    stores are checked against their datasets once, not once per seed. `pooling` picks one
    pooling of token-model stores (`cls`, `mean`; None: all they hold). `fuse` trains one head
    on the selected stores side by side (the same images in the same order, checked).
    """
    from featurestore.models import HEAD_KINDS

    config = config or _HEAD.train
    say = notice or (lambda _msg: None)
    repeats = seeded(config, seeds)  # refuses seeds < 1 before any store is read
    if head not in HEAD_KINDS:
        raise XrayError(f"unknown --head {head!r}; choose one of: {', '.join(HEAD_KINDS)}")
    paths = select_stores(
        cache_dir=cache_dir, model=model, store=store, data=data, labels=labels, uncertain=uncertain
    )
    # Check every store before training any: a stale one stops the command up front.
    memo: dict[Path, str] = {}
    stores = [
        open_checked_store(p, data=data, progress=progress, notice=say, fingerprints=memo)
        for p in paths
    ]
    if fuse and len(stores) < 2:
        raise XrayError("fusion needs two or more stores: pass --store several times")
    groups = [stores] if fuse else [[s] for s in stores]
    picks = [_poolings(g, pooling) for g in groups]
    return [
        fit_head_on_stores(g, head=head, config=cfg, runs_dir=runs_dir, progress=progress,
                           console=console, poolings=p)
        for cfg in repeats
        for g, p in zip(groups, picks, strict=True)
    ]  # fmt: skip


def _poolings(stores: Sequence[FeatureStore], pooling: str | None) -> list[str | None]:
    """`pooling` for each store that has it, all columns for the others; one must have it."""
    if pooling is None or pooling == "all":
        return [None] * len(stores)
    picks = [pooling if pooling in s.poolings else None for s in stores]
    if all(p is None for p in picks):
        names = sorted({k for s in stores for k in s.poolings})
        raise XrayError(
            f"--pooling {pooling}: no selected store holds it (they hold {', '.join(names)})"
        )
    return picks


def fit_head_on_store(
    store: FeatureStore,
    *,
    head: str,
    config: TrainConfig,
    runs_dir: Path,
    progress: Progress | None = None,
    console: Console | None = None,
    pooling: str | None = None,
) -> RunSummary:
    """Frozen mode: a head on one store's cached features; writes and returns its run folder."""
    return fit_head_on_stores(
        [store], head=head, config=config, runs_dir=runs_dir, progress=progress,
        console=console, poolings=[pooling],
    )  # fmt: skip


def fit_head_on_stores(
    stores: Sequence[FeatureStore],
    *,
    head: str,
    config: TrainConfig,
    runs_dir: Path,
    progress: Progress | None = None,
    console: Console | None = None,
    poolings: Sequence[str | None] | None = None,
) -> RunSummary:
    """A head on one store, or on several fused side by side (`poolings[i]` of store i)."""
    import torch

    from featurestore.train.sources import FeatureSource

    picks = list(poolings) if poolings is not None else [None] * len(stores)
    torch.manual_seed(config.seed)
    source = FeatureSource.from_stores(
        stores, batch_size=config.batch_size, seed=config.seed, poolings=picks
    )
    with one_thread_on_cpu(config.device):
        return _fit_head(stores, picks, source, head=head, config=config, runs_dir=runs_dir,
                         progress=progress, console=console)  # fmt: skip


@contextmanager
def one_thread_on_cpu(device: str) -> Iterator[None]:
    """Heads on cached features run on one CPU thread.

    Their matmuls are tiny ((256, D) x (D, 2)): a second thread only adds synchronisation,
    measured 0.13 s vs 0.9 s per Kermany-sized epoch on a busy 2-core machine.
    """
    import torch

    from featurestore.devices import resolve_device

    if resolve_device(device).type == "cuda":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _label(store: FeatureStore, pooling: str | None) -> str:
    """The model name a run records: the backbone, `-<pooling>` when one was picked."""
    return store.backbone + (f"-{pooling}" if pooling else "")


def _fit_head(
    stores: Sequence[FeatureStore],
    poolings: Sequence[str | None],
    source: FeatureSource,
    *,
    head: str,
    config: TrainConfig,
    runs_dir: Path,
    progress: Progress | None,
    console: Console | None,
) -> RunSummary:
    from featurestore.models import export_head
    from featurestore.runs import write_run
    from featurestore.train.head_fit import head_trainer

    store = stores[0]
    model = "+".join(_label(s, p) for s, p in zip(stores, poolings, strict=True))
    if console is not None:
        console.print(
            f"[bold]{model}[/] frozen, {head} head on "
            f"{', '.join(str(s.path) for s in stores)} "
            f"({source.feature_dim} features)"
        )
    trainer = head_trainer(head, source.feature_dim, len(source.class_names))
    result = trainer.fit(source, config, progress=progress, console=console)
    net = trainer.module
    exported = export_head(net.cpu(), source.mean, source.std)
    doc = run_config(
        config,
        net,
        mode="frozen",
        backbone=model,
        head=head,
        class_names=store.class_names,
        positive_index=store.positive_index,
        dataset_fingerprint=store.attrs.get("dataset_fingerprint"),
        label_scheme=store.label_scheme,
        task=store.task,
        store={"path": str(store.path), **store.attrs},
        backbone_name=store.backbone,
        # Which columns of the store the head reads (predict slices the trunk output alike).
        pooling=poolings[0],
        feature_columns=list(store.columns(poolings[0])),
        # Fusion: every store's provenance and columns, in the order they were concatenated.
        fused=(
            [
                {"path": str(s.path), "pooling": p, "columns": list(s.columns(p)), **s.attrs}
                for s, p in zip(stores, poolings, strict=True)
            ]
            if len(stores) > 1
            else None
        ),
        extraction_seconds=sum(float(s.attrs.get("extraction_seconds") or 0) for s in stores)
        if len(stores) > 1
        else store.attrs.get("extraction_seconds"),
        # Labels already in memory: re-reading the store would load every feature again.
        class_counts=class_counts(store.class_names, {s: source.records(s)[2] for s in SPLITS}),
        checkpoint="best.pt: standardize.{mean,std} then head.* over backbone features",
        **trainer.record(),
    )
    path = write_run(
        runs_dir, model=model, mode="frozen", config=doc, result=result,
        state_dict=exported.state_dict(),
    )  # fmt: skip
    return summarize(path, model, "frozen", head, result)
