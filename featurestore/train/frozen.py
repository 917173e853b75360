"""Frozen mode (`xray fit-head`): a head trained on each selected feature store, one run each."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.config import FitHeadConfig, SweepConfig, TrainConfig, seeded
from featurestore.data import SPLITS
from featurestore.errors import XrayError
from featurestore.runs import (
    TRAIN_SUBSET_FILE,
    Notice,
    RunSummary,
    class_counts,
    run_config,
    summarize,
    train_size,
    write_train_subset,
)

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
        # Stores live in cache/<dataset folder>/: keep the given dataset's folder only.
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
    """The folder `xray extract` files this dataset's stores under (`store.dataset_folder`:
    the name, `-kermany3` suffixed, plus a hash of where the dataset is)."""
    from featurestore.data import load_manifest
    from featurestore.store import dataset_folder

    manifest = load_manifest(data, labels=labels, uncertain=uncertain)
    return dataset_folder(manifest.name or manifest.root.stem, manifest.source or manifest.root)


def open_checked_store(
    path: Path,
    *,
    data: Path | None,
    progress: Progress | None,
    notice: Notice,
    fingerprints: dict[Path, str] | None = None,
    cache_dir: Path | None = None,
    rehash: bool = False,
) -> FeatureStore:
    """open_store, checked against its dataset (--data, else the recorded root) when present.

    `fingerprints` memoises dataset fingerprints across stores. File digests are reused from
    `cache_dir` while each file's stat is unchanged (`rehash`: hash every file anyway).
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
        memo[key] = dataset_fingerprint(
            manifest, progress=progress, cache_dir=cache_dir, rehash=rehash
        )
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
    sweep: SweepConfig | None = None,
    train_fractions: tuple[float, ...] = _HEAD.train_fractions,
    shots: tuple[int, ...] = _HEAD.shots_per_class,
    rehash: bool = _HEAD.rehash,
) -> list[RunSummary]:
    """Train a head on each selected feature store (all complete ones by default); one run each.

    `labels` and `uncertain` (with `data`) pick the stores of that label scheme (`kermany3`: the
    three-class ones) or uncertainty policy (multi-label data).
    With `seeds` > 1 each store gets runs with seeds config.seed, config.seed + 1, ...; the
    stores are checked against their datasets once, not once per seed, at the cost of a
    `stat` per unchanged file (digests cached under `cache_dir`; `rehash` hashes them all).
    `pooling` picks one pooling of token-model stores (`cls`, `mean`; None: all they hold).
    `fuse` trains one head on the selected stores side by side (the same images in the same
    order, checked). `sweep` trains its whole grid per run and keeps the member chosen on
    validation (`head` is then ignored). `train_fractions` / `shots` make one run per training
    subset (label efficiency): nested patient subsets of train drawn with each run's seed,
    validation and test untouched.
    """
    from featurestore.models import HEAD_KINDS

    config = config or _HEAD.train
    # At precision auto (or None) heads train in float32 on CPU (`train.loop.fit`): the
    # features are computed already, and a head's tiny matmuls gain nothing from bf16.
    # config.json records what was asked, so `--config` repeats it on any device.
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
        open_checked_store(
            p,
            data=data,
            progress=progress,
            notice=say,
            fingerprints=memo,
            cache_dir=cache_dir,
            rehash=rehash,
        )
        for p in paths
    ]
    if fuse and len(stores) < 2:
        raise XrayError("fusion needs two or more stores: pass --store several times")
    groups = [stores] if fuse else [[s] for s in stores]
    picks = [_poolings(g, pooling) for g in groups]
    subsets: list[tuple[float | None, int | None]] = [(f, None) for f in sorted(train_fractions)]
    subsets += [(None, k) for k in sorted(shots)]
    return [
        fit_head_on_stores(g, head=head, config=cfg, runs_dir=runs_dir, progress=progress,
                           console=console, poolings=p, sweep=sweep, train_fraction=f,
                           shots=k)
        for cfg in repeats
        for g, p in zip(groups, picks, strict=True)
        for f, k in (subsets or [(None, None)])
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
    sweep: SweepConfig | None = None,
    train_fraction: float | None = None,
    shots: int | None = None,
) -> RunSummary:
    """Frozen mode: a head on one store's cached features; writes and returns its run folder.

    `sweep`: train that grid of heads at once and keep the one chosen on validation.
    `train_fraction` / `shots`: train on that label-efficiency subset of train (see
    `featurestore.data.train_subsets`), drawn with `config.seed`.
    """
    return fit_head_on_stores(
        [store], head=head, config=config, runs_dir=runs_dir, progress=progress,
        console=console, poolings=[pooling], sweep=sweep, train_fraction=train_fraction,
        shots=shots,
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
    sweep: SweepConfig | None = None,
    train_fraction: float | None = None,
    shots: int | None = None,
) -> RunSummary:
    """A head on one store, or on several fused side by side (`poolings[i]` of store i);
    `sweep`, `train_fraction` and `shots` as in `fit_head_on_store`."""
    import torch

    from featurestore.data import train_subsets
    from featurestore.train.sources import FeatureSource

    picks = list(poolings) if poolings is not None else [None] * len(stores)
    torch.manual_seed(config.seed)
    source = FeatureSource.from_stores(
        stores, batch_size=config.batch_size, seed=config.seed, poolings=picks
    )
    if console is not None and (empty := empty_features_warning(stores, source)):
        console.print(f"[yellow]warning:[/] {empty}", highlight=False)
    subset: dict[str, Any] = {}
    if train_fraction is not None or shots is not None:
        _, groups, labels = source.records("train")  # labels (N,), multi-label (N, L)
        (sub,) = train_subsets(
            groups,
            labels,
            fractions=() if train_fraction is None else (train_fraction,),
            shots=() if shots is None else (shots,),
            seed=config.seed,
            names=source.class_names,
        )
        if console is not None:
            for note in sub.notes:
                console.print(f"[yellow]note:[/] {note}", highlight=False)
        source = source.with_train_rows(sub.indices)
        subset = {
            "train_fraction": sub.fraction,
            "shots": sub.shots,
            "train_images": len(sub.indices),
            "train_patients": sub.patients,
            "subset_seed": config.seed,
            "subset_tag": sub.tag,
            **sub.task_record(),
        }
    # MLP sweeps multiply (B, D) by (D, G * hidden): big enough for every core; linear heads
    # and linear sweeps are the tiny matmuls one thread does best.
    threads = nullcontext() if sweep is not None and "mlp" in sweep.heads else None
    with threads or one_thread_on_cpu(config.device):
        return _fit_head(stores, picks, source, head=head, config=config, runs_dir=runs_dir,
                         progress=progress, console=console, sweep=sweep,
                         subset=subset)  # fmt: skip


