"""fit_heads on real extracted stores and finetune on a tiny image set, end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_tiny_store, write_tiny_dataset

from featurestore.errors import XrayError
from featurestore.runs import TRAIN_SUBSET_FILE, load_run
from featurestore.train import TrainConfig, checkpoints, finetune, fit_heads

torch.set_num_threads(1)
HEAD = TrainConfig(epochs=4, lr=0.05, batch_size=16, patience=4, device="cpu")
TUNE = TrainConfig(epochs=1, lr=1e-3, batch_size=8, patience=2, device="cpu", backbone_lr_mult=0.1)


@pytest.fixture(scope="module")
def frozen_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dataset and its resnet18 (random init, 32 px, float32) feature store."""
    return extract_tiny_store(tmp_path_factory.mktemp("frozen"), dtype="float32")


def read_metrics(path: Path) -> dict:
    """metrics.json: it holds no wall-clock figures (those are in timing.json)."""
    return json.loads((path / "metrics.json").read_text())


def test_bare_fit_heads_trains_every_store(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from featurestore.models import export_head
    from featurestore.store import open_store

    summaries = fit_heads(cache_dir=frozen_env["cache"], runs_dir=tmp_path, config=HEAD)
    assert len(summaries) == 1
    s = summaries[0]
    assert (s.model, s.mode, s.head) == ("resnet18", "frozen", "linear")
    run = load_run(s.path)
    store = open_store(frozen_env["store"])
    assert run.config["mode"] == "frozen" and run.config["model"] == "resnet18"
    assert run.config["store"]["path"] == str(frozen_env["store"])
    assert run.config["store"]["weights_id"] == "none"
    assert run.config["dataset_fingerprint"] == store.attrs["dataset_fingerprint"]
    assert run.config["extraction_seconds"] == store.attrs["extraction_seconds"] > 0
    assert run.config["trainable_params"] == 512 * 2 + 2
    assert run.config["lr"] == HEAD.lr and run.config["positive_class"] == "PNEUMONIA"
    # best.pt = standardisation + head: applied to the stored features it gives predictions.csv.
    head = export_head(torch.nn.Linear(512, 2), torch.zeros(512), torch.ones(512))
    head.load_state_dict(torch.load(s.path / "best.pt", weights_only=True))
    test = store.split("test")
    with torch.no_grad():
        p = head(torch.from_numpy(test.features)).softmax(1)[:, 1].numpy()
    rows = run.split_predictions("test")
    assert rows["key"].tolist() == test.keys
    assert np.allclose(rows["probability"], p, atol=1e-6)


def test_same_seed_same_metrics(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = replace(HEAD, epochs=3)
    a = fit_heads(cache_dir=frozen_env["cache"], runs_dir=tmp_path, head="mlp", config=config)
    b = fit_heads(cache_dir=frozen_env["cache"], runs_dir=tmp_path, head="mlp", config=config)
    assert a[0].path != b[0].path
    assert read_metrics(a[0].path) == read_metrics(b[0].path)
    assert "-mlp-frozen-s0" in a[0].path.name  # the folder names a head other than linear


def test_logreg_head_writes_the_same_run_folder(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (summary,) = fit_heads(store=frozen_env["store"], runs_dir=tmp_path, head="logreg", config=HEAD)
    run = load_run(summary.path)
    assert run.config["head"] == "logreg" and run.config["logreg_C"] > 0
    assert summary.path.name.endswith("-logreg-frozen-s0")
    assert run.metrics["test"]["at_threshold"]["n"] == 8
    # Issue 13.16: the history names what was swept: a C column, no learning rate.
    assert list(run.history["C"]) == run.config["logreg_Cs"]
    assert np.isnan(run.history["lr"]).all()
    header = (summary.path / "history.csv").read_text().splitlines()[0]
    assert header.endswith(",C") and "nan" not in (summary.path / "history.csv").read_text()


def test_store_selection_errors(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(XrayError, match="no complete feature store for densenet121"):
        fit_heads(model="densenet121", cache_dir=frozen_env["cache"], runs_dir=tmp_path)
    with pytest.raises(XrayError, match="either --model or --store"):
        fit_heads(model="resnet18", store=frozen_env["store"], runs_dir=tmp_path)
    with pytest.raises(XrayError, match="run `xray extract --model resnet50`"):
        fit_heads(cache_dir=tmp_path / "empty", runs_dir=tmp_path)
    with pytest.raises(XrayError, match="unknown --head"):
        fit_heads(cache_dir=frozen_env["cache"], runs_dir=tmp_path, head="svm")


def test_stale_store_is_refused(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    extra = frozen_env["data"] / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    extra.write_bytes(
        (frozen_env["data"] / "test" / "NORMAL").glob("*.jpeg").__next__().read_bytes()
    )
    try:
        with pytest.raises(XrayError, match="no longer matches the dataset"):
            fit_heads(data=frozen_env["data"], cache_dir=frozen_env["cache"], runs_dir=tmp_path)
        # Without --data the store is checked against the folder it recorded.
        with pytest.raises(XrayError, match="no longer matches the dataset"):
            fit_heads(cache_dir=frozen_env["cache"], runs_dir=tmp_path)
    finally:
        extra.unlink()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "cache" / "x" / "resnet18-none-32px.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as fh:
        fh.attrs["format_version"] = 1
        fh.attrs["complete"] = False
    with pytest.raises(XrayError, match="incomplete"):
        fit_heads(store=path, runs_dir=tmp_path / "runs")


@pytest.mark.slow
def test_finetune_writes_a_complete_run(tmp_path: Path) -> None:
    from featurestore.data import load_manifest

    data = write_tiny_dataset(tmp_path / "chest_xray")
    runs = tmp_path / "runs"
    summary = finetune(
        data=data, model="resnet18", weights="none", image_size=32, runs_dir=runs, config=TUNE
    )
    run = load_run(summary.path)
    assert summary.path.name.endswith("-resnet18-finetune-s0")
    assert run.config["trainable_params"] == run.config["total_params"] > 11_000_000
    assert run.config["freeze"] == "none" and run.config["weights_id"] == "none"
    # What forward+backward computed in is recorded beside what was asked for.
    assert run.config["precision"] == TUNE.precision
    assert run.config["resolved_precision"] in ("fp32", "bf16")
    manifest = load_manifest(data)
    assert run.split_predictions("test")["key"].tolist() == [r.key for r in manifest.split("test")]
    state = torch.load(summary.path / "best.pt", weights_only=True)
    assert any(k.startswith("trunk.layer4.") for k in state) and "head.weight" in state
    # Issue 14.8: the resume checkpoint is cleaned up, and so is the empty .inprogress folder.
    assert not (runs / ".inprogress").exists()
    # The "fixed feature extractor the slow way": only the head trains.
    frozen = finetune(
        data=data, model="resnet18", weights="none", image_size=32, freeze="head-only",
        runs_dir=runs, config=TUNE,
    )  # fmt: skip
    assert load_run(frozen.path).config["trainable_params"] == 512 * 2 + 2


class Interrupt(Exception):
    """Stands in for a kill right after the first epoch's checkpoint."""


@pytest.mark.slow
def test_finetune_resume_gives_the_uninterrupted_result(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data = write_tiny_dataset(tmp_path / "chest_xray")
    config = replace(TUNE, epochs=2, patience=5)
    kw = {"data": data, "model": "resnet18", "weights": "none", "image_size": 32, "config": config}
    straight = finetune(runs_dir=tmp_path / "a", **kw)  # type: ignore[arg-type]

    with pytest.raises(XrayError, match="nothing to resume"):
        finetune(runs_dir=tmp_path / "b", resume=True, **kw)  # type: ignore[arg-type]
    real_save = checkpoints.save_checkpoint

    def save_then_die(path: Path, payload: dict) -> None:
        real_save(path, payload)
        raise Interrupt

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        finetune(runs_dir=tmp_path / "b", **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    (work,) = (tmp_path / "b" / ".inprogress").iterdir()
    assert (work / "last.pt").is_file() and not list((tmp_path / "b").glob("2*"))
    resumed = finetune(runs_dir=tmp_path / "b", resume=True, **kw)  # type: ignore[arg-type]
    assert read_metrics(resumed.path) == read_metrics(straight.path)
    assert load_run(resumed.path).config["resumed"] is True


@pytest.mark.slow
def test_real_radiographs_extract_then_fit_head_beats_the_majority_baseline(
    realsample: Path, tmp_path: Path
) -> None:
    from sklearn.metrics import roc_auc_score

    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    torch.manual_seed(0)
    extract_features(
        load_manifest(realsample), model="resnet18", weights="none", cache_dir=tmp_path / "cache",
        image_size=64, workers=0,
    )  # fmt: skip
    (summary,) = fit_heads(
        data=realsample, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
        config=replace(HEAD, epochs=20, lr=1e-3),
    )  # fmt: skip
    run = load_run(summary.path)
    test = run.split_predictions("test")
    assert len(test["key"]) == 23
    # The majority-class baseline scores AUC 0.5 whatever its accuracy. (0.99 before the one
    # intensity rule, when raw brightness let random features ride the NORMAL-vs-PNEUMONIA size
    # shortcut; with each image stretched to its own range it measured 0.74.)
    assert run.metrics["test"]["at_threshold"]["roc_auc"] > 0.65
    assert run.metrics["test"]["at_0.5"]["roc_auc"] == pytest.approx(
        roc_auc_score(test["label"], test["probability"]), abs=1e-12
    )


@pytest.mark.slow
def test_real_radiographs_finetune_one_epoch(realsample: Path, tmp_path: Path) -> None:
    summary = finetune(
        data=realsample, model="resnet18", weights="none", image_size=32,
        runs_dir=tmp_path, config=TUNE,
    )  # fmt: skip
    run = load_run(summary.path)
    assert run.metrics["epochs_run"] == 1 and run.metrics["test"]["at_0.5"]["n"] == 23
    assert (summary.path / "plots" / "curves.png").is_file()


def test_store_whose_dataset_is_gone_is_used_with_a_notice(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import h5py

    copy = tmp_path / "moved.h5"
    shutil.copy(frozen_env["store"], copy)
    with h5py.File(copy, "r+") as fh:
        fh.attrs["dataset_root"] = str(tmp_path / "gone")
    notices: list[str] = []
    (summary,) = fit_heads(
        store=copy, runs_dir=tmp_path / "runs", config=replace(HEAD, epochs=1),
        notice=notices.append,
    )  # fmt: skip
    assert any("freshness is not checked" in n for n in notices)
    assert load_run(summary.path).config["store"]["path"] == str(copy)


def test_pooling_and_fusion_of_provider_stores(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("timm")
    from featurestore.data import load_manifest
    from featurestore.store import extract_features, open_store

    torch.manual_seed(0)
    vit = extract_features(
        load_manifest(frozen_env["data"]), model="timm:vit_tiny_patch16_224", weights="none",
        cache_dir=tmp_path / "cache", image_size=32, workers=0, dtype="float32",
    ).path  # fmt: skip
    (cls,) = fit_heads(store=vit, runs_dir=tmp_path / "runs", config=HEAD, pooling="cls")
    doc = load_run(cls.path).config
    assert cls.model == doc["model"] == "timm:vit_tiny_patch16_224-cls"
    assert doc["backbone_name"] == "timm:vit_tiny_patch16_224" and doc["pooling"] == "cls"
    assert doc["feature_columns"] == [0, 192]
    state = torch.load(cls.path / "best.pt", weights_only=True)
    assert state["head.weight"].shape == (2, 192)  # the head read the class token only
    with pytest.raises(XrayError, match="no selected store holds it"):
        fit_heads(store=frozen_env["store"], runs_dir=tmp_path / "runs", pooling="cls")

    # Fusion: resnet18 (512) next to the ViT's patch mean (192), rows matched by key.
    (fused,) = fit_heads(
        store=[frozen_env["store"], vit], fuse=True, pooling="mean", runs_dir=tmp_path / "runs",
        config=HEAD,
    )  # fmt: skip
    doc = load_run(fused.path).config
    assert fused.model == "resnet18+timm:vit_tiny_patch16_224-mean"
    assert [f["columns"] for f in doc["fused"]] == [[0, 512], [192, 384]]
    assert [f["backbone"] for f in doc["fused"]] == ["resnet18", "timm:vit_tiny_patch16_224"]
    state = torch.load(fused.path / "best.pt", weights_only=True)
    assert state["head.weight"].shape == (2, 512 + 192)
    with pytest.raises(XrayError, match="fusion needs two or more stores"):
        fit_heads(store=vit, fuse=True, runs_dir=tmp_path / "runs")
    # A store of another dataset cannot be fused: its fingerprint differs.
    other = write_tiny_dataset(tmp_path / "other", seed=3)
    alien = extract_features(
        load_manifest(other), model="resnet18", weights="none", cache_dir=tmp_path / "c2",
        image_size=32, workers=0,
    ).path  # fmt: skip
    assert (
        open_store(alien).attrs["dataset_fingerprint"]
        != open_store(vit).attrs["dataset_fingerprint"]
    )
    with pytest.raises(XrayError, match=r"cannot fuse .* dataset fingerprint differ"):
        fit_heads(store=[vit, alien], fuse=True, runs_dir=tmp_path / "runs", config=HEAD)


def test_finetune_a_vit_with_blocks_frozen(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    data = write_tiny_dataset(tmp_path / "chest_xray")
    summary = finetune(
        data=data, model="timm:vit_tiny_patch16_224", weights="none", image_size=32,
        freeze="model.blocks.10", runs_dir=tmp_path / "runs", config=TUNE,
    )  # fmt: skip
    run = load_run(summary.path)
    # Only the last block, the final norm and the head (2 x 384 + 2) train.
    # norms 2 x 384, qkv 192 x 576 + 576, proj 192 x 192 + 192, mlp 2 x 192 x 768 + 768 + 192
    block = 2 * 384 + (192 * 576 + 576) + (192 * 192 + 192) + (2 * 192 * 768 + 768 + 192)
    assert run.config["trainable_params"] == block + 2 * 192 + 2 * 384 + 2
    assert summary.path.name.endswith("-timm_vit_tiny_patch16_224-finetune-s0")


def test_label_efficiency_runs_train_on_nested_patient_subsets(frozen_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from featurestore.store import open_store

    store = open_store(frozen_env["store"])
    train, val, test = (store.split(s) for s in ("train", "val", "test"))
    summaries = fit_heads(
        cache_dir=frozen_env["cache"], runs_dir=tmp_path, config=HEAD, seeds=2,
        train_fractions=(0.5, 1.0), shots=(2,),
    )  # fmt: skip
    assert len(summaries) == 6  # 2 seeds x (2 fractions + 1 shots)
    runs = [load_run(s.path) for s in summaries]
    by_seed: dict[int, dict[str, object]] = {}
    held_out = set(val.groups) | set(test.groups)
    for run in runs:
        cfg = run.config
        counts = cfg["class_counts"]
        assert cfg["train_images"] == sum(counts["train"].values())
        assert counts["val"] == {c: int((val.labels == i).sum()) for i, c in
                                 enumerate(store.class_names)}  # fmt: skip
        assert run.split_predictions("test")["key"].tolist() == test.keys  # test untouched
        by_seed.setdefault(cfg["seed"], {})[cfg["subset_tag"]] = cfg
        assert not held_out & set(train.groups)  # the store's own carve is patient-disjoint
        if cfg["shots"] is not None:
            assert set(counts["train"].values()) == {2}
    for seed, tags in by_seed.items():
        assert set(tags) == {"f0.5", "f1", "k2"}
        half, full = tags["f0.5"], tags["f1"]
        assert half["train_images"] < full["train_images"] == len(train.labels)  # type: ignore[index]
        assert half["train_fraction"] == 0.5 and half["subset_seed"] == seed  # type: ignore[index]
    # From the run folders alone: train_subset.csv is nested per seed and shares no patient
    # with the val and test rows of predictions.csv.
    subsets: dict[tuple[int, str], set[str]] = {}
    for run in runs:
        with (run.path / TRAIN_SUBSET_FILE).open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == run.config["train_images"]
        held = set(run.predictions["patient"].tolist())
        assert not held & {r["patient"] for r in rows}
        subsets[(run.config["seed"], run.config["subset_tag"])] = {r["key"] for r in rows}
    for seed in by_seed:
        assert subsets[(seed, "f0.5")] < subsets[(seed, "f1")]
        assert subsets[(seed, "k2")] <= subsets[(seed, "f1")]
