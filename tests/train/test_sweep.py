"""Head sweeps: one batched module, members equal to heads trained alone, chosen on val."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_tiny_store

from featurestore.config import SweepConfig, parse_sweep
from featurestore.errors import XrayError
from featurestore.models import StackedHeads, build_head
from featurestore.runs import load_run
from featurestore.train import FeatureSource, TrainConfig, fit, fit_heads, fit_sweep

torch.set_num_threads(1)
CFG = TrainConfig(epochs=6, lr=1e-2, batch_size=32, patience=3, device="cpu")


def blobs(seed: int = 0, dim: int = 16) -> FeatureSource:
    """Two weakly separated Gaussian classes: train 200, val 80, test 80 rows."""
    rng = np.random.default_rng(seed)
    feats, labels = {}, {}
    for split, n in (("train", 200), ("val", 80), ("test", 80)):
        y = rng.integers(0, 2, n)
        feats[split] = (rng.normal(size=(n, dim)) + 0.5 * y[:, None]).astype(np.float32)
        labels[split] = y
    return FeatureSource.from_arrays(feats, labels, batch_size=32, seed=0)


def test_a_batched_member_matches_the_same_head_trained_alone() -> None:
    source = blobs()
    grid = SweepConfig(lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-2), heads=("linear",))
    swept = fit_sweep(source, CFG, grid)
    for g, (_, lr, wd) in enumerate(grid.members()):
        torch.manual_seed(CFG.seed)
        alone = fit(build_head("linear", 16, 2), source, CFG.__class__(**{**CFG.__dict__,
                    "lr": lr, "weight_decay": wd}))  # fmt: skip
        row = swept.rows[g]
        assert row["best_epoch"] == alone.best_epoch
        assert row["epochs_run"] == alone.epochs_run
        best = alone.history[alone.best_epoch - 1]
        assert row["val_loss"] == pytest.approx(best["val_loss"], abs=1e-5)
        assert row["val_auc"] == pytest.approx(best["val_auc"], abs=1e-9)
        if row["chosen"]:
            w = swept.head.state_dict()["weight"]
            assert torch.allclose(w, alone.best_state["weight"], atol=1e-5)
            # The chosen member's history is the single head's history, row for row.
            for a, b in zip(swept.result.history, alone.history, strict=True):
                assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
                assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)


def test_mlp_members_export_to_ordinary_heads() -> None:
    stack = StackedHeads("mlp", 16, 2, 3, seeds=[0, 1, 2], hidden=8)
    x = torch.randn(20, 16)
    stack.train()
    stack(x)  # moves the running statistics away from their start
    stack.eval()
    with torch.no_grad():
        out = stack(x)  # (B, G, C)
        for g in range(3):
            head = stack.export(g).eval()
            assert torch.allclose(head(x), out[:, g], atol=1e-5)
    torch.manual_seed(1)
    fresh = build_head("mlp", 16, 2, hidden=8)
    assert torch.equal(StackedHeads("mlp", 16, 2, 1, seeds=[1], hidden=8).export(0).net[0].weight,
                       fresh.net[0].weight)  # fmt: skip


def test_each_member_stops_early_on_its_own() -> None:
    cfg = TrainConfig(epochs=30, lr=1e-2, batch_size=32, patience=2, device="cpu")
    swept = fit_sweep(blobs(1), cfg, SweepConfig(lrs=(1e-4, 3e-1), weight_decays=(0.0,),
                                                heads=("linear",)))  # fmt: skip
    runs = [r["epochs_run"] for r in swept.rows]
    assert all(r["epochs_run"] <= r["best_epoch"] + cfg.patience for r in swept.rows)
    assert len(set(runs)) == 2  # the two learning rates stop at different epochs


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return extract_tiny_store(tmp_path_factory.mktemp("sweep"), dtype="float32")


def test_sweep_run_keeps_the_best_member_and_scores_test_once(  # type: ignore[no-untyped-def]
    store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = FeatureSource.batches

    def spy(self, split, *, shuffle, epoch=0):  # type: ignore[no-untyped-def]
        calls.append(split)
        return original(self, split, shuffle=shuffle, epoch=epoch)

    monkeypatch.setattr(FeatureSource, "batches", spy)
    grid = SweepConfig(lrs=(1e-4, 1e-2), weight_decays=(0.0, 1e-4), heads=("linear", "mlp"))
    cfg = TrainConfig(epochs=4, lr=1e-3, batch_size=16, patience=4, device="cpu")
    (summary,) = fit_heads(cache_dir=store_env["cache"], runs_dir=tmp_path, config=cfg, sweep=grid)
    assert calls.count("test") == 1  # test is scored once, for the chosen head only
    run = load_run(summary.path)
    with (summary.path / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and (summary.path / "plots" / "sweep.png").is_file()
    scores = [float(r["score"]) for r in rows]
    chosen = [r for r in rows if r["chosen"] == "1"]
    assert len(chosen) == 1 and float(chosen[0]["score"]) == max(scores)
    # Ties on the monitor go to the lowest validation loss among the tied members.
    tied = [r for r in rows if float(r["score"]) == max(scores)]
    assert float(chosen[0]["val_loss"]) == min(float(r["val_loss"]) for r in tied)
    assert run.config["head"] == chosen[0]["head"] == summary.head
    assert run.config["lr"] == float(chosen[0]["lr"])
    assert run.config["weight_decay"] == float(chosen[0]["weight_decay"])
    assert run.config["sweep"]["members"] == 8
    assert run.metrics["best_epoch"] == int(chosen[0]["best_epoch"])
    assert json.loads((summary.path / "metrics.json").read_text())["val"]["at_0.5"]["roc_auc"] \
        == pytest.approx(float(chosen[0]["val_auc"]), abs=1e-6)  # fmt: skip
    # best.pt loads into the chosen kind of head, as predict rebuilds it.
    state = torch.load(summary.path / "best.pt", weights_only=True)
    assert any(k.startswith("head.") for k in state)


def test_parse_sweep() -> None:
    assert parse_sweep(["default"], head="linear", lr=1e-3, weight_decay=1e-4) == SweepConfig()
    grid = parse_sweep(["lr=1e-4,1e-3,1e-2 wd=0,1e-4"], head="mlp", lr=1e-3, weight_decay=1e-4)
    assert grid.lrs == (1e-4, 1e-3, 1e-2) and grid.weight_decays == (0.0, 1e-4)
    assert grid.heads == ("mlp",) and len(grid.members()) == 6
    repeated = parse_sweep(["lr=1e-2", "head=linear,mlp"], head="linear", lr=1e-3, weight_decay=0)
    assert repeated.members() == [("linear", 1e-2, 0.0), ("mlp", 1e-2, 0.0)]
    for bad in (["momentum=0.9"], ["lr=fast"], ["lr"], ["head=logreg"], ["lr=-1"]):
        with pytest.raises(XrayError):
            parse_sweep(bad, head="linear", lr=1e-3, weight_decay=0)


def test_predict_loads_a_swept_mlp_head(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from featurestore.use import load_predictor

    grid = SweepConfig(lrs=(1e-3, 1e-2), weight_decays=(0.0,), heads=("mlp",))
    cfg = TrainConfig(epochs=2, batch_size=16, patience=2, device="cpu")
    (summary,) = fit_heads(cache_dir=store_env["cache"], runs_dir=tmp_path, config=cfg, sweep=grid)
    assert summary.head == "mlp"
    predictor = load_predictor(summary.path, device="cpu")  # strict load of best.pt
    assert predictor.mode == "frozen"


def test_a_one_class_validation_split_selects_members_on_val_loss() -> None:
    rng = np.random.default_rng(2)
    feats = {s: rng.normal(size=(n, 8)).astype(np.float32) for s, n in
             (("train", 64), ("val", 20), ("test", 20))}  # fmt: skip
    labels = {"train": np.arange(64) % 2, "val": np.ones(20, dtype=np.int64),
              "test": np.arange(20) % 2}  # fmt: skip
    source = FeatureSource.from_arrays(feats, labels, batch_size=16)
    grid = SweepConfig(lrs=(1e-3, 1e-1), weight_decays=(0.0,), heads=("linear",))
    swept = fit_sweep(source, TrainConfig(epochs=4, patience=4, device="cpu"), grid)
    assert swept.result.selection["used"] == "val_loss"
    assert all(r["monitor"] == "val_loss" for r in swept.rows)
    assert swept.rows[swept.chosen]["val_loss"] == min(r["val_loss"] for r in swept.rows)
