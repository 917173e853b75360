"""`xray fit-head` and `xray finetune` through the Typer app (and one real SIGKILL + --resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_tiny_store, write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.runs import TRAIN_SUBSET_FILE, load_run

runner = CliRunner()
torch.set_num_threads(1)
TINY_TUNE = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0",
             "--batch-size", "8", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dataset and its resnet18 (random init, 32 px) feature store."""
    return extract_tiny_store(tmp_path_factory.mktemp("cli_train"))


@pytest.mark.parametrize("command", ["fit-head", "finetune"])
def test_help_has_examples(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples" in result.stdout and f"xray {command}" in result.stdout


def test_fit_head_prints_test_metrics_and_the_run_folder(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = [
        "fit-head",
        "--cache",
        str(store_env["cache"]),
        "--runs",
        str(tmp_path),
        "--epochs",
        "3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test metrics" in result.stdout and "accuracy" in result.stdout
    assert "run folder:" in result.stdout
    # One summary line per run; the epoch table only with --verbose.
    assert "training: 3/3 epochs, best epoch" in result.stderr
    assert "train loss" not in result.stderr
    verbose = runner.invoke(app, [*args, "--verbose"], env={"XRAY_VERBOSE": ""})
    assert verbose.exit_code == 0, verbose.output
    assert "train loss" in verbose.stderr and "  1/3 " in verbose.stderr
    (run, _) = sorted(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    config = load_run(run).config
    assert config["head"] == "linear"
    # It says which precision the features were extracted in, and records it.
    assert f"extracted in {config['store']['precision']}" in result.output
    # the head's precision is recorded as asked (auto: float32 on CPU, autocast on CUDA)
    assert config["store"]["precision"] in ("fp32", "bf16") and config["precision"] is None


def test_fit_head_json(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app,
        ["fit-head", "--store", str(store_env["store"]), "--runs", str(tmp_path), "--head",
         "mlp", "--epochs", "2", "--seed", "3", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["at"] for r in doc["rows"]] == ["at_0.5", "at_threshold"]
    assert doc["rows"][0]["metrics"]["n"] == 8
    run = load_run(Path(doc["runs"][0]))
    assert run.config["seed"] == 3 and run.config["head"] == "mlp"
    assert Path(doc["runs"][0]).name.endswith("-resnet18-mlp-frozen-s3")  # the head is named


def test_fit_head_seeds_repeat_the_run(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app,
        ["fit-head", "--store", str(store_env["store"]), "--runs", str(tmp_path), "--epochs",
         "2", "--seed", "5", "--seeds", "2", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    seeds = sorted(load_run(Path(p)).config["seed"] for p in json.loads(result.stdout)["runs"])
    assert seeds == [5, 6]


def test_fit_head_refuses_a_stale_store(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = next((store_env["data"] / "test" / "PNEUMONIA").glob("*.jpeg"))
    original = victim.read_bytes()
    victim.write_bytes(original + b"\0")
    try:
        result = runner.invoke(
            app,
            ["fit-head", "--data", str(store_env["data"]), "--cache", str(store_env["cache"]),
             "--runs", str(tmp_path)],
        )  # fmt: skip
    finally:
        victim.write_bytes(original)
    assert result.exit_code == 2
    assert "error:" in result.stderr and "no longer matches the dataset" in result.stderr
    assert "xray extract" in result.stderr and "Traceback" not in result.output


def test_fit_head_refuses_an_incomplete_store(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["format_version"] = 1
        fh.attrs["complete"] = False
    result = runner.invoke(app, ["fit-head", "--store", str(path), "--runs", str(tmp_path)])
    assert result.exit_code == 2
    assert "incomplete" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--monitor", "val_acc"], "unknown --monitor"),
        (["--class-weight", "inverse"], "--class-weight"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_fit_head_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["fit-head", "--cache", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("policy", ["sensitivity:0.95", "specificity:0.9", "f1", "fixed:0.4"])
def test_fit_head_threshold_policy_is_chosen_on_val_and_recorded(
    store_env, tmp_path: Path, policy: str
) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app,
        ["fit-head", "--store", str(store_env["store"]), "--runs", str(tmp_path), "--epochs",
         "2", "--threshold", policy, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = load_run(Path(json.loads(result.stdout)["runs"][0]))
    point = run.metrics["threshold"]
    assert point["policy"] == policy and point["chosen_on"] == "val"
    assert run.config["threshold_policy"] == policy
    val = run.split_predictions("val")
    y, p = val["label"] == 1, val["probability"]
    reached_sens = float(((p >= point["value"]) & y).sum() / y.sum())
    assert point["reached"]["sensitivity"] == pytest.approx(reached_sens)
    assert run.metrics["val"]["at_threshold"]["threshold"] == point["value"]
    if policy == "sensitivity:0.95":
        assert reached_sens >= 0.95
    if policy == "fixed:0.4":
        assert point["value"] == 0.4
    # The prediction column is at the chosen threshold on both val and test.
    for split in ("val", "test"):
        rows = run.split_predictions(split)
        assert np.array_equal(rows["prediction"], (rows["probability"] >= point["value"]) * 1)
    # Recalibration fitted on val is stored with the run: ECE before and after.
    cal = run.metrics["calibration"]
    assert cal["fitted_on"] == "val" and cal["val"]["ece_after"] <= cal["val"]["ece_before"]


@pytest.mark.parametrize("policy", ["sensitivity", "sensitivity:1.5", "median"])
def test_fit_head_refuses_a_bad_threshold_policy(tmp_path: Path, policy: str) -> None:
    result = runner.invoke(app, ["fit-head", "--cache", str(tmp_path), "--threshold", policy])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "threshold policy" in errors[0]


def test_fit_head_with_an_empty_cache_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit-head", "--cache", str(tmp_path), "--runs", str(tmp_path)])
    assert result.exit_code == 2
    assert "run `xray extract --model resnet50` first" in result.stderr


def test_finetune_refuses_an_unknown_stage(tiny_data_ro: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["finetune", "--data", str(tiny_data_ro), "--runs", str(tmp_path), "--freeze", "layer9",
         *TINY_TUNE],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "conv1, layer1, layer2, layer3, layer4" in result.stderr


@pytest.mark.slow
def test_finetune_json_with_a_partial_freeze(tiny_data_ro: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["finetune", "--data", str(tiny_data_ro), "--runs", str(tmp_path), "--epochs", "1",
         "--freeze", "layer2", "--no-augment", "--threshold", "specificity:0.5", "--json",
         *TINY_TUNE],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    run = load_run(Path(doc["runs"][0]))
    assert run.config["freeze"] == "layer2" and run.config["augment"] is False
    point = run.metrics["threshold"]
    assert point["policy"] == "specificity:0.5" and point["chosen_on"] == "val"
    assert point["reached"]["specificity"] >= 0.5
    assert 0 < run.config["trainable_params"] < run.config["total_params"]
    assert run.config["mode"] == "finetune" and run.config["backbone_lr_mult"] == 0.1


@pytest.mark.slow
def test_finetune_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "chest_xray")
    runs = tmp_path / "runs"
    args = ["finetune", "--data", str(data), "--runs", str(runs), "--epochs", "4", *TINY_TUNE]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "from featurestore.cli.main import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(runs.glob(".inprogress/*/last.pt")):
            assert proc.poll() is None, "finetune ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: after epoch 1's checkpoint
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list(runs.glob("2*"))  # no run folder from the killed process
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    (path,) = list(runs.glob("2*"))
    run = load_run(path)
    assert run.config["resumed"] is True
    assert run.history["epoch"].tolist()[0] == 1 and len(run.history["epoch"]) >= 2
    assert not list(runs.glob(".inprogress/*"))


def _one_class_val_dataset(root: Path) -> Path:
    """train 12+12, val 100 PNEUMONIA (nothing carved: val is big enough), test 4+4, 24 px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    plan = {"train": (12, 12), "val": (0, 100), "test": (4, 4)}
    for split, (normal, pneumonia) in plan.items():
        for cls, n in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.normal(90 + 60 * (cls == "PNEUMONIA"), 30, (24, 24))
                name = f"{split}-{cls}-{i}.png"
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name)
    return root


@pytest.mark.parametrize("command", ["fit-head", pytest.param("finetune", marks=pytest.mark.slow)])
def test_one_class_validation_selects_on_val_loss_and_says_so(tmp_path: Path, command: str) -> None:
    data = _one_class_val_dataset(tmp_path / "data")
    common = ["--data", str(data), "--runs", str(tmp_path / "runs"), "--epochs", "3"]
    if command == "fit-head":
        extract = runner.invoke(app, ["extract", "--data", str(data), "--cache",
                                      str(tmp_path / "cache"), *TINY_TUNE[:6]])  # fmt: skip
        assert extract.exit_code == 0, extract.output
        args = ["fit-head", *common, "--cache", str(tmp_path / "cache")]
    else:
        args = ["finetune", *common, "--no-augment", *TINY_TUNE]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "holds PNEUMONIA images only" in result.output and "val_loss instead" in result.output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"]["used"] == "val_loss"
    assert metrics["threshold"]["ran"] is False and "could not run" in metrics["threshold"]["note"]
    history = (run / "history.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[5]) for line in history]  # val_loss column
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))


def test_fit_head_logreg_names_the_c_it_swept_at_80_columns(  # type: ignore[no-untyped-def]
    store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issues 13.16 and 14.4: the table says which C was kept out of how many, not
    `best/epochs 2/7`, and holds every digit at 80 columns."""
    from featurestore.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    args = ["fit-head", "--cache", str(store_env["cache"]), "--runs", str(tmp_path)]
    result = runner.invoke(app, [*args, "--head", "logreg"])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    config = load_run(run).config
    assert f"C={config['logreg_C']:g} of {len(config['logreg_Cs'])} C values" in result.stdout
    assert "C swept over" in result.stdout and "swept C" in result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout
    metrics = load_run(run).metrics["test"]["at_threshold"]
    assert f"{metrics['accuracy']:.3f}" in result.stdout


@pytest.mark.slow
def test_kermany3_extract_fit_head_finetune_compare_end_to_end(tmp_path: Path) -> None:
    """The three-class task through the CLI; metrics.json agrees with sklearn on predictions.csv."""
    import numpy as np
    from conftest import write_tiny_kermany3
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    data = write_tiny_kermany3(tmp_path / "chest_xray")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    common = ["--data", str(data), "--labels", "kermany3"]
    result = runner.invoke(app, ["extract", "--model", "resnet18", "--weights", "none",
                                 "--image-size", "32", "--workers", "0", "--device", "cpu",
                                 "--cache", str(cache), *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list(cache.glob("chest_xray-kermany3-*/*.h5"))) == 1
    result = runner.invoke(app, ["fit-head", "--cache", str(cache), "--runs", str(runs),
                                 "--epochs", "3", *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "multi-class" in result.output and "recall_VIRAL" in result.output
    tune = [*TINY_TUNE, "--epochs", "1", "--runs", str(runs), *common]
    result = runner.invoke(app, ["finetune", *tune])
    assert result.exit_code == 0, result.output
    paths = sorted(p for p in runs.iterdir() if not p.name.startswith("."))
    assert len(paths) == 2
    for path in paths:
        run = load_run(path)
        assert run.config["task"] == "multiclass" and run.config["label_scheme"] == "kermany3"
        assert run.config["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
        assert run.config["positive_class"] is None  # argmax decisions have no positive class
        assert run.metrics["task"] == "multiclass"
        test = run.split_predictions("test")
        y, p = test["label"], test["probabilities"]  # (N,), (N, 3) from prob_<class> columns
        assert np.array_equal(test["prediction"], p.argmax(1))
        m = run.metrics["test"]["argmax"]
        pred = p.argmax(1)
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        for k, name in enumerate(run.config["class_names"]):
            assert m[f"auc_{name}"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert m["roc_auc_macro"] == pytest.approx(
            roc_auc_score(y, p, multi_class="ovr", average="macro")
        )
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", "--runs", str(runs), "--bootstrap", "200",
                                 "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["task"] == "multiclass" and len(doc["runs"]) == 2
    assert len(doc["pairs"]) == 1
    assert doc["pairs"][0]["tests"]["mcnemar"]["detail"]["method"] in ("exact", "clustered-chi2")
    assert doc["pairs"][0]["tests"]["auc_difference"]["metric"] == "roc_auc_macro"
    assert doc["verdict"]["metric"] in ("roc_auc_macro", "accuracy")
    assert doc["baseline"]["majority_class"] in ("NORMAL", "BACTERIAL", "VIRAL")
    for name in ("report.md", "report.html", "table.csv", "roc.png", "confusion.png"):
        assert (out / name).is_file()
    assert "Per class" in (out / "report.md").read_text()


@pytest.mark.slow
def test_nih_layout_multilabel_end_to_end(tmp_path: Path) -> None:
    """NIH ChestX-ray14 layout through the CLI: extract, fit-head, finetune one epoch, compare;
    per-finding metrics in metrics.json agree with sklearn recomputed from predictions.csv."""
    import numpy as np
    from conftest import write_tiny_nih
    from sklearn.metrics import average_precision_score, roc_auc_score

    data = write_tiny_nih(tmp_path / "nih")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    result = runner.invoke(app, ["extract", "--model", "resnet18", "--weights", "none",
                                 "--image-size", "32", "--workers", "0", "--device", "cpu",
                                 "--cache", str(cache), "--data", str(data)])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fit-head", "--cache", str(cache), "--runs", str(runs),
                                 "--epochs", "5", "--lr", "0.01"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "multi-label" in result.output and "Effusion auc" in result.output
    tune = [*TINY_TUNE, "--epochs", "1", "--runs", str(runs), "--data", str(data)]
    result = runner.invoke(app, ["finetune", *tune])
    assert result.exit_code == 0, result.output
    paths = sorted(p for p in runs.iterdir() if not p.name.startswith("."))
    assert len(paths) == 2
    for path in paths:
        run = load_run(path)
        assert run.config["task"] == "multilabel" and len(run.config["class_names"]) == 14
        test = run.split_predictions("test")
        y, p = test["targets"], test["probabilities"]  # (N, 14) each
        thresholds = run.metrics["threshold"]["per_label"]
        m = run.metrics["test"]["at_label_thresholds"]
        for k, name in enumerate(run.config["class_names"]):
            got = m["labels"][name]
            assert np.array_equal(test["predictions"][:, k], p[:, k] >= thresholds[name])
            if 0 < y[:, k].sum() < len(y):
                assert got["auc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
                assert got["average_precision"] == pytest.approx(
                    average_precision_score(y[:, k], p[:, k])
                )
            else:  # Atelectasis, Mass, ...: never present in this data, so undefined
                assert got["auc"] is None
        assert m["n_labels_auc"] == 2
    result = runner.invoke(app, ["compare", "--runs", str(runs), "--bootstrap", "200",
                                 "--out", str(tmp_path / "report"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["task"] == "multilabel" and len(doc["pairs"]) == 1
    pair = doc["pairs"][0]
    assert pair["per_finding"]["Atelectasis"] is None  # one class on test: no test
    tested = {f for f, t in pair["per_finding"].items() if t is not None}
    assert tested == {"Cardiomegaly", "Effusion"}
    assert all(pair["per_finding"][f]["p_holm"] is not None for f in tested)
    assert (tmp_path / "report" / "roc.png").is_file()


def test_fit_head_sweep_and_label_efficiency_options(store_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["fit-head", "--cache", str(store_env["cache"]), "--epochs", "2", "--device", "cpu"]
    result = runner.invoke(app, [*base, "--runs", str(tmp_path / "a"), "--sweep",
                                 "lr=1e-3,1e-2 wd=0,1e-4", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert (Path(run) / "sweep.csv").is_file() and "sweep" in Path(run).name
    assert load_run(Path(run)).config["sweep"]["members"] == 4
    result = runner.invoke(app, [*base, "--runs", str(tmp_path / "b"), "--train-fraction",
                                 "0.5,1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    fractions = sorted(load_run(Path(r)).config["train_fraction"]
                       for r in json.loads(result.stdout)["runs"])  # fmt: skip
    assert fractions == [0.5, 1.0]
    for bad in (["--sweep", "lr=fast"], ["--train-fraction", "0,2"], ["--shots", "-1"]):
        result = runner.invoke(app, [*base, "--runs", str(tmp_path / "c"), *bad])
        assert result.exit_code == 2 and "error:" in result.output, result.output


def test_finetune_label_efficiency_subsets_train_only(tiny_data_ro: Path, tmp_path: Path) -> None:
    args = ["finetune", "--data", str(tiny_data_ro), "--runs", str(tmp_path), "--epochs", "1",
            "--train-fraction", "0.5", "--shots", "2", "--no-augment", "--json",
            *TINY_TUNE]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = [load_run(Path(r)) for r in json.loads(result.stdout)["runs"]]
    half, two = sorted(runs, key=lambda r: r.config["subset_tag"])
    assert half.config["subset_tag"] == "f0.5" and two.config["subset_tag"] == "k2"
    assert set(two.config["class_counts"]["train"].values()) == {2}
    assert half.config["train_images"] == sum(half.config["class_counts"]["train"].values())
    # Validation and test are the whole dataset's in both runs.
    assert half.config["class_counts"]["test"] == two.config["class_counts"]["test"]
    assert half.config["class_counts"]["val"] == two.config["class_counts"]["val"]
    assert half.config["dataset_fingerprint"] == two.config["dataset_fingerprint"]
    rows = (two.path / TRAIN_SUBSET_FILE).read_text().splitlines()
    assert rows[0] == "key,patient,label" and len(rows) == 1 + 4  # 2 images x 2 classes
