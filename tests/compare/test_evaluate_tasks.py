"""`evaluate_run` for every task (binary, multi-class, multi-label) on tiny synthetic data:
metrics recomputed by scikit-learn from the written predictions, classes matched by name,
recalibration keeping what it must keep."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset, write_tiny_kermany3, write_tiny_multilabel
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from featurestore.compare import evaluate_run
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError
from featurestore.runs import is_evaluation, load_run
from featurestore.train import TrainConfig, fit_heads

torch.set_num_threads(1)
TASKS = ("binary", "multiclass", "multilabel")
HEAD = TrainConfig(epochs=5, lr=0.05, batch_size=16, patience=5, device="cpu")


def _make(task: str, root: Path) -> tuple[Path, Path]:
    """(a frozen run of `task`, another site's dataset of the same task)."""
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    torch.manual_seed(0)
    if task == "binary":
        data = write_tiny_dataset(root / "chest_xray")
        other = write_tiny_dataset(root / "site_b" / "chest_xray", seed=1)
        labels = "as-given"
    elif task == "multiclass":
        data = write_tiny_kermany3(root / "chest_xray")
        other = write_tiny_kermany3(root / "site_b" / "chest_xray", seed=1)
        labels = "kermany3"
    else:
        data = write_tiny_multilabel(root / "ml")
        other = write_tiny_multilabel(root / "site_b" / "ml", seed=1)
        labels = "as-given"
    extract_features(
        load_manifest(data, labels=labels), model="resnet18", weights="none",
        cache_dir=root / "cache", image_size=32, workers=0,
    )  # fmt: skip
    (run,) = fit_heads(
        data=data, labels=labels, cache_dir=root / "cache", runs_dir=root / "runs", config=HEAD
    )
    return run.path, other


@pytest.fixture(scope="module", params=TASKS)
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp(f"evaluate-{request.param}")
    run, other = _make(request.param, root)
    return {"task": request.param, "root": root, "run": run, "other": other}


def _config(case: dict[str, Any], **kw: Any) -> EvaluateConfig:
    out = case["root"] / "evaluations"
    return EvaluateConfig(out_dir=out, store_dir=out / "stores", n_boot=200, device="cpu", **kw)


def _rows(path: Path, split: str) -> list[dict[str, str]]:
    with (path / "predictions.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def _probs(rows: list[dict[str, str]], names: list[str]) -> np.ndarray:
    return np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])


