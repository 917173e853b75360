"""export: a run's whole model to ONNX, reproducing predictions.csv through onnxruntime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.compare import calibration_from_dict
from featurestore.errors import XrayError
from featurestore.runs import load_run
from featurestore.train import TrainConfig, finetune, fit_heads
from featurestore.use import OnnxModel, export_run, load_predictor

pytest.importorskip("onnxruntime")
torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A frozen (float16 store) and a fine-tuned resnet18 run on a tiny dataset, 32 px, in
    float32: the ONNX graph's arithmetic, so predictions.csv itself is the reference."""
    from featurestore.data import load_manifest
    from featurestore.store import extract_features

    root = tmp_path_factory.mktemp("export")
    data = write_tiny_dataset(root / "chest_xray")
    extract_features(load_manifest(data), model="resnet18", weights="none",
                     cache_dir=root / "cache", image_size=32, workers=0,
                     precision="fp32")  # fmt: skip
    (frozen,) = fit_heads(data=data, cache_dir=root / "cache", runs_dir=root / "runs",
                          config=TrainConfig(epochs=3, device="cpu"))  # fmt: skip
    tuned = finetune(data=data, model="resnet18", weights="none", image_size=32, workers=0,
                     runs_dir=root / "runs", augment=False,
                     config=TrainConfig(epochs=1, batch_size=8, device="cpu",
                                        precision="fp32"))  # fmt: skip
    return {"data": data, "frozen": frozen.path, "finetune": tuned.path, "root": root}


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_onnx_export_reproduces_predictions_csv(runs: dict[str, Path], mode: str) -> None:
    out = runs["root"] / f"{mode}.onnx"
    result = export_run(runs[mode], out)
    assert result.path == out and out.is_file()
    assert result.checked_images == 8
    assert result.max_abs_difference is not None and result.max_abs_difference < 1e-4
    assert result.predictions_agree
    # Independently of the built-in check: the file scores the test images like the run did.
    run = load_run(runs[mode])
    test = run.split_predictions("test")
    model = OnnxModel(out)
    rows = model.predict([runs["data"] / k for k in test["key"]], batch_size=3)
    p = np.array([r.probability for r in rows])
    np.testing.assert_allclose(p, test["probability"], rtol=0, atol=1e-4)
    names = [run.config["class_names"][i] for i in test["prediction"]]
    assert [r.prediction for r in rows] == names
    # Threshold, temperature and preprocessing travel with the model.
    meta = model.metadata
    assert meta["threshold"] == run.metrics["threshold"]["value"]
    cal = calibration_from_dict(run.metrics["calibration"])
    assert meta["temperature"] == pytest.approx(cal.temperature)
    assert meta["preprocessing"] == load_predictor(runs[mode], device="cpu").preprocessing.as_dict()
    # The graph's recalibrated output is the run's Platt scaling of its probability.
    from PIL import Image

    x = torch.stack([model.preprocessing(Image.open(runs["data"] / k).convert("RGB"))
                     for k in test["key"][:4]]).numpy()  # fmt: skip
    p4, q4, _ = model.run_batch(x)
    np.testing.assert_allclose(q4, cal.apply(p4), rtol=0, atol=1e-4)


def test_bf16_run_is_checked_against_its_model_in_fp32(runs: dict[str, Path]) -> None:
    """ONNX computes in float32: a bf16 run's export is checked like with like."""
    tuned = finetune(data=runs["data"], model="resnet18", weights="none", image_size=32,
                     workers=0, runs_dir=runs["root"] / "runs-bf16", augment=False,
                     config=TrainConfig(epochs=1, batch_size=8, device="cpu",
                                        precision="bf16"))  # fmt: skip
    assert load_run(tuned.path).config["resolved_precision"] == "bf16"
    result = export_run(tuned.path, runs["root"] / "bf16.onnx")
    assert result.reference == "the run's model in fp32"
    assert result.max_abs_difference is not None and result.max_abs_difference < 1e-4
    assert result.predictions_agree


def test_cli_export_and_predict_with_the_exported_model(runs: dict[str, Path]) -> None:
    out = runs["root"] / "cli.onnx"
    result = runner.invoke(app, ["export", "--run", str(runs["frozen"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max abs difference from predictions.csv" in result.stdout
    doc = json.loads(
        runner.invoke(
            app, ["predict", "--model", str(out), str(runs["data"] / "test"), "--json"]
        ).stdout
    )
    assert doc["model"] == str(out) and len(doc["rows"]) == 8
    via_run = json.loads(
        runner.invoke(
            app, ["predict", "--run", str(runs["frozen"]), str(runs["data"] / "test"), "--json"]
        ).stdout
    )
    for a, b in zip(doc["rows"], via_run["rows"], strict=True):
        assert a["prediction"] == b["prediction"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_refusals_are_one_line(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(XrayError, match="not a readable ONNX model"):
        OnnxModel(bad)
    with pytest.raises(XrayError, match="unknown --format"):
        export_run(runs["frozen"], tmp_path / "m.onnx", fmt="tflite")
    with pytest.raises(XrayError, match="test images"):
        export_run(runs["frozen"], tmp_path / "m.onnx", data=tmp_path / "nowhere")
    result = runner.invoke(app, ["predict", str(runs["data"] / "test")])
    assert result.exit_code == 2 and "--run RUN_FOLDER or --model" in result.stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(XrayError, match=r"pip install -e '\.\[onnx\]'"):
        export_run(runs["frozen"], tmp_path / "m.onnx")
