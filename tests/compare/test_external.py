"""featurestore.compare.external: `evaluate_run` end to end on tiny data, local calibration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_tiny_store, write_tiny_dataset
from sklearn.metrics import accuracy_score, brier_score_loss, recall_score, roc_auc_score

from featurestore.compare import (
    calibration_patients,
    compare_runs,
    evaluate_run,
    render_markdown,
    write_report,
)
from featurestore.config import EvaluateConfig
from featurestore.errors import XrayError
from featurestore.runs import is_evaluation, list_runs, load_run
from featurestore.train import TrainConfig, finetune, fit_heads

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A frozen and a fine-tuned run on one tiny dataset, and another site's tiny dataset
    whose folder has the same name (chest_xray) but other images and patients."""
    root = tmp_path_factory.mktemp("external")
    stores = extract_tiny_store(root)
    torch.manual_seed(0)
    (frozen,) = fit_heads(
        store=stores["store"], runs_dir=root / "runs", config=TrainConfig(epochs=5)
    )
    tuned = finetune(
        data=stores["data"], model="resnet18", weights="none", image_size=32, augment=False,
        workers=0, runs_dir=root / "runs",
        config=TrainConfig(epochs=1, batch_size=8, device="cpu"),
    )  # fmt: skip
    other = write_tiny_dataset(root / "site_b" / "chest_xray", seed=1)
    return {"root": root, "frozen": frozen.path, "finetune": tuned.path, "other": other,
            "cache": stores["cache"]}  # fmt: skip


def _config(env: dict[str, Path], **kw: object) -> EvaluateConfig:
    out = env["root"] / "evaluations"
    return EvaluateConfig(out_dir=out, store_dir=out / "stores", n_boot=200, device="cpu", **kw)  # type: ignore[arg-type]


