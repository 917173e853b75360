"""export, predict --model and explain for every task: binary, multi-class and multi-label.

One tiny frozen run per task (resnet18, random init, 64 px so Grad-CAM's last stage is 2x2,
float32 extraction so predictions.csv itself is the reference of the float32 ONNX graph).
Tolerance: probabilities agree to 1e-4 absolute (float32 arithmetic in another runtime; the
run's head reads float16-rounded features both ways); every decision agrees exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset, write_tiny_kermany3, write_tiny_multilabel
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.errors import XrayError
from featurestore.runs import load_run
from featurestore.tasks import TASK_KINDS
from featurestore.train import TrainConfig
from featurestore.use import (
    NO_RECALIBRATION,
    OnnxModel,
    cam_to_image,
    export_run,
    load_predictor,
    overlay,
    predictor_cam,
)

pytest.importorskip("onnxruntime")
torch.set_num_threads(1)
runner = CliRunner()
HEAD = TrainConfig(epochs=3, lr=0.05, batch_size=16, patience=3, device="cpu")
ATOL = 1e-4
_RUNS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("every-task")


def task_run(root: Path, task: str, *, precision: str = "fp32") -> dict[str, Any]:
    """A tiny frozen run of `task` (built once per module and precision): data, run folder,
    test images."""
    name = task if precision == "fp32" else f"{task}-{precision}"
    if name in _RUNS and _RUNS[name]["run"].exists():
        return _RUNS[name]
    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    where = root / name
    labels: dict[str, Any] = {}
    if task == "binary":
        data = write_tiny_dataset(where / "chest_xray")
    elif task == "multiclass":
        data, labels = write_tiny_kermany3(where / "chest_xray"), {"labels": "kermany3"}
    else:
        data = write_tiny_multilabel(where / "ml")
    extract_features(
        load_manifest(data, **labels), model="resnet18", weights="none",
        cache_dir=where / "cache", image_size=64, workers=0, precision=precision,
    )  # fmt: skip
    (summary,) = fit_heads(
        data=data, cache_dir=where / "cache", runs_dir=where / "runs", config=HEAD, **labels
    )
    folder = data if data.is_dir() else data.parent
    keys = load_run(summary.path).split_predictions("test")["key"]
    tests = [folder / k for k in keys]
    _RUNS[name] = {"data": data, "run": summary.path, "root": where, "tests": tests}
    return _RUNS[name]


def recorded(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """predictions.csv's test probabilities and decisions, laid out as the ONNX outputs."""
    run = load_run(run_dir)
    test = run.split_predictions("test")
    if run.task.binary:
        return test["probability"], test["prediction"]
    if run.task.multiclass:
        return test["probabilities"], test["prediction"]
    return test["probabilities"], test["predictions"]


