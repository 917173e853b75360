"""What a study run will do: the stores to extract, the runs to train, the runs to reuse.

A run is keyed by a hash of its arm's resolved configuration, its seed, its label-efficiency
point, the dataset's fingerprint and the store it trains on (backbone x extraction settings).
The study folder's ledger (`ledger.json`) maps keys to run folders: a key found there whose
folder is complete is reused, any other is trained. An arm's name is not part of the key, so
renaming an arm reuses its runs; changing any of its options retrains that arm alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import XrayError
from featurestore.runs import config_hash, is_complete_run
from featurestore.study.file import Arm, Study

if TYPE_CHECKING:
    from featurestore.data import Manifest

LEDGER = "ledger.json"
"""Run key -> run folder (relative to the study folder), for every run the study trained."""
RECORD = "study.json"
"""The study file's hash, the data and every run the last `study run` used."""
RUNS = "runs"
"""Where the study's run folders are written, inside the study folder."""


@dataclass(frozen=True)
class PlannedStore:
    """A feature store the frozen arms train on (extracted once for all of them)."""

    model: str
    extract: Any
    """ExtractConfig (weights resolved)."""
    labels: str
    uncertain: str
    key: str
    train: bool
    """Some run on it must be trained (else it is not even opened)."""


@dataclass(frozen=True)
class PlannedRun:
    """One arm x seed (x label-efficiency point)."""

    arm: Arm
    seed: int
    point: float | int | None
    """A label-efficiency arm's fraction (train_fractions) or shots (shots_per_class)."""
    key: str
    payload: dict[str, Any]
    """What the key hashes (recorded in the ledger, so a changed key can be diffed)."""
    reuse: Path | None
    """The complete run folder that already holds this run, or None: train it."""
    store: str | None
    """Key of the PlannedStore of a frozen arm."""

    @property
    def label(self) -> str:
        """`arm seed 1` / `arm seed 1 fraction 0.25`."""
        text = f"{self.arm.name} seed {self.seed}"
        if self.point is not None:
            what = "fraction" if self.arm.train_fractions else "shots"
            text += f" {what} {self.point:g}"
        return text


@dataclass(frozen=True)
class Plan:
    """Every store and run of a study, and what is already done."""

    study: Study
    data: Path
    task: str
    fingerprints: dict[str, str]
    """`labels/uncertain` -> dataset fingerprint."""
    stores: list[PlannedStore]
    runs: list[PlannedRun]
    random_init: bool
    """Some arm's backbone is randomly initialised (weights none)."""

    @property
    def to_train(self) -> list[PlannedRun]:
        """Runs without a complete folder for their key."""
        return [r for r in self.runs if r.reuse is None]

    def lines(self) -> list[str]:
        """The plan in words: one line per store and per run."""
        out = [
            f"study {self.study.name} ({self.study.source}, sha256 {self.study.sha256[:12]}): "
            f"{len(self.study.arms)} arms x {len(self.study.seeds)} seeds, {self.task} data "
            f"{self.data}, folder {self.study.folder}"
        ]
        for s in self.stores:
            what = "extract (or reuse the store in cache)" if s.train else "not needed"
            out.append(
                f"  store {s.model} {s.extract.weights} {s.extract.image_size}px "
                f"precision {s.extract.precision or 'default'}: {what}"
            )
        for r in self.runs:
            out.append(
                f"  {r.label}: "
                + (f"reuse {r.reuse} (config unchanged, run complete)" if r.reuse else "train")
            )
        out.append(
            f"{len(self.to_train)} to train, {len(self.runs) - len(self.to_train)} to reuse, "
            f"{len(self.study.questions)} declared questions"
        )
        return out