def _rows(path: Path, split: str) -> dict[str, np.ndarray]:
    with (path / "predictions.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    return {
        "key": np.array([r["key"] for r in rows]),
        "patient": np.array([r["patient"] for r in rows]),
        "label": np.array([int(r["label"]) for r in rows]),
        "probability": np.array([float(r["probability"]) for r in rows]),
        "prediction": np.array([int(r["prediction"]) for r in rows]),
    }


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_evaluate_end_to_end_agrees_with_sklearn_on_its_predictions(
    env: dict[str, Path], mode: str
) -> None:
    result = evaluate_run(env[mode], env["other"], config=_config(env))
    path = result.path
    assert is_evaluation(path) and path.parent == env["root"] / "evaluations"
    for name in ("config.json", "metrics.json", "predictions.csv", "evaluation.json"):
        assert (path / name).is_file()
    for plot in ("reliability.png", "roc.png", "confusion.png"):
        assert (path / "plots" / plot).stat().st_size > 0
    run = load_run(env[mode])
    metrics = json.loads((path / "metrics.json").read_text())
    # The run's own threshold, chosen on the run's validation set.
    assert metrics["threshold"]["value"] == run.metrics["threshold"]["value"]
    assert metrics["threshold"]["chosen_on"] == "val"
    rows = _rows(path, "test")
    assert rows["key"].size == 8  # the other site's test split: 4 patients x 2 images
    y, p, t = rows["label"], rows["probability"], metrics["threshold"]["value"]
    pred = (p >= t).astype(int)
    assert np.array_equal(rows["prediction"], pred)
    at = metrics["test"]["at_threshold"]
    assert at["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert at["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert at["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert at["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert at["brier"] == pytest.approx(brier_score_loss(y, p))
    iv = metrics["intervals"]["at_threshold"]["accuracy"]
    assert iv["estimate"] == pytest.approx(at["accuracy"])
    assert iv["lo"] <= iv["estimate"] <= iv["hi"]
    # The difference from the run's internal test result, from the same numbers.
    internal = run.split_predictions("test")
    t_run = run.metrics["threshold"]["value"]
    acc_int = accuracy_score(internal["label"], (internal["probability"] >= t_run).astype(int))
    diff = metrics["internal_difference"]["accuracy"]
    assert diff["internal"] == pytest.approx(acc_int)
    assert diff["difference"] == pytest.approx(at["accuracy"] - acc_int)
    assert diff["lo"] <= diff["difference"] <= diff["hi"]
    cal = metrics["calibration"]
    assert cal["fitted_on"] == "val" and "ece_before" in cal["test"]
    assert cal["ece"] == pytest.approx(at["ece"])


def test_frozen_runs_reuse_a_provenance_checked_store_outside_the_training_cache(
    env: dict[str, Path],
) -> None:
    training_stores = sorted(env["cache"].rglob("*.h5"))
    before = {p: p.stat().st_mtime_ns for p in training_stores}
    first = evaluate_run(env["frozen"], env["other"], config=_config(env))
    stores = sorted((env["root"] / "evaluations" / "stores").rglob("*.h5"))
    assert len(stores) == 1 and stores[0].parent.name.startswith("chest_xray-")
    mtime = stores[0].stat().st_mtime_ns
    second = evaluate_run(env["frozen"], env["other"], config=_config(env))
    assert stores[0].stat().st_mtime_ns == mtime  # reused, not extracted again
    assert first.path != second.path  # a second folder, never an overwrite
    assert {p: p.stat().st_mtime_ns for p in training_stores} == before
    # Same external set: compare takes both; mixed with the run's own test set it refuses.
    cmp = compare_runs([first.path, second.path])
    # Both rows say what they scored; two evaluations alike get their folder names too.
    assert all(" on chest_xray" in r.label for r in cmp.rows)
    assert len({r.label for r in cmp.rows}) == 2
    with pytest.raises(XrayError, match="different test sets"):
        compare_runs([env["frozen"], first.path])
    # The evaluations live apart from runs/, so a bare `xray compare` is unaffected.
    assert all(not is_evaluation(p) for p in list_runs(env["root"] / "runs"))


def test_local_recalibration_takes_whole_patients_out_and_says_so(env: dict[str, Path]) -> None:
    result = evaluate_run(
        env["frozen"], env["other"], config=_config(env, recalibrate=2, threshold_policy="f1")
    )
    assert result.path.name.endswith("-local2")
    cal_rows, test_rows = _rows(result.path, "calibration"), _rows(result.path, "test")
    assert len(set(cal_rows["patient"])) == 2
    assert not set(cal_rows["patient"]) & set(test_rows["patient"])
    assert cal_rows["key"].size + test_rows["key"].size == 8
    assert set(cal_rows["label"]) == {0, 1}  # stratified: both classes when n allows
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics["threshold"]["chosen_on"] == "calibration"
    assert metrics["threshold"]["policy"] == "f1"
    assert metrics["calibration"]["fitted_on"] == "calibration"
    assert metrics["test"]["at_threshold"]["n"] == test_rows["key"].size
    evaluation = json.loads((result.path / "evaluation.json").read_text())
    assert evaluation["local_calibration"]["patient_ids"] == sorted(set(cal_rows["patient"]))


def test_a_new_policy_is_chosen_on_the_runs_validation_not_the_evaluated_split(
    env: dict[str, Path],
) -> None:
    from featurestore.compare import choose_threshold

    result = evaluate_run(
        env["frozen"], env["other"], config=_config(env, threshold_policy="sensitivity:0.95")
    )
    val = load_run(env["frozen"]).split_predictions("val")
    expected = choose_threshold(val["label"], val["probability"], policy="sensitivity:0.95")
    assert result.threshold["value"] == expected
    assert result.threshold["reached"]["sensitivity"] >= 0.95
    # The internal side of each difference is decided by the same new threshold, so the
    # difference is the change of site alone, not also the change of threshold.
    internal = load_run(env["frozen"]).split_predictions("test")
    pred = (internal["probability"] >= expected).astype(int)
    for metric, pos in (("sensitivity", 1), ("specificity", 0)):
        want = recall_score(internal["label"], pred, pos_label=pos)
        assert result.difference[metric]["internal"] == pytest.approx(want)


def test_calibration_patients_are_seeded_stratified_and_whole() -> None:
    groups = np.repeat([f"p{i}" for i in range(20)], 3)  # 20 patients x 3 images
    labels = np.repeat(np.arange(20) % 4 == 0, 3).astype(int)  # 5 positive patients
    mask = calibration_patients(groups, 8, labels=labels, seed=3)
    chosen = set(groups[mask])
    assert len(chosen) == 8 and mask.sum() == 24
    assert not chosen & set(groups[~mask])
    assert int(labels[mask].sum()) // 3 == 2  # 8 x 5/20 positive patients
    again = calibration_patients(groups[::-1], 8, labels=labels[::-1], seed=3)
    assert set(groups[::-1][again]) == chosen  # independent of the order of the rows
    with pytest.raises(XrayError, match="leave some patients"):
        calibration_patients(groups, 20)
    with pytest.raises(XrayError, match="at least 1"):
        calibration_patients(groups, 0)


def test_other_class_names_are_refused(env: dict[str, Path], tmp_path: Path) -> None:
    other = write_tiny_dataset(tmp_path / "renamed", seed=2)
    (other / "test" / "PNEUMONIA").rename(other / "test" / "COVID")
    for split in ("train", "val"):
        (other / split / "PNEUMONIA").rename(other / split / "COVID")
    with pytest.raises(XrayError, match="same labels"):
        evaluate_run(env["frozen"], other, config=_config(env))


def test_the_report_gains_an_external_validation_section(
    env: dict[str, Path], tmp_path: Path
) -> None:
    evaluate_run(env["frozen"], env["other"], config=_config(env))
    plain = compare_runs([env["frozen"]])
    assert plain.external == [] and "External validation" not in render_markdown(plain, [])
    cmp = compare_runs([env["frozen"]], evaluations=env["root"] / "evaluations")
    assert cmp.external and {e["run"] for e in cmp.external} == {env["frozen"].name}
    report = write_report(cmp, tmp_path / "report").read_text()
    assert "## External validation" in report
    row = next(line for line in report.splitlines() if "chest_xray (test)" in line)
    assert row.startswith(f"| {cmp.rows[0].label} |") and "8 / 4" in row
    # Two patients per class: class-conditioned intervals are unreliable, and the report marks
    # each one as `evaluate` recorded it (it used to drop the mark).
    section = report[report.index("## External validation") :].splitlines()
    start = next(k for k, line in enumerate(section) if line.startswith("|---"))
    rows = section[start + 1 : start + 1 + len(cmp.external)]
    shown = [m for m in cmp.task.table_metrics if m != "loss"]
    for e, line in zip(cmp.external, rows, strict=True):
        assert e["intervals"]["sensitivity"]["reliable"] is False
        cells = [c.strip() for c in line.strip("|").split("|")]
        marked = sum(e["intervals"][m].get("reliable") is False for m in shown)
        marked += sum(e["difference"][m].get("reliable") is False for m in ("accuracy", "roc_auc"))
        assert marked and sum(c.endswith("\u2020") for c in cells) == marked, line
    assert "\u2020: unreliable interval" in report
    assert json.loads((tmp_path / "report" / "comparison.json").read_text())["external"]


def test_a_multiclass_threshold_is_one_line_before_any_model_is_loaded(
    env: dict[str, Path], tmp_path: Path
) -> None:
    """Issue #28.5: evaluate on a multi-class run was a traceback (float(None)); multi-class
    runs are evaluated now (tests/compare/test_evaluate_tasks.py), and a threshold policy,
    which argmax decisions do not take, is one line."""
    import shutil

    run = tmp_path / "mc-run"
    shutil.copytree(env["frozen"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(task="multiclass", class_names=["NORMAL", "BACTERIAL", "VIRAL"])
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(XrayError, match="argmax") as err:
        evaluate_run(run, env["other"], config=_config(env, threshold_policy="f1"))
    assert "\n" not in str(err.value)


def test_classes_are_matched_by_name_not_by_order(tmp_path: Path) -> None:
    """Issue #28.9: the same classes listed in another order were refused; they are renumbered
    into the run's order by name."""
    from featurestore.compare import match_classes
    from featurestore.data import Manifest, Record

    records = (Record("a.png", 0, "test", "p1", "test"), Record("b.png", 1, "test", "p2", "test"))
    m = Manifest(tmp_path, "csv", ("PNEUMONIA", "NORMAL"), records)
    out = match_classes(m, ("NORMAL", "PNEUMONIA"), "run", tmp_path)
    assert out.class_names == ("NORMAL", "PNEUMONIA")
    assert [(r.key, out.class_names[r.label]) for r in out.records] == [
        ("a.png", "PNEUMONIA"),
        ("b.png", "NORMAL"),
    ]
    with pytest.raises(XrayError, match="same labels"):
        match_classes(m, ("NORMAL", "COVID"), "run", tmp_path)


def test_an_external_dataset_is_scored_as_it_is_with_no_validation_carved_from_its_train(
    env: dict[str, Path],
) -> None:
    """Nothing trains on another site's data: a train split of two patients (too few to carve
    a validation set from) and no val split still give an evaluation of its whole test split."""
    import shutil

    from featurestore.data import load_manifest

    site = env["root"] / "site_c" / "chest_xray"
    shutil.copytree(env["other"], site)
    shutil.rmtree(site / "val")
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((site / "train" / cls).iterdir())
        for f in files[1:]:
            f.unlink()  # one image of one patient per class is left
    with pytest.raises(XrayError, match="cannot carve"):
        load_manifest(site)  # as training would read it
    result = evaluate_run(env["finetune"], site, config=_config(env))
    n_test = sum(1 for _ in (site / "test").rglob("*.jpeg"))
    assert json.loads((result.path / "evaluation.json").read_text())["images"] == n_test