def test_every_task_agrees_with_sklearn_on_its_written_predictions(case: dict[str, Any]) -> None:
    result = evaluate_run(case["run"], case["other"], config=_config(case))
    assert is_evaluation(result.path) and result.task == case["task"]
    metrics = json.loads((result.path / "metrics.json").read_text())
    run = load_run(case["run"])
    names = list(run.config["class_names"])
    rows = _rows(result.path, "test")
    iv = metrics["intervals"]
    if case["task"] == "binary":
        y = np.array([int(r["label"]) for r in rows])
        p = np.array([float(r["probability"]) for r in rows])
        assert metrics["test"]["at_threshold"]["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        return
    if case["task"] == "multiclass":
        y = np.array([int(r["label"]) for r in rows])
        p = _probs(rows, names)
        pred = np.array([int(r["prediction"]) for r in rows])
        assert np.array_equal(pred, p.argmax(1))  # argmax, MULTICLASS_RULE
        m = metrics["test"]["argmax"]
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert m["roc_auc_macro"] == pytest.approx(
            roc_auc_score(y, p, multi_class="ovr", average="macro")
        )
        for k, c in enumerate(names):
            assert m[f"auc_{c}"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        a = iv["argmax"]["roc_auc_macro"]
        assert a["estimate"] == pytest.approx(m["roc_auc_macro"]) and a["lo"] <= a["hi"]
        assert metrics["threshold"]["policy"] == "argmax"
        internal = run.split_predictions("test")
        auc_i = roc_auc_score(internal["label"], internal["probabilities"], multi_class="ovr")
        d = metrics["internal_difference"]["roc_auc_macro"]
        assert d["internal"] == pytest.approx(auc_i)
        assert d["difference"] == pytest.approx(m["roc_auc_macro"] - auc_i)
        assert len(rows) == 18  # 9 patients x 2 images
        return
    per_label = run.metrics["threshold"]["per_label"]
    m = metrics["test"]["at_label_thresholds"]
    aucs = []
    for n in names:
        observed = [r for r in rows if r[f"y_{n}"] != ""]
        y = np.array([int(r[f"y_{n}"]) for r in observed])
        p = np.array([float(r[f"prob_{n}"]) for r in observed])
        pred = np.array([int(r[f"pred_{n}"]) for r in observed])
        assert metrics["threshold"]["per_label"][n] == per_label[n]  # the run's, from val
        assert np.array_equal(pred, (p >= per_label[n]).astype(int))
        auc = roc_auc_score(y, p)
        aucs.append(auc)
        assert m["labels"][n]["auc"] == pytest.approx(auc)
        assert iv["at_label_thresholds"][f"auc_{n}"]["estimate"] == pytest.approx(auc)
        assert m["labels"][n]["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert m["macro_auc"] == pytest.approx(np.mean(aucs))
    macro = iv["at_label_thresholds"]["roc_auc_macro"]
    assert macro["estimate"] == pytest.approx(np.mean(aucs))
    assert macro["lo"] <= macro["estimate"] <= macro["hi"]
    assert len(rows) == 16  # 8 patients x 2 images


def test_recalibration_keeps_the_decisions_rule_and_says_where_it_was_fitted(
    case: dict[str, Any],
) -> None:
    plain = evaluate_run(case["run"], case["other"], config=_config(case))
    # 4 of the 9 multi-class patients hold a misclassified image, so a temperature is fitted.
    n = 4 if case["task"] == "multiclass" else 3
    local = evaluate_run(case["run"], case["other"], config=_config(case, recalibrate=n))
    cal = json.loads((local.path / "metrics.json").read_text())["calibration"]
    assert cal["fitted_on"] == "calibration" and local.local is not None
    assert not any("argmax" in note for note in local.notes)  # no policy was asked for
    refitted = cal["method"] != "identity"
    assert cal["reported_probability"] == ("recalibrated" if refitted else "model output")
    # A fit that worsens calibration on the evaluated rows is said (ECE before -> after).
    worse = refitted and cal["test"]["ece_after"] > cal["test"]["ece_before"]
    assert any("worse calibrated" in note for note in local.notes) == worse
    source = json.loads((local.path / "evaluation.json").read_text())["threshold_source"]
    assert source == ("none (argmax)" if case["task"] == "multiclass"
                      else "the local calibration patients")  # fmt: skip
    held = set(local.local["patient_ids"])
    run = load_run(case["run"])
    names = list(run.config["class_names"])
    # The same test images with and without recalibration: only those not held out.
    raw = {r["key"]: r for r in _rows(plain.path, "test") if r["patient"] not in held}
    new = {r["key"]: r for r in _rows(local.path, "test")}
    assert set(raw) == set(new) and not held & {r["patient"] for r in new.values()}
    keys = sorted(new)
    if case["task"] == "binary":
        y = np.array([int(new[k]["label"]) for k in keys])
        a = np.array([float(raw[k]["probability"]) for k in keys])
        b = np.array([float(new[k]["probability"]) for k in keys])
        if cal["method"] == "platt":  # monotone: the ranking, so ROC-AUC, is unchanged
            assert roc_auc_score(y, b) == pytest.approx(roc_auc_score(y, a))
            assert not np.allclose(a, b)
        return
    a = _probs([raw[k] for k in keys], names)
    b = _probs([new[k] for k in keys], names)
    if case["task"] == "multiclass":
        assert cal["method"] == "temperature" and cal["temperature"] > 0
        t = cal["temperature"]
        assert cal["test"]["nll_after"] != cal["test"]["nll_before"]
        from scipy.special import softmax

        expected = softmax(np.log(np.maximum(a, np.finfo(float).tiny)) / t, axis=1)
        np.testing.assert_allclose(b, expected, atol=1e-6)
        assert np.array_equal(a.argmax(1), b.argmax(1))  # argmax never changes
        y = np.array([int(new[k]["label"]) for k in keys])
        m = json.loads((local.path / "metrics.json").read_text())["test"]["argmax"]
        assert m["accuracy"] == pytest.approx(accuracy_score(y, b.argmax(1)))
        assert m["accuracy"] == pytest.approx(accuracy_score(y, a.argmax(1)))
        return
    for k, n in enumerate(names):
        fit = cal["per_label"][n]
        observed = [i for i, key in enumerate(keys) if new[key][f"y_{n}"] != ""]
        y = np.array([int(new[keys[i]][f"y_{n}"]) for i in observed])
        if fit["method"] == "platt":
            assert fit["scale"] > 0  # never inverting
        if 0 < y.sum() < y.size:  # Platt per finding is monotone: its AUC is unchanged
            assert roc_auc_score(y, b[observed, k]) == pytest.approx(
                roc_auc_score(y, a[observed, k])
            )


def test_the_report_renders_every_tasks_external_section(
    case: dict[str, Any], tmp_path: Path
) -> None:
    from featurestore.compare import external_section, find_evaluations

    result = evaluate_run(case["run"], case["other"], config=_config(case))
    found = find_evaluations(case["root"] / "evaluations", {case["run"].name: "the run"})
    mine = [e for e in found if e["path"] == str(result.path)]
    assert len(mine) == 1 and mine[0]["task"] == case["task"]
    lines = external_section(mine)
    assert lines[0] == "## External validation"
    row = next(line for line in lines if line.startswith("| the run |"))
    assert f"{result.images} / {result.patients}" in row
    auc = {"binary": "roc_auc", "multiclass": "roc_auc_macro", "multilabel": "roc_auc_macro"}
    assert f"{result.intervals[auc[case['task']]]['estimate']:.3f}" in row


def test_multiclass_threshold_and_wrong_options_are_one_line(tmp_path: Path) -> None:
    """Refused before any model is loaded: a run folder with a multi-class config suffices."""
    run = tmp_path / "mc"
    run.mkdir()
    for name in ("history.csv", "metrics.json", "predictions.csv", "best.pt"):
        (run / name).write_text("epoch\n" if name == "history.csv" else "{}")
    (run / "predictions.csv").write_text("split,key,patient,label,probability,prediction\n")
    cfg = {"task": "multiclass", "class_names": ["NORMAL", "BACTERIAL", "VIRAL"]}
    (run / "config.json").write_text(json.dumps(cfg))
    data = write_tiny_kermany3(tmp_path / "chest_xray")
    for kw, match in (
        ({"threshold_policy": "youden"}, "argmax"),
        ({"uncertain": "zeros"}, "multi-label runs"),
    ):
        with pytest.raises(XrayError, match=match) as err:
            evaluate_run(run, data, config=EvaluateConfig(out_dir=tmp_path / "e", **kw))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("task", ["multiclass"])
def test_a_multiclass_csv_with_its_classes_in_another_order_is_matched_by_name(
    task: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A Kermany-3 run on a CSV listing VIRAL, NORMAL, BACTERIAL: the labels are renumbered
    into the run's order by name, so the numbers equal those of the folder it came from."""
    root = tmp_path_factory.mktemp("shuffled")
    run, other = _make(task, root)
    case = {"root": root}
    folder = evaluate_run(run, other, config=_config(case))
    from featurestore.data import load_manifest

    m = load_manifest(other, labels="kermany3")
    lines = ["path,label,split,patient"]
    for r in m.records:  # the same images, each with its class name
        lines.append(f"{other / r.key},{m.class_names[r.label]},{r.source_split},{r.group}")
    csv_path = root / "site_b.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    assert (
        load_manifest(csv_path).class_names != load_manifest(other, labels="kermany3").class_names
    )
    by_csv = evaluate_run(run, csv_path, config=_config(case))
    a = json.loads((folder.path / "metrics.json").read_text())["test"]["argmax"]
    b = json.loads((by_csv.path / "metrics.json").read_text())["test"]["argmax"]
    for metric in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro"):
        assert b[metric] == pytest.approx(a[metric])
    assert b["confusion_matrix"] == a["confusion_matrix"]


def test_a_multilabel_set_missing_a_finding_evaluates_the_shared_one_and_says_so(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("missing")
    run, other = _make("multilabel", root)
    lines = other.read_text().splitlines()
    head = lines[0].split(",")
    drop = head.index("Band")
    cut = [",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines]
    one = other.parent / "blob_only.csv"
    one.write_text("\n".join(cut) + "\n")
    said: list[str] = []
    result = evaluate_run(run, one, config=_config({"root": root}), notice=said.append)
    assert said and "Band" in said[0] and "\n" not in said[0]
    assert result.notes and "Band" in result.notes[0]
    evaluation = json.loads((result.path / "evaluation.json").read_text())
    assert evaluation["findings"] == ["Blob"] and evaluation["findings_left_out"] == ["Band"]
    m = json.loads((result.path / "metrics.json").read_text())["test"]["at_label_thresholds"]
    assert list(m["labels"]) == ["Blob"]


def test_the_command_prints_every_tasks_table(case: dict[str, Any]) -> None:
    from featurestore.cli.main import app
    from typer.testing import CliRunner

    out = case["root"] / "evaluations"
    args = ["evaluate", "--run", str(case["run"]), "--data", str(case["other"]), "--out",
            str(out), "--stores", str(out / "stores"), "--bootstrap", "100",
            "--device", "cpu"]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "calibration: ECE" in result.stdout and "evaluation folder:" in result.stdout
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    metric = {"binary": "roc_auc", "multiclass": "roc_auc_macro", "multilabel": "roc_auc_macro"}
    assert metric[case["task"]] in {r["metric"] for r in doc["rows"]}
    local = runner.invoke(app, [*args, "--recalibrate", "2"])
    assert local.exit_code == 0, local.output
    assert "local calibration: 2 patients" in local.stdout
    if case["task"] == "multiclass":
        refused = runner.invoke(app, [*args, "--threshold", "youden"])
        assert refused.exit_code == 2 and "argmax" in refused.stderr
    # `--weights-file` is the option's name, `--weights` still accepted; a binary/multi-class/
    # multi-label frozen run with random weights takes neither.
    for name in ("--weights-file", "--weights"):
        bad = runner.invoke(app, [*args, name, str(out / "missing.pt")])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output


def test_an_evaluation_folder_reads_back_through_compare_with_the_same_intervals(
    case: dict[str, Any],
) -> None:
    """One engine: `xray compare` on the evaluation folder (its predictions.csv) finds every
    interval `evaluate` wrote, on the same patient resamples (same seed and count)."""
    from featurestore.compare import compare_runs
    from featurestore.config import CompareConfig

    result = evaluate_run(case["run"], case["other"], config=_config(case))
    cmp = compare_runs([result.path], CompareConfig(n_boot=200, seed=0))
    (row,) = cmp.rows
    decision = cmp.decisions[0].name
    for metric in cmp.task.table_metrics:
        theirs, ours = row.metrics[decision][metric], result.intervals[metric]
        for field in ("estimate", "lo", "hi"):
            assert getattr(theirs, field) == pytest.approx(ours[field], abs=1e-12), metric
    # The dataset it describes is the one evaluated, not the training set (which said SYNTHETIC
    # when the runs had trained on synthetic data and the evaluated data were not).
    from featurestore.data import MARKER

    evaluated = json.loads((result.path / "evaluation.json").read_text())
    assert cmp.dataset["path"] == evaluated["data"]
    from featurestore.runs import run_dataset_root

    assert cmp.dataset["trained_on"] == str(run_dataset_root(load_run(case["run"]).config))
    trained_root = Path(cmp.dataset["trained_on"])
    (trained_root / MARKER).write_text("synthetic\n")
    try:
        again = compare_runs([result.path], CompareConfig(n_boot=100, seed=0))
        assert not again.dataset["synthetic"]
        assert not any(w.startswith("SYNTHETIC") for w in again.warnings)
    finally:
        (trained_root / MARKER).unlink()


def test_a_multi_label_evaluation_written_before_the_rename_still_reports(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """Folders written before the engine named the macro ROC-AUC `roc_auc_macro` (they say
    `macro_auc`) are read back by the report's external section under the new name."""
    import shutil

    from featurestore.compare import external_section, find_evaluations

    if case["task"] != "multilabel":
        pytest.skip("only multi-label evaluations were renamed")
    result = evaluate_run(case["run"], case["other"], config=_config(case))
    old = tmp_path / "evaluations" / result.path.name
    shutil.copytree(result.path, old)
    doc = json.loads((old / "metrics.json").read_text())
    (rule,) = doc["intervals"]
    doc["intervals"][rule]["macro_auc"] = doc["intervals"][rule].pop("roc_auc_macro")
    doc["internal_difference"]["macro_auc"] = doc["internal_difference"].pop("roc_auc_macro")
    (old / "metrics.json").write_text(json.dumps(doc))
    found = find_evaluations(old.parent, {case["run"].name: "the run"})
    row = next(line for line in external_section(found) if line.startswith("| the run |"))
    assert f"{result.intervals['roc_auc_macro']['estimate']:.3f}" in row


def test_two_csvs_of_one_name_in_two_folders_are_two_datasets(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A CSV's dataset is named after its folder too: `labels.csv` of site_b and of site_c are
    two evaluations with two names, not `labels` and `labels-2`."""
    root = tmp_path_factory.mktemp("two-csvs")
    run, other = _make("multilabel", root)
    third = write_tiny_multilabel(root / "site_c", seed=2)
    assert other.name == third.name == "labels.csv"
    names = []
    for data in (other, third):
        result = evaluate_run(run, data, config=_config({"root": root}))
        names.append(json.loads((result.path / "evaluation.json").read_text())["dataset"])
        assert f"-on-{names[-1]}-test" in result.path.name
    assert names == ["ml-labels-uignore", "site_c-labels-uignore"]  # and the uncertain policy


def test_an_old_binary_evaluation_folder_with_an_int_positives_count_still_describes() -> None:
    """Evaluation folders of the first `evaluate` record `positives` as an int (binary)."""
    from featurestore.compare import counts_line, describe_dataset
    from featurestore.runs import RunRecord

    cfg = {"class_names": ["NORMAL", "PNEUMONIA"], "positive_index": 1,
           "evaluation": {"data": "/nowhere/site_b", "split": "test", "positives": 12}}  # fmt: skip
    d = describe_dataset([RunRecord(Path("e"), cfg, {}, {}, {}, {})])
    assert d["path"] == "/nowhere/site_b" and d["class_counts"] is None
    assert counts_line(d) == ""
