"""The trainer on in-memory features: learning, early stopping, repeatability, threshold, resume."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from featurestore.errors import XrayError
from featurestore.models import TrunkHead, build_head
from featurestore.runs import HISTORY_COLUMNS
from featurestore.train import (
    FeatureSource,
    TrainConfig,
    checkpoints,
    class_weights,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
)
from featurestore.train import loop as trainer

torch.set_num_threads(1)

FAST = TrainConfig(epochs=8, lr=0.1, batch_size=32, patience=8, device="cpu")


def separable(seed: int = 0, *, noise_val: bool = False, dim: int = 6) -> FeatureSource:
    """Two Gaussian blobs 4 sd apart along feature 0 (imbalanced 1:2); val optionally random."""
    rng = np.random.default_rng(seed)
    feats, labels = {}, {}
    for split, n in (("train", 120), ("val", 40), ("test", 30)):
        y = (rng.random(n) < 2 / 3).astype(np.int64)
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x[:, 0] += 4.0 * y
        if noise_val and split == "val":
            x[:, 0] = rng.normal(size=n)  # val carries no signal: nothing to improve on
        feats[split], labels[split] = x, y
    return FeatureSource.from_arrays(feats, labels, batch_size=32, seed=seed)


def test_learns_a_separable_problem() -> None:
    src = separable()
    torch.manual_seed(0)
    result = fit(build_head("linear", 6, 2), src, FAST)
    assert result.test["at_0.5"]["accuracy"] >= 0.95
    assert result.val["at_0.5"]["roc_auc"] >= 0.99
    assert len(result.history) == result.epochs_run == 8
    assert set(result.history[0]) == set(HISTORY_COLUMNS)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_early_stopping_triggers_and_restores_the_best_epoch() -> None:
    src = separable(noise_val=True)
    config = replace(FAST, epochs=60, patience=3, monitor="val_loss")
    torch.manual_seed(0)
    model = build_head("mlp", 6, 2, hidden=16)
    from rich.console import Console

    console = Console(record=True, width=80, file=open(os.devnull, "w"))  # noqa: SIM115
    result = fit(model, src, config, console=console, verbose=True)
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 3 < 60
    # Issue 14.4: the stop is announced when it happens, and every log line fits 80 columns.
    log = console.export_text()
    assert (
        f"early stop at epoch {result.epochs_run}/60: no better val_loss for 3 epochs; "
        f"keeping epoch {result.best_epoch}" in log.replace("\n", " ")
    )
    assert max(len(line) for line in log.splitlines()) <= 80
    losses = [r["val_loss"] for r in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    # The model left behind holds the best epoch's weights, not the last epoch's.
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.best_state[key])
    _, _, val_loss = evaluate(model, src, "val")
    assert math.isclose(val_loss, losses[result.best_epoch - 1], rel_tol=1e-5)
    assert math.isclose(result.val["at_0.5"]["loss"], val_loss, rel_tol=1e-9)


def test_same_seed_gives_identical_metrics() -> None:
    def run(seed: int) -> dict:
        torch.manual_seed(seed)
        model = build_head("mlp", 6, 2, hidden=16)  # dropout: the RNG matters
        return fit(model, separable(), replace(FAST, seed=seed, epochs=4)).metrics_json()

    a, b = run(0), run(0)
    assert a == b  # metrics.json holds no timings, so it repeats exactly
    c = run(1)
    assert c["val"] != a["val"]


def test_threshold_is_chosen_on_validation_and_test_is_scored_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from featurestore import compare

    src = separable()
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_choose = compare.operating_point

    def spy(y, p, **kw):  # type: ignore[no-untyped-def]
        assert kw.get("split", "val") == "val"
        seen.append((np.asarray(y).copy(), np.asarray(p).copy()))
        return real_choose(y, p, **kw)

    calls: list[str] = []
    real_batches = src.batches

    def counting(split, **kw):  # type: ignore[no-untyped-def]
        calls.append(split)
        return real_batches(split, **kw)

    monkeypatch.setattr("featurestore.compare.metrics.operating_point", spy)
    monkeypatch.setattr(src, "batches", counting)
    torch.manual_seed(0)
    result = fit(build_head("linear", 6, 2), src, replace(FAST, epochs=3))
    assert len(seen) == 1
    y_seen, p_seen = seen[0]
    assert np.array_equal(y_seen, src.records("val")[2])
    assert np.allclose(p_seen, result.predictions["val"].probabilities)
    assert calls.count("test") == 1
    assert {k: result.threshold[k] for k in ("policy", "value", "ran", "note", "chosen_on")} == {
        "policy": "youden",
        "value": pytest.approx(result.val["at_threshold"]["threshold"]),
        "ran": True,
        "note": None,
        "chosen_on": "val",
    }


def test_predictions_follow_records_and_threshold() -> None:
    src = separable()
    torch.manual_seed(0)
    result = fit(build_head("linear", 6, 2), src, replace(FAST, epochs=2))
    test = result.predictions["test"]
    keys, groups, labels = src.records("test")
    assert test.keys == keys and test.groups == groups and np.array_equal(test.labels, labels)
    t = result.threshold["value"]
    assert np.array_equal(test.predictions, (test.probabilities >= t).astype(int))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "--epochs"),
        ("lr", 0.0, "--lr"),
        ("patience", 0, "--patience"),
        ("monitor", "val_acc", "unknown --monitor 'val_acc'"),
        ("class_weight", "inverse", "--class-weight"),
        ("threshold_policy", "median", "threshold policy"),
        ("device", "tpu", "--device"),
        ("batch_size", 0, "--batch-size"),
        ("grad_clip", -1.0, "grad clip"),
    ],
)
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(XrayError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_class_weights() -> None:
    y = np.array([0, 1, 1, 1])
    assert torch.allclose(class_weights(y, 2, "balanced"), torch.tensor([2.0, 2 / 3]))
    assert torch.equal(class_weights(y, 2, "none"), torch.ones(2))
    with pytest.raises(XrayError, match="no images of class 'index 1'"):
        class_weights(np.array([0, 0]), 2, "balanced")
    with pytest.raises(XrayError, match=r"no images of class 'NORMAL'.*validation carve"):
        class_weights(np.array([1, 1]), 2, "balanced", ("NORMAL", "PNEUMONIA"))


def noise_source(n: int = 2000, positive: float = 0.1, seed: int = 0) -> FeatureSource:
    """Features that carry no signal, `positive` of the labels 1: only the prior can be learnt."""
    rng = np.random.default_rng(seed)
    feats, labels = {}, {}
    for split, size in (("train", n), ("val", 200), ("test", 200)):
        labels[split] = (rng.random(size) < positive).astype(np.int64)
        feats[split] = rng.normal(size=(size, 2)).astype(np.float32)
    return FeatureSource.from_arrays(feats, labels, batch_size=32, seed=seed)


@pytest.mark.parametrize(("policy", "low", "high"), [("balanced", 0.35, 0.65), ("none", 0.03, 0.2)])
def test_training_uses_the_class_weights(policy: str, low: float, high: float) -> None:
    """On signal-free features with 10% positives the head learns the prior the loss sees:
    balanced weights n / (C n_c) make it 50/50, no weights leave it at 10%."""
    src = noise_source()
    # One epoch of 63 steps at a constant rate: the bias settles, and the only epoch is the best.
    config = replace(FAST, epochs=1, warmup_epochs=0, schedule="constant", class_weight=policy)
    torch.manual_seed(0)
    model = build_head("linear", 2, 2)
    fit(model, src, config)
    with torch.no_grad():
        x = torch.cat([xb for xb, _ in src.batches("train", shuffle=False)])
        mean_p = float(model(x).softmax(1)[:, 1].mean())
    assert low < mean_p < high, mean_p


@pytest.mark.parametrize("policy", ["balanced", "none"])
def test_fit_gives_the_loss_the_train_class_weights(monkeypatch, policy: str) -> None:  # type: ignore[no-untyped-def]
    """The criterion fit hands to each epoch weighs class c by n / (C n_c) of the train labels."""
    src = noise_source(n=300, positive=0.25)
    seen: list[nn.Module] = []
    real = trainer.train_one_epoch

    def spy(model, source, epoch, criterion, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(criterion)
        return real(model, source, epoch, criterion, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    torch.manual_seed(0)
    fit(build_head("linear", 2, 2), src, replace(FAST, epochs=2, class_weight=policy))
    assert len(seen) == 2
    y = src.records("train")[2]
    n_c = np.bincount(y, minlength=2)
    expected = len(y) / (2 * n_c) if policy == "balanced" else np.ones(2)
    assert n_c[1] / len(y) < 0.35  # imbalanced: the two policies differ
    logits = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1] * 8)
    weight = torch.tensor(expected, dtype=torch.float32)
    reference = nn.functional.cross_entropy(logits, target, weight=weight)
    for criterion in seen:
        assert torch.allclose(criterion(logits, target), reference)


def test_warmup_then_cosine_per_step() -> None:
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(epochs=3, warmup_epochs=1, lr=1.0), steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))


def test_param_groups_lower_backbone_lr_and_skip_decay_on_norms() -> None:
    trunk = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model = TrunkHead(trunk, nn.Linear(4, 2))
    opt = make_optimizer(model, TrainConfig(lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["head"]["lr"] == 1e-3 and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 0.05
    assert len(groups["backbone_no_decay"]["params"]) == 3  # linear bias, bn weight, bn bias
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(XrayError, match="no trainable parameters"):
        make_optimizer(model, TrainConfig())


def test_multiclass_trains_with_argmax_metrics_and_macro_auc_monitor() -> None:
    # Three separable clusters: a linear head learns them; metrics are argmax, no threshold.
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    labels = {s: np.arange(30) % 3 for s in ("train", "val", "test")}
    feats = {
        s: (centres[y] + rng.normal(size=(30, 2))).astype(np.float32) for s, y in labels.items()
    }
    src = FeatureSource.from_arrays(feats, labels, class_names=("a", "b", "c"), positive_index=2)
    result = fit(
        build_head("linear", 2, 3), src, replace(FAST, epochs=20, batch_size=8, patience=20)
    )
    assert result.threshold["policy"] == "argmax" and result.threshold["value"] is None
    test = result.test["argmax"]
    assert test["accuracy"] > 0.8 and test["roc_auc_macro"] > 0.9
    assert np.array(test["confusion_matrix"]).shape == (3, 3)
    assert result.metrics_json()["task"] == "multiclass"
    # The monitored val AUC is the macro one-vs-rest AUC of the same predictions.
    best = result.history[result.best_epoch - 1]
    assert 0.5 < best["val_auc"] <= 1.0
    assert result.predictions["test"].probabilities.shape == (30, 3)


def test_one_class_is_refused() -> None:
    feats = {s: np.zeros((4, 2), dtype=np.float32) for s in ("train", "val", "test")}
    labels = {s: np.zeros(4, dtype=np.int64) for s in feats}
    src = FeatureSource.from_arrays(feats, labels, class_names=("a",), positive_index=0)
    with pytest.raises(XrayError, match="at least two"):
        fit(build_head("linear", 2, 2), src, FAST)


class Interrupt(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_continues_to_the_same_result(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = replace(FAST, epochs=6, patience=10)

    def new_model() -> nn.Module:
        torch.manual_seed(0)
        return build_head("mlp", 6, 2, hidden=16)  # dropout + BN: RNG and buffers matter

    straight = fit(new_model(), separable(), config, run_dir=tmp_path / "a")
    assert (tmp_path / "a" / "last.pt").is_file()

    real_save = checkpoints.save_checkpoint

    def save_then_die(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if payload["epoch"] == 3:
            raise Interrupt

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        fit(new_model(), separable(), config, run_dir=tmp_path / "b")
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    # A fresh process would start from a differently initialised model and RNG: simulate it.
    torch.manual_seed(123)
    fresh = build_head("mlp", 6, 2, hidden=16)
    resumed = fit(
        fresh, separable(), config, run_dir=tmp_path / "b", resume_from=tmp_path / "b" / "last.pt"
    )
    assert _without_seconds(resumed.history) == _without_seconds(straight.history)
    assert straight.metrics_json() == resumed.metrics_json()
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 6


def test_resume_refuses_other_settings_and_missing_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fit(build_head("linear", 6, 2), separable(), replace(FAST, epochs=2), run_dir=tmp_path)
    with pytest.raises(XrayError, match=r"settings differ \(lr\)"):
        fit(
            build_head("linear", 6, 2), separable(), replace(FAST, epochs=2, lr=0.5),
            resume_from=tmp_path / "last.pt",
        )  # fmt: skip
    with pytest.raises(XrayError, match="no checkpoint to resume"):
        fit(build_head("linear", 6, 2), separable(), FAST, resume_from=tmp_path / "nope.pt")
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XrayError, match="cannot read checkpoint"):
        fit(build_head("linear", 6, 2), separable(), FAST, resume_from=tmp_path / "torn.pt")


def test_epoch_line_has_the_study_figures() -> None:
    row = {k: 0.5 for k in HISTORY_COLUMNS} | {"epoch": 3.0, "seconds": 0.61}
    line = trainer.format_epoch(row, 20)
    assert line.split() == ["3/20"] + ["0.500"] * 6 + ["0.61"]
    # Issue 14.4: under 80 columns with the "  best" mark, even at 3-digit epochs and a slow
    # epoch; every figure sits under its header word.
    long = trainer.format_epoch(row | {"epoch": 100.0, "seconds": 9999.99}, 100)
    assert len(long + "  best") <= 80 and len(trainer.EPOCH_HEADER) <= 80
    header = trainer.EPOCH_HEADER
    assert line.index("0.61") + 4 == header.index("s/epoch") + len("s/epoch")
    nan = trainer.format_epoch(row | {"val_auc": float("nan")}, 20)
    assert nan.split()[6] == "-"  # undefined, not "nan"


def one_class_val(seed: int = 0) -> FeatureSource:
    """Separable train/test, but validation holds positives only (nothing carved from train)."""
    rng = np.random.default_rng(seed)
    feats, labels = {}, {}
    for split, n in (("train", 120), ("val", 40), ("test", 30)):
        y = np.ones(n, np.int64) if split == "val" else (rng.random(n) < 0.5).astype(np.int64)
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, 0] += 4.0 * y
        feats[split], labels[split] = x, y
    return FeatureSource.from_arrays(feats, labels, batch_size=32, seed=seed)


def test_one_class_validation_selects_on_val_loss_and_records_that_the_threshold_did_not_run() -> (
    None
):
    from rich.console import Console

    console = Console(record=True, width=200)
    torch.manual_seed(0)
    result = fit(build_head("linear", 6, 2), one_class_val(), FAST, console=console)
    losses = [r["val_loss"] for r in result.history]
    assert all(math.isnan(r["val_auc"]) for r in result.history)
    # Selected on the (defined) validation loss, not kept at epoch 1 by a NaN AUC.
    assert result.best_epoch == 1 + int(np.argmin(losses)) and result.best_epoch > 1
    doc = result.metrics_json()
    assert doc["monitor"]["requested"] == "val_auc" and doc["monitor"]["used"] == "val_loss"
    assert "only" in doc["monitor"]["note"]
    assert doc["threshold"]["ran"] is False and doc["threshold"]["value"] == 0.5
    assert "could not run" in doc["threshold"]["note"]
    assert "val_loss instead" in console.export_text()


def test_two_class_validation_keeps_the_monitor_and_runs_the_threshold() -> None:
    result = fit(build_head("linear", 6, 2), separable(), FAST)
    doc = result.metrics_json()
    assert doc["monitor"] == {"requested": "val_auc", "used": "val_auc", "note": None}
    assert doc["threshold"]["ran"] is True and doc["threshold"]["note"] is None


def test_logreg_head_on_one_class_validation_selects_on_val_loss() -> None:
    from featurestore.train import fit_logreg

    fitted = fit_logreg(one_class_val())
    losses = {r["C"]: r["val_loss"] for r in fitted.history}
    assert min(losses, key=losses.__getitem__) == fitted.C