@pytest.mark.parametrize("task", TASK_KINDS)
def test_export_reproduces_predictions_csv(root: Path, task: str) -> None:
    info = task_run(root, task)
    run = load_run(info["run"])
    out = info["root"] / "model.onnx"
    result = export_run(info["run"], out)
    ref_p, ref_d = recorded(info["run"])
    assert result.reference == "predictions.csv"
    assert result.recorded_max_abs_difference == result.max_abs_difference
    assert result.recorded_decisions_differ == 0 and result.recorded_precision == "float32"
    assert result.checked_images == len(ref_d) > 0
    assert result.max_abs_difference is not None and result.max_abs_difference < ATOL
    assert result.predictions_agree
    # Independently of the built-in check: every probability column and every decision.
    model = OnnxModel(out)
    from featurestore.data import decode_image

    images = [decode_image(p, min_size=model.preprocessing.resize) for p in info["tests"]]
    outs = model.run_images(images, batch_size=3)
    assert len(outs) == (3 if task == "binary" else 2)
    np.testing.assert_allclose(outs[0], ref_p, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(outs[-1], ref_d)
    if task != "binary":
        assert outs[0].shape == (len(ref_d), len(run.task.class_names))
    meta = model.metadata
    assert meta["task"] == task and meta["class_names"] == list(run.task.class_names)
    assert meta["decision_rule"] == run.task.decision_rule
    if task == "binary":
        assert meta["threshold"] == run.metrics["threshold"]["value"]
        assert meta["calibration"]["method"] in ("platt", "identity")
    else:
        assert meta["threshold"] is None and meta["temperature"] is None
        assert meta["calibration"] == {"method": "none", "note": NO_RECALIBRATION}
    if task == "multilabel":
        assert meta["label_thresholds"] == run.metrics["threshold"]["per_label"]
        # The graph applies each finding's own threshold, not one for all.
        p = outs[0]
        t = np.array([meta["label_thresholds"][c] for c in run.task.class_names])
        np.testing.assert_array_equal(outs[1], (p >= t).astype(np.int64))
    if task == "multiclass":
        np.testing.assert_allclose(outs[0].sum(1), 1.0, atol=1e-5)  # softmax, not sigmoid
    cli = runner.invoke(app, ["export", "--run", str(info["run"]), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert "max abs difference from predictions.csv" in cli.stdout
    if task != "binary":
        assert NO_RECALIBRATION in " ".join(cli.stdout.split())


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_bf16_run_is_checked_against_its_model_in_fp32(root: Path, task: str) -> None:
    """ONNX computes in float32: a bf16 store's run is checked like with like, every column."""
    info = task_run(root, task, precision="bf16")
    out = info["root"] / "bf16.onnx"
    result = export_run(info["run"], out)
    assert result.reference == "the run's model in fp32"
    assert result.max_abs_difference is not None and result.max_abs_difference < ATOL
    assert result.predictions_agree
    # How far the file is from the run's reported bf16 figures is measured and said, not hidden.
    from featurestore.data import decode_image

    model = OnnxModel(out)
    p = model.run_images([decode_image(k, min_size=model.preprocessing.resize)
                          for k in info["tests"]])[0]  # fmt: skip
    ref_p, _ = recorded(info["run"])
    assert result.recorded_precision == "bf16"
    assert result.recorded_max_abs_difference == pytest.approx(np.abs(p - ref_p).max(), abs=1e-6)
    assert 0 <= (result.recorded_decisions_differ or 0) <= result.checked_images
    cli = runner.invoke(app, ["export", "--run", str(info["run"]), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    said = " ".join(cli.stdout.split())
    assert "against predictions.csv (the run's reported figures, computed in bf16)" in said


@pytest.mark.parametrize("task", TASK_KINDS)
def test_predict_with_the_onnx_model_matches_predict_with_the_run(root: Path, task: str) -> None:
    info = task_run(root, task)
    out = info["root"] / "predict.onnx"
    export_run(info["run"], out, check=False)
    images = [str(p) for p in info["tests"]]

    def rows(*where: str) -> list[dict[str, Any]]:
        result = runner.invoke(app, ["predict", *where, "--device", "cpu", "--json", *images])
        assert result.exit_code == 0, result.output
        return list(json.loads(result.stdout)["rows"])

    via_onnx, via_run = rows("--model", str(out)), rows("--run", str(info["run"]))
    assert len(via_onnx) == len(via_run) == len(images)
    names = list(load_run(info["run"]).task.class_names)
    columns = ["probability"] if task == "binary" else [f"P({c})" for c in names]
    for a, b in zip(via_onnx, via_run, strict=True):
        assert set(a) == set(b) and a["path"] == b["path"]
        assert a["prediction"] == b["prediction"]
        for c in columns:
            assert a[c] == pytest.approx(b[c], abs=ATOL)
    # Both give predictions.csv's decisions (multi-label: the findings decided present).
    _, decided = recorded(info["run"])
    if task == "multilabel":
        expected = ["|".join(c for c, d in zip(names, row, strict=True) if d) or "No Finding"
                    for row in decided]  # fmt: skip
    else:
        expected = [names[int(k)] for k in decided]
    assert [r["prediction"] for r in via_onnx] == expected


def expected_overlay(predictor: Any, path: Path, target: int) -> np.ndarray:
    """The overlay of class/finding `target` on one image, computed here one image at a time."""
    from featurestore.data import decode_image

    small, full = predictor.load_image(path), decode_image(path)
    cams, _ = predictor_cam(predictor, predictor.preprocessing(small)[None], target=target)
    heat = cam_to_image(cams[0].numpy(), predictor.preprocessing, small.size, full.size)
    return np.asarray(overlay(full, heat), dtype=np.int16)


@pytest.mark.parametrize("task", TASK_KINDS)
def test_explain_targets_the_tasks_class(root: Path, task: str, tmp_path: Path) -> None:
    """Binary: the positive class. Multi-class: each image's predicted class, or --class.
    Multi-label: each finding present (else the most probable), or --class for every image."""
    from PIL import Image

    info = task_run(root, task)
    predictor = load_predictor(info["run"], device="cpu")
    names = predictor.class_names
    images = info["tests"][:4]
    predicted = predictor.predict(images)

    def explain(*extra: str) -> list[dict[str, Any]]:
        out = tmp_path / ("-".join(extra) or "default")
        result = runner.invoke(
            app, ["explain", "--run", str(info["run"]), "--out", str(out), "--device", "cpu",
                  "--json", *extra, *map(str, images)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return list(json.loads(result.stdout)["rows"])

    def targets_default(pred: Any) -> list[str]:
        if task == "binary":
            return [names[predictor.positive_index]]
        if task == "multiclass":
            return [pred.prediction]
        if pred.prediction != "No Finding":
            return str(pred.prediction).split("|")
        probs = pred.probabilities or {}
        return [max(probs, key=lambda c: probs[c])]

    differs = []
    chosen_runs = (
        ((), None),
        (("--class", names[-1]), names[-1]),
        (("--class", names[0]), names[0]),
    )
    for extra, chosen in chosen_runs:
        rows = explain(*extra)
        for image, pred in zip(images, predicted, strict=True):
            mine = [r for r in rows if r["path"] == str(image)]
            wanted = [chosen] if chosen is not None else targets_default(pred)
            assert len(mine) == len(wanted)
            for row, name in zip(mine, wanted, strict=True):
                assert row["map of"] == name  # the class whose map and probability this is
                k = names.index(name)
                got = np.asarray(Image.open(row["heatmap"]).convert("RGB"), dtype=np.int16)
                assert np.abs(got - expected_overlay(predictor, image, k)).max() <= 2
                others = [
                    expected_overlay(predictor, image, j) for j in range(len(names)) if j != k
                ]
                differs.append(any(bool(np.abs(got - o).max() > 2) for o in others))
                probs = pred.probabilities or {}
                if task == "binary":  # P(the map's class); the decision stays at the threshold
                    p_map = (
                        pred.probability if k == predictor.positive_index else 1 - pred.probability
                    )
                    assert row["probability"] == pytest.approx(p_map, abs=1e-5)
                    assert row["prediction"] == pred.prediction
                else:  # the explained class's (or finding's) probability
                    assert row["probability"] == pytest.approx(probs[name], abs=1e-5)
                if task == "multilabel":
                    assert row["prediction"] == name
                if task == "multiclass":
                    assert row["prediction"] == pred.prediction
    assert any(differs)  # the maps depend on the target: the checks above can fail


@pytest.mark.parametrize("task", TASK_KINDS)
def test_report_heatmaps_for_every_task(root: Path, task: str, tmp_path: Path) -> None:
    """compare's "What the model looks at": picked test images with the probability
    predictions.csv gives them, per true class (binary, multi-class) or, multi-label, per
    finding present and absent at its validation threshold, each with its heatmap file."""
    from featurestore.use import (
        MULTILABEL_PICKS,
        pick_finding_images,
        pick_test_images,
        report_section,
    )

    info = task_run(root, task)
    record = load_run(info["run"])
    lines = report_section([record], tmp_path / "explain", n=2, device="cpu")
    test = record.split_predictions("test")
    row_of = {str(k): i for i, k in enumerate(test["key"])}
    if task == "multilabel":
        with pytest.raises(XrayError, match="findings instead"):
            pick_test_images(record, 2)
        per = record.metrics["threshold"]["per_label"]
        groups = pick_finding_images(record, 2)
        assert list(groups) == list(record.task.class_names)
        for k, (finding, picked) in enumerate(groups.items()):
            assert f"#### {finding}" in lines
            observed = ~np.isnan(test["targets"][:, k])
            present = int(np.nansum(test["targets"][:, k]))
            want = min(2, present) + min(2, int(observed.sum()) - present)
            assert len(picked) == want > 0  # two per side where the test set has them
            for key, label, decided, prob in picked:
                i = row_of[key]
                assert label == test["targets"][i, k] and prob == test["probabilities"][i, k]
                assert decided == int(prob >= per[finding])
        assert f"| image | true | predicted | P({finding}) | heatmap |" in lines
        subdirs = {p.name for p in (tmp_path / "explain" / record.name).iterdir()}
        assert subdirs == set(record.task.class_names)  # the tiny set's names are folder-safe
        n_links = sum(len(p) for p in groups.values())
    else:
        with pytest.raises(XrayError, match="pick_test_images"):
            pick_finding_images(record, 2)
        picked = pick_test_images(record, 2)
        for key, label, pred, prob in picked:
            i = row_of[key]
            assert (label, pred) == (test["label"][i], test["prediction"][i])
            if task == "binary":
                assert prob == test["probability"][i]
            else:  # P(predicted class), the argmax
                assert prob == test["probabilities"][i].max() == test["probabilities"][i, pred]
        shown = "P(positive)" if task == "binary" else "P(predicted)"
        assert f"| image | true | predicted | {shown} | heatmap |" in lines
        n_links = len(picked)
    assert not any(MULTILABEL_PICKS in ln for ln in lines)
    links = [ln for ln in lines if "[png](" in ln]
    assert len(links) == n_links > 0
    for ln in links:
        rel = ln.split("[png](")[1].split(")")[0]
        assert (tmp_path / rel).is_file()


def test_weights_file_option_and_its_old_name(root: Path, tmp_path: Path) -> None:
    """`--weights-file` (and `--weights`, its old name) is the run's state-dict file only."""
    info = task_run(root, "binary")
    image = str(info["tests"][0])
    stray = tmp_path / "w.pt"
    torch.save({}, stray)
    for flag in ("--weights-file", "--weights"):
        result = runner.invoke(
            app, ["predict", "--run", str(info["run"]), flag, str(stray), "--device", "cpu", image]
        )
        assert result.exit_code == 2
        assert "--weights-file is not needed" in " ".join(result.stderr.split())
    for command in ("predict", "explain", "export"):
        text = " ".join(runner.invoke(app, [command, "--help"]).stdout.split())
        assert "--weights-file" in text and "state-dict file" in text
