"""Run folders: contract contents, atomic writes, load_run, metrics equal to sklearn's."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from featurestore import plots
from featurestore.errors import XrayError
from featurestore.models import build_head
from featurestore.runs import (
    HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    find_runs,
    inprogress_dir,
    list_runs,
    load_run,
    run_name,
    write_run,
)
from featurestore.train import FeatureSource, FitResult, TrainConfig, fit

torch.set_num_threads(1)
WHEN = datetime(2024, 5, 17, 9, 30, 5)


@pytest.fixture(scope="module")
def trained() -> tuple[FitResult, dict]:
    rng = np.random.default_rng(0)
    feats, labels = {}, {}
    for split, n in (("train", 60), ("val", 24), ("test", 20)):
        y = (np.arange(n) % 3 != 0).astype(np.int64)
        x = rng.normal(size=(n, 4)).astype(np.float32)
        x[:, 0] += 1.5 * y
        feats[split], labels[split] = x, y
    src = FeatureSource.from_arrays(feats, labels, batch_size=16)
    config = TrainConfig(epochs=3, lr=0.05, batch_size=16, device="cpu")
    torch.manual_seed(0)
    result = fit(build_head("linear", 4, 2), src, config)
    doc = {
        **asdict(config),
        "mode": "frozen",
        "model": "toy",
        "class_names": ["NORMAL", "PNEUMONIA"],
        "positive_index": 1,
    }
    return result, doc


def test_run_folder_has_the_contract_contents(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained
    path = write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result, when=WHEN)
    assert path == tmp_path / "20240517-093005-toy-frozen-s0"
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert names == {
        "config.json",
        "history.csv",
        "metrics.json",
        "timing.json",
        "predictions.csv",
        "best.pt",
        "plots/curves.png",
        "plots/confusion.png",
        "plots/roc.png",
    }
    with (path / "history.csv").open() as fh:
        assert next(csv.reader(fh)) == list(HISTORY_COLUMNS)
    with (path / "predictions.csv").open() as fh:
        assert next(csv.reader(fh)) == list(PREDICTION_COLUMNS)
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics) == {
        "best_epoch", "epochs_run", "stopped_early", "monitor", "threshold", "val", "test",
        "calibration",
    }  # fmt: skip
    assert metrics["calibration"]["fitted_on"] == "val"
    timing = json.loads((path / "timing.json").read_text())
    assert set(timing) == {"seconds_per_epoch", "epochs_run"}
    assert set(metrics["test"]) == {"at_0.5", "at_threshold"}
    assert metrics["threshold"]["policy"] == "youden"
    state = torch.load(path / "best.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}
    assert (path / "plots" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_metrics_equal_sklearn_on_predictions_csv(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained
    run = load_run(write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result))
    t = run.metrics["threshold"]["value"]
    for split in ("val", "test"):
        rows = run.split_predictions(split)
        y, p, pred = rows["label"], rows["probability"], rows["prediction"]
        assert np.array_equal(pred, (p >= t).astype(int))
        m = run.metrics[split]["at_threshold"]
        assert m["n"] == len(y)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
        assert m["f1_positive"] == pytest.approx(f1_score(y, pred), abs=1e-12)
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
        assert m["loss"] == pytest.approx(log_loss(y, p), rel=1e-5)
        at_half = run.metrics[split]["at_0.5"]
        assert at_half["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)


def test_load_run_reads_everything_back(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained
    run = load_run(write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result))
    assert run.config == json.loads(json.dumps(doc))
    assert run.history["epoch"].tolist() == [1, 2, 3]
    assert np.allclose(run.history["val_loss"], [r["val_loss"] for r in result.history])
    assert run.predictions["split"].tolist().count("test") == 20
    assert np.array_equal(
        run.split_predictions("test")["probability"], result.predictions["test"].probabilities
    )


def test_existing_name_gets_a_unique_suffix(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained
    kw = {"model": "toy", "mode": "frozen", "config": doc, "result": result, "plots": False}
    a = write_run(tmp_path, when=WHEN, **kw)
    b = write_run(tmp_path, when=WHEN, **kw)
    assert b.name == a.name + "-2"
    assert list_runs(tmp_path) == [a, b]


def test_a_failure_leaves_no_run_folder(tmp_path: Path, trained, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "write_plots", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result)
    assert list(tmp_path.iterdir()) == []


def test_load_run_refuses_incomplete_folders(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, doc = trained
    with pytest.raises(XrayError, match="does not exist"):
        load_run(tmp_path / "nope")
    path = write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result, plots=False)
    (path / "metrics.json").unlink()
    with pytest.raises(XrayError, match=r"not a complete run folder \(missing metrics.json\)"):
        load_run(path)
    half = tmp_path / ".20240101-000000-toy-frozen-s0.tmp"
    half.mkdir()
    with pytest.raises(XrayError, match="still being written"):
        load_run(half)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text("{not json")
    for name in ("config.json", "history.csv", "predictions.csv", "best.pt"):
        (tmp_path / "other" / name).write_text("")
    with pytest.raises(XrayError, match=r"run other: config.json is damaged"):
        load_run(tmp_path / "other")
    assert list_runs(tmp_path) == [tmp_path / "other"]  # complete set of files, even if bad
    assert list_runs(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        ("cut", "predictions.csv"),  # cut mid-line: int() of None before (issue #28.6)
        ("overwrite", "predictions.csv"),
        ("cut", "metrics.json"),
        ("garbage", "metrics.json"),
        ("cut", "history.csv"),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_run_and_file(
    tmp_path: Path,
    trained,  # type: ignore[no-untyped-def]
    damage: str,
    file: str,
) -> None:
    result, doc = trained
    path = write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result, plots=False)
    target = path / file
    data = target.read_bytes()
    if damage == "cut":
        target.write_bytes(data[: len(data) // 2 + 3])
    elif damage == "overwrite":  # a run of bytes written over the middle of the file
        mid = len(data) // 2
        target.write_bytes(data[:mid] + b"\xff,,\x00,9,9,9,9" * 4 + data[mid + 40 :])
    else:
        target.write_bytes(b"\x00\x01not json")
    with pytest.raises(XrayError, match=rf"run {path.name}: {file} is damaged") as err:
        load_run(path)
    assert "\n" not in str(err.value)


def test_names_and_inprogress_folders() -> None:
    assert run_name("resnet50", "finetune", 3, when=WHEN) == "20240517-093005-resnet50-finetune-s3"
    runs = Path("runs")
    a = inprogress_dir(runs, "resnet50", "finetune", {"lr": 1e-3, "seed": 0})
    assert a == inprogress_dir(runs, "resnet50", "finetune", {"seed": 0, "lr": 1e-3})
    assert a != inprogress_dir(runs, "resnet50", "finetune", {"lr": 1e-4, "seed": 0})
    assert a.parent == runs / ".inprogress" and a.name.startswith("resnet50-finetune-")


def test_concurrent_writers_into_one_runs_folder_get_distinct_complete_runs(
    tmp_path: Path,
    trained,  # type: ignore[no-untyped-def]
) -> None:
    """Issue #27: two fit-head processes writing into one --runs folder at the same second
    must both complete, in distinct folders, nothing overwritten. Processes, as users run them,
    released together by a barrier so they race for the same name."""
    import multiprocessing as mp

    result, doc = trained
    ctx = mp.get_context("fork")
    n = 6
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_write_at_once, args=(tmp_path, doc, result, k, barrier, out))
        for k in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = [out.get(timeout=5) for _ in range(n)]
    errors = [g for g in got if g.startswith("error")]
    assert not errors, errors
    assert len(set(got)) == n
    for path in got:
        record = load_run(Path(path))
        assert Path(path).name.startswith(f"{WHEN:%Y%m%d-%H%M%S}")
        assert record.config["writer"] in range(n)
    assert sorted(load_run(Path(p)).config["writer"] for p in got) == list(range(n))
    assert sorted(Path(p) for p in got) == list_runs(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _write_at_once(runs: Path, doc: dict, result: FitResult, k: int, barrier, out) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    try:
        path = write_run(
            runs, model="toy", mode="frozen", config={**doc, "writer": k}, result=result,
            plots=False, when=WHEN,
        )  # fmt: skip
        out.put(str(path))
    except BaseException as exc:
        out.put(f"error {type(exc).__name__}: {exc}")


def test_compare_finds_the_newest_study_when_runs_is_empty(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    """After `xray demo` (runs in studies/demo/runs), a bare `xray compare` finds them, and a
    study folder passed as an argument gives its runs."""
    import os

    result, doc = trained
    kw = {"model": "toy", "mode": "frozen", "config": doc, "result": result, "plots": False}
    old = write_run(tmp_path / "studies" / "old" / "runs", when=WHEN, **kw)
    new = write_run(tmp_path / "studies" / "demo" / "runs", when=WHEN, **kw)
    os.utime(tmp_path / "studies" / "old" / "runs", (1, 1))  # older
    runs_dir, studies = tmp_path / "runs", tmp_path / "studies"
    found, note = find_runs([], runs_dir, studies_dir=studies)
    assert found == [new] and note is not None and "demo" in note and "1 older" in note
    assert find_runs([studies / "old"], runs_dir, studies_dir=studies)[0] == [old]
    assert find_runs([], runs_dir, studies_dir=tmp_path / "none") == ([], None)