def empty_features_warning(stores: Sequence[FeatureStore], source: FeatureSource) -> str | None:
    """One line when the features carry nothing: every train value 0, or every column the
    same for every train image (the head can then learn the class balance alone); else None."""
    dim = source.feature_dim
    if source.constant_features < dim:
        return None
    names = ", ".join(s.path.name for s in stores)
    what = (
        "every train feature is 0"
        if source.all_zero
        else (f"each of the {dim} features has one value for every train image")
    )
    return (
        f"{names}: {what}, so the head can learn the class balance alone (near-chance results); "
        "re-extract it (a wrong weights file, or a backbone whose output is empty?)"
    )


@contextmanager
def one_thread_on_cpu(device: str) -> Iterator[None]:
    """Heads on cached features run on one CPU thread.

    Their matmuls are tiny ((256, D) x (D, 2)): a second thread only adds synchronisation,
    measured 0.13 s vs 0.9 s per Kermany-sized epoch on a busy 2-core machine.
    """
    import torch

    if _on_cuda(device):
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


def _on_cuda(device: str) -> bool:
    from featurestore.devices import resolve_device

    return resolve_device(device).type == "cuda"


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
    sweep: SweepConfig | None = None,
    subset: dict[str, Any] | None = None,
) -> RunSummary:
    from featurestore.models import export_head
    from featurestore.runs import write_run
    from featurestore.train.head_fit import HeadTrainer, head_trainer
    from featurestore.train.sweep import SweepHead

    store = stores[0]
    subset = subset or {}
    model = "+".join(_label(s, p) for s, p in zip(stores, poolings, strict=True))
    if console is not None:
        what = f"a sweep of {len(sweep.members())} heads" if sweep else f"{head} head"
        on = f", train subset {subset['subset_tag']}" if subset else ""
        console.print(
            f"[bold]{model}[/] frozen, {what} on "
            f"{', '.join(str(s.path) for s in stores)} "
            f"({source.feature_dim} features{on}, extracted in "
            f"{'/'.join(sorted({s.precision for s in stores}))})"
        )
    write_extra: Callable[[Path], None] | None = None
    trainer: HeadTrainer
    if sweep is not None:
        trainer = SweepHead(sweep)
    else:
        trainer = head_trainer(head, source.feature_dim, len(source.class_names))
    result = trainer.fit(source, config, progress=progress, console=console)
    net = trainer.module
    if isinstance(trainer, SweepHead):
        # The run is the chosen member: its head kind, lr and weight decay go in config.json.
        head, config, write_extra = trainer.kind, trainer.chosen_config, trainer.write_files
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
        **{**train_size(source.records("train")[1]), **subset},
    )
    if subset:
        keys, groups, labels = source.records("train")
        # Multi-label: (N, L) targets, one column per finding.
        findings = source.class_names if labels.ndim == 2 else None
        files = write_extra

        def write_extra_files(folder: Path) -> None:
            write_train_subset(folder / TRAIN_SUBSET_FILE, keys, groups, labels.tolist(),
                               findings=findings)  # fmt: skip
            if files is not None:
                files(folder)

        write_extra = write_extra_files
    # The folder name says which subset/sweep it is, and a head other than the default linear
    # probe (`resnet50-mlp-frozen-s0`); config.json's `model` stays the backbone.
    other_head = head if head != "linear" else None
    tags = [t for t in (subset.get("subset_tag"), "sweep" if sweep else other_head) if t]
    path = write_run(
        runs_dir, model="-".join([model, *tags]), mode="frozen", config=doc, result=result,
        state_dict=exported.state_dict(), extra=write_extra,
    )  # fmt: skip
    return summarize(path, model, "frozen", head, result)