def read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    """The study folder's ledger: key -> {path, arm, seed, point, payload}; {} when new.

    Raises:
        XrayError: the ledger is not valid JSON (edited by hand?).
    """
    path = folder / LEDGER
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return dict(doc["runs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise XrayError(f"{path} is malformed ({exc}); remove it to retrain the study") from None


def resolve_study_weights(models: tuple[str, ...], weights: str) -> str:
    """ "auto" -> "imagenet" when every model's ImageNet file is cached offline, else "none"."""
    from featurestore.models import imagenet_available

    if weights != "auto":
        return weights
    return "imagenet" if all(imagenet_available(m) for m in models) else "none"


def _weights(arm: Arm) -> Arm:
    """The arm with weights "auto" resolved (ImageNet when cached offline, else none)."""
    if arm.extract is not None and arm.extract.weights == "auto":
        w = resolve_study_weights((arm.model,), "auto")
        return replace(arm, extract=replace(arm.extract, weights=w))
    if arm.finetune is not None and arm.finetune.weights == "auto":
        w = resolve_study_weights((arm.model,), "auto")
        return replace(arm, finetune=replace(arm.finetune, weights=w))
    return arm


def arm_weights(arm: Arm) -> str:
    """The weights the arm's backbone starts from."""
    cfg = arm.extract if arm.extract is not None else arm.finetune
    return str(cfg.weights) if cfg is not None else "none"


def load_manifests(study: Study, data: Path) -> dict[str, Manifest]:
    """One manifest per label scheme x uncertain policy the arms read."""
    from featurestore.data import load_manifest

    out: dict[str, Manifest] = {}
    for arm in study.arms:
        scheme = f"{arm.labels}/{arm.uncertain}"
        if scheme not in out:
            out[scheme] = load_manifest(data, labels=arm.labels, uncertain=arm.uncertain)
    return out


def _check_metrics(study: Study, manifest: Manifest) -> None:
    """Every question's metric is one the data's task has (one line naming those it has)."""
    from featurestore.compare.questions import check_metric
    from featurestore.tasks import Task

    task = Task.from_classes(manifest.class_names, multilabel=manifest.task == "multilabel")
    for q in study.questions:
        try:
            check_metric(task, q.metric)
        except XrayError as exc:
            raise XrayError(f"{study.source}: question {q.name!r}: {exc}") from None


def make_plan(
    study: Study,
    data: Path,
    *,
    manifests: dict[str, Manifest] | None = None,
    write_digests: bool = True,
) -> Plan:
    """The study's plan against its folder's ledger.

    `write_digests` False (a dry run) hashes every image instead of reusing and recording
    digests under the cache folder, so nothing is written.

    Raises:
        XrayError: an unknown backbone, unreadable data, a malformed ledger, a question's
            metric the data's task does not have.
    """
    from featurestore.data import dataset_fingerprint
    from featurestore.models import get_spec

    arms = [_weights(a) for a in study.arms]
    for arm in arms:
        try:
            get_spec(arm.model)
        except XrayError as exc:
            raise XrayError(f"{study.source}: arm {arm.name!r}: {exc}") from None
    manifests = manifests if manifests is not None else load_manifests(study, data)
    cache = study.cache if write_digests else None
    fingerprints = {
        scheme: dataset_fingerprint(m, cache_dir=cache) for scheme, m in manifests.items()
    }
    tasks = {m.task for m in manifests.values()}
    if len(tasks) != 1:
        raise XrayError(
            f"{study.source}: the arms read the data as different tasks ({', '.join(tasks)}); "
            "one study compares runs of one task"
        )
    task = tasks.pop()
    _check_metrics(study, next(iter(manifests.values())))
    ledger = read_ledger(study.folder)
    stores: dict[str, dict[str, Any]] = {}
    runs: list[PlannedRun] = []
    for arm in arms:
        scheme = f"{arm.labels}/{arm.uncertain}"
        store_key = None
        identity: dict[str, Any] | None = None
        if arm.extract is not None:
            identity = {"model": arm.model, **asdict(arm.extract), "dataset": fingerprints[scheme]}
            store_key = config_hash(identity)
            stores.setdefault(store_key, {"arm": arm, "train": False})
        points: list[float | int | None] = list(arm.train_fractions or arm.shots_per_class) or [
            None
        ]
        for seed in study.seeds:
            for point in points:
                payload = {
                    "arm": arm.resolved(),
                    "seed": seed,
                    "point": point,
                    "dataset": fingerprints[scheme],
                    "store": identity,
                }
                key = config_hash(payload)
                entry = ledger.get(key)
                reuse = None
                if entry is not None and is_complete_run(study.folder / entry["path"]):
                    reuse = study.folder / entry["path"]
                if reuse is None and store_key is not None:
                    stores[store_key]["train"] = True
                runs.append(PlannedRun(arm, seed, point, key, payload, reuse, store_key))
    planned_stores = [
        PlannedStore(
            v["arm"].model, v["arm"].extract, v["arm"].labels, v["arm"].uncertain, k, v["train"]
        )
        for k, v in stores.items()
    ]
    return Plan(
        study=replace(study, arms=tuple(arms)),
        data=data,
        task=task,
        fingerprints=fingerprints,
        stores=planned_stores,
        runs=runs,
        random_init=any(arm_weights(a) == "none" for a in arms),
    )
