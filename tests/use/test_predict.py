"""predict: rebuild a run's model from its folder and reproduce its predictions from images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.errors import XrayError
from featurestore.runs import load_run
from featurestore.train import TrainConfig
from featurestore.use import expand_inputs, load_predictor

torch.set_num_threads(1)
HEAD = TrainConfig(epochs=3, lr=0.05, batch_size=16, patience=3, device="cpu")
TUNE = TrainConfig(epochs=1, lr=1e-3, batch_size=8, patience=2, device="cpu", backbone_lr_mult=0.1)


def frozen_run(
    data: Path, root: Path, *, image_size: int, dtype: str, head: str = "linear"
) -> Path:
    """extract (resnet18, random init) + fit-head on `data`; returns the run folder."""
    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    extract_features(
        load_manifest(data), model="resnet18", weights="none", cache_dir=root / "cache",
        image_size=image_size, workers=0, dtype=dtype,
    )  # fmt: skip
    (summary,) = fit_heads(
        data=data, cache_dir=root / "cache", runs_dir=root / "runs", head=head, config=HEAD
    )
    return summary.path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("predict") / "chest_xray")


@pytest.fixture(scope="module")
def frozen16(tiny: Path) -> Path:
    """A frozen run on float16 features (extract's default dtype)."""
    return frozen_run(tiny, tiny.parent / "f16", image_size=32, dtype="float16")


@pytest.fixture(scope="module")
def finetuned(tiny: Path) -> Path:
    from featurestore.train import finetune

    return finetune(
        data=tiny, model="resnet18", weights="none", image_size=32,
        runs_dir=tiny.parent / "ft", config=TUNE,
    ).path  # fmt: skip


def test_probabilities(run_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(recorded, predicted) test probabilities and predicted class names."""
    run = load_run(run_dir)
    test = run.split_predictions("test")
    predictor = load_predictor(run_dir, device="cpu")
    rows = predictor.predict([data / k for k in test["key"]], batch_size=5)
    assert [r.error for r in rows] == [None] * len(rows)
    names = [run.config["class_names"][int(i)] for i in test["prediction"]]
    assert [r.prediction for r in rows] == names
    return test["probability"], np.array([r.probability for r in rows]), names


test_probabilities.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_frozen_run_from_images_reproduces_predictions_csv(frozen16: Path, tiny: Path) -> None:
    # The head saw float16-rounded features; the predictor rounds the trunk's output the same
    # way, and runs the trunk as extract did (channels_last), so the match is to float32 noise.
    recorded, predicted, _ = test_probabilities(frozen16, tiny)
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)


def test_finetune_run_from_images_reproduces_predictions_csv(finetuned: Path, tiny: Path) -> None:
    recorded, predicted, _ = test_probabilities(finetuned, tiny)
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)


def test_a_head_trained_in_bf16_is_predicted_in_bf16(frozen16: Path, tiny: Path) -> None:
    """fit-head --precision bf16: the head trains and is scored under bf16 autocast, and
    predict (which scores frozen heads in float32 otherwise) runs it the same way."""
    from dataclasses import replace

    from featurestore.train import fit_heads

    root = tiny.parent / "f16"
    (summary,) = fit_heads(data=tiny, cache_dir=root / "cache", runs_dir=root / "bf16-head",
                           config=replace(HEAD, precision="bf16"))  # fmt: skip
    assert load_run(summary.path).config["precision"] == "bf16"
    assert load_run(frozen16).config["precision"] is None  # auto: recorded as asked
    recorded, predicted, _ = test_probabilities(summary.path, tiny)
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_mlp_head_on_float32_store(tiny: Path, tmp_path: Path) -> None:
    run = frozen_run(tiny, tmp_path, image_size=32, dtype="float32", head="mlp")
    recorded, predicted, _ = test_probabilities(run, tiny)
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_radiographs_predict_equals_predictions_csv(realsample: Path, tmp_path: Path) -> None:
    run = frozen_run(realsample, tmp_path, image_size=48, dtype="float16")
    recorded, predicted, _ = test_probabilities(run, realsample)
    assert len(recorded) == 23
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)


def test_unreadable_and_missing_files_become_error_rows(
    frozen16: Path, tiny: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg at all")
    good = sorted((tiny / "test" / "NORMAL").iterdir())[0]
    predictor = load_predictor(frozen16, device="cpu")
    rows = predictor.predict([bad, good, tmp_path / "gone.png"], batch_size=2)
    assert [r.path for r in rows] == [str(bad), str(good), str(tmp_path / "gone.png")]
    assert rows[0].probability is None and "broken.jpeg" in (rows[0].error or "")
    assert rows[1].error is None and 0.0 <= (rows[1].probability or -1) <= 1.0
    assert "not found" in (rows[2].error or "")


def test_expand_inputs_recurses_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".cache").mkdir()
    for name in ("a/z.png", "a/b.JPG", "a/deep/c.jpeg", "a/.hidden.png", "a/.cache/d.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    single = tmp_path / "single.png"
    got = expand_inputs([single, tmp_path / "a"])
    assert got == [single] + [tmp_path / "a" / n for n in ("b.JPG", "deep/c.jpeg", "z.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(XrayError, match="holds no images"):
        expand_inputs([tmp_path / "empty"])


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_predict_preprocesses_as_the_run_recorded(
    mode: str, frozen16: Path, finetuned: Path, tiny: Path, tmp_path: Path
) -> None:
    """The predictor's preprocessing is the one the run recorded (the store's for frozen runs),
    not one recomputed from the backbone name: edit the record and the predictions follow."""
    run_dir = frozen16 if mode == "frozen" else finetuned
    doc = json.loads((run_dir / "config.json").read_text())
    recorded = doc["store"]["preprocessing"] if mode == "frozen" else doc["preprocessing"]
    assert load_predictor(run_dir, device="cpu").preprocessing.as_dict() == recorded
    edited_run = tmp_path / "edited"
    shutil.copytree(run_dir, edited_run)
    edited = {**recorded, "mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7], "resize": 40}
    if mode == "frozen":
        doc["store"]["preprocessing"] = edited
    else:
        doc["preprocessing"] = edited
    (edited_run / "config.json").write_text(json.dumps(doc))
    predictor = load_predictor(edited_run, device="cpu")
    assert predictor.preprocessing.as_dict() == edited
    keys = load_run(run_dir).split_predictions("test")["key"]
    before = load_predictor(run_dir, device="cpu").predict([tiny / k for k in keys])
    after = predictor.predict([tiny / k for k in keys])
    assert [r.probability for r in after] != [r.probability for r in before]


def test_run_from_elsewhere_is_refused(frozen16: Path, finetuned: Path, tmp_path: Path) -> None:
    alien = tmp_path / "alien"
    shutil.copytree(finetuned, alien)
    doc = json.loads((alien / "config.json").read_text())
    with pytest.raises(XrayError, match="unknown backbone"):
        (alien / "config.json").write_text(json.dumps({**doc, "model": "vit_b_16"}))
        load_predictor(alien)
    with pytest.raises(XrayError, match="not a run of this xray"):
        (alien / "config.json").write_text(json.dumps({**doc, "mode": "lora"}))
        load_predictor(alien)
    # A resnet50 config over resnet18 weights: the state dict does not fit.
    (alien / "config.json").write_text(json.dumps({**doc, "model": "resnet50"}))
    with pytest.raises(XrayError, match="does not fit a resnet50"):
        load_predictor(alien)
    torch.save({"something": torch.zeros(2)}, alien / "best.pt")
    (alien / "config.json").write_text(json.dumps(doc))
    with pytest.raises(XrayError, match="does not fit"):
        load_predictor(alien)
    with pytest.raises(XrayError, match="not a complete run folder"):
        load_predictor(tmp_path)
    with pytest.raises(XrayError, match="only for frozen runs"):
        load_predictor(finetuned, weights=tmp_path / "w.pt")
    with pytest.raises(XrayError, match="not needed"):
        load_predictor(frozen16, weights=tmp_path / "w.pt")


def test_frozen_run_on_a_weights_file_needs_that_file(frozen16: Path, tmp_path: Path) -> None:
    from featurestore.fileio import file_digest
    from featurestore.models import load_backbone

    torch.manual_seed(0)
    weights = tmp_path / "cxr.pt"
    torch.save(load_backbone("resnet18", "none").trunk.state_dict(), weights)
    run = tmp_path / "run"
    shutil.copytree(frozen16, run)
    doc = json.loads((run / "config.json").read_text())
    doc["store"] = {
        **doc["store"],
        "weights_id": "file:cxr.pt",
        "weights_sha256": file_digest(weights),
    }
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(XrayError, match="pass it with --weights"):
        load_predictor(run)
    other = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(XrayError, match="not the file"):
        load_predictor(run, weights=other)
    # The random-init trunk saved above is the one extract used (seed 0): same predictions.
    a = load_predictor(run, weights=weights, device="cpu")
    b = load_predictor(frozen16, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a.logits(x), b.logits(x))


def test_cli_predict_table_csv_json_and_exit_code(
    frozen16: Path, tiny: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out_csv = tmp_path / "out" / "p.csv"
    result = runner.invoke(
        app, ["predict", "--run", str(frozen16), str(tiny / "test"), "--csv", str(out_csv),
              "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "NORMAL" in result.output and "PNEUMONIA" in result.output
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and all(r["error"] == "" for r in rows)
    recorded = load_run(frozen16).split_predictions("test")
    by_path = {r["path"]: float(r["probability"]) for r in rows}
    for key, p in zip(recorded["key"], recorded["probability"], strict=True):
        assert by_path[str(tiny / key)] == pytest.approx(p, abs=1e-5)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    good = tiny / recorded["key"][0]
    result = runner.invoke(
        app, ["predict", "--run", str(frozen16), str(good), str(bad), "--json", "--device", "cpu"]
    )
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [r["error"] is None for r in doc["rows"]] == [True, False]
    assert doc["counts"]["unreadable"] == 1 and doc["failed"] == 1
    # Issue 14.3: a random-weights run says so on stderr and in --json.
    assert doc["warnings"] and doc["warnings"][0].startswith("RANDOM WEIGHTS")
    assert "warning: RANDOM WEIGHTS" in result.stderr

    result = runner.invoke(app, ["predict", "--run", str(tmp_path), str(good)])
    assert result.exit_code == 2 and "error:" in result.output


def test_cli_predict_table_at_80_columns_keeps_every_digit(  # issue 14.4
    frozen16: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    folder = tiny / "test" / "PNEUMONIA"
    args = ["predict", "--run", str(frozen16), str(folder), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout
    doc = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    for row in doc["rows"]:
        assert f"{row['probability']:.3f}" in result.stdout


def test_predictor_leaves_the_callers_rng_alone(frozen16: Path, finetuned: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_predictor(frozen16, device="cpu")
    load_predictor(finetuned, device="cpu")
    torch.testing.assert_close(torch.rand(3), expected)


def test_batch_size_is_checked(frozen16: Path) -> None:
    with pytest.raises(XrayError, match="batch-size"):
        load_predictor(frozen16, device="cpu").predict([Path("x.png")], batch_size=0)


def test_undecodable_dicom_and_a_name_that_is_not_utf8_become_error_rows(
    frozen16: Path, tiny: Path, tmp_path: Path
) -> None:
    """#13 items 6 and 7: predict's CSV and table survive both; the error column says why."""
    pydicom = pytest.importorskip("pydicom")
    import os

    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3not really a jpeg\xff\xd9"])
    lossless = tmp_path / "in" / "lossless.dcm"
    lossless.parent.mkdir()
    ds.save_as(lossless, enforce_file_format=True)
    good = sorted((tiny / "test" / "NORMAL").iterdir())[0]
    latin1 = os.fsencode(tmp_path / "in") + b"/caf\xe9.jpeg"
    with open(latin1, "wb") as fh:
        fh.write(good.read_bytes())
    out_csv = tmp_path / "p.csv"
    result = CliRunner().invoke(
        app, ["predict", "--run", str(frozen16), str(tmp_path / "in"), "--csv", str(out_csv),
              "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # one unreadable file
    assert "Traceback" not in result.output
    with out_csv.open(encoding="utf-8") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == {"caf\\xe9.jpeg", "lossless.dcm"}
    assert rows["caf\\xe9.jpeg"]["error"] == "" and rows["caf\\xe9.jpeg"]["probability"]
    why = rows["lossless.dcm"]["error"]
    assert "lossless.dcm" in why and (".[dicom-codecs]" in why or "unreadable DICOM" in why)


@pytest.mark.slow
def test_multiclass_run_predicts_every_class_probability(tmp_path: Path) -> None:
    """A Kermany-3 frozen run: predict gives P(class) for all three classes, equal to the
    run's predictions.csv, the argmax class, and a prob_<class> CSV."""
    from conftest import write_tiny_kermany3

    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    data = write_tiny_kermany3(tmp_path / "chest_xray")
    extract_features(
        load_manifest(data, labels="kermany3"), model="resnet18", weights="none",
        cache_dir=tmp_path / "cache", image_size=32, workers=0,
    )  # fmt: skip
    (summary,) = fit_heads(
        data=data, labels="kermany3", cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
        config=HEAD,
    )  # fmt: skip
    run = load_run(summary.path)
    test = run.split_predictions("test")
    predictor = load_predictor(summary.path, device="cpu")
    assert predictor.task == "multiclass" and np.isnan(predictor.threshold)
    rows = predictor.predict([data / k for k in test["key"]], batch_size=4)
    got = np.array([[r.probabilities[c] for c in predictor.class_names] for r in rows])
    np.testing.assert_allclose(got, test["probabilities"], atol=1e-5)
    names = list(run.config["class_names"])
    assert [r.prediction for r in rows] == [names[i] for i in test["prediction"]]
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(
        app, ["predict", "--run", str(summary.path), "--device", "cpu", "--csv", str(out),
              str(data / "test")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = out.read_text().splitlines()[0]
    assert header == "path,prob_NORMAL,prob_BACTERIAL,prob_VIRAL,prediction,error"


@pytest.mark.slow
def test_multilabel_run_predicts_each_finding_at_its_threshold(tmp_path: Path) -> None:
    """A multi-label frozen run: predict reproduces predictions.csv's per-finding
    probabilities and decisions (each finding at its validation threshold)."""
    from conftest import write_tiny_multilabel

    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    labels_csv = write_tiny_multilabel(tmp_path / "ml")
    extract_features(
        load_manifest(labels_csv), model="resnet18", weights="none",
        cache_dir=tmp_path / "cache", image_size=32, workers=0,
    )  # fmt: skip
    (summary,) = fit_heads(cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs", config=HEAD)
    run = load_run(summary.path)
    test = run.split_predictions("test")
    predictor = load_predictor(summary.path, device="cpu")
    assert predictor.task == "multilabel"
    rows = predictor.predict([labels_csv.parent / k for k in test["key"]], batch_size=4)
    names = predictor.class_names
    got = np.array([[r.probabilities[c] for c in names] for r in rows])
    np.testing.assert_allclose(got, test["probabilities"], atol=1e-5)
    for row, decided in zip(rows, test["predictions"], strict=True):
        on = [c for c, d in zip(names, decided, strict=True) if d]
        assert row.prediction == ("|".join(on) or "No Finding")


def test_pooled_vit_run_from_images_reproduces_predictions_csv(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from featurestore.data import load_manifest
    from featurestore.store import extract_features
    from featurestore.train import fit_heads

    extract_features(
        load_manifest(tiny), model="timm:vit_tiny_patch16_224", weights="none",
        cache_dir=tmp_path / "cache", image_size=32, workers=0,
    )  # fmt: skip
    (summary,) = fit_heads(
        data=tiny, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs", config=HEAD,
        pooling="mean",
    )  # fmt: skip
    recorded, predicted, _ = test_probabilities(summary.path, tiny)
    np.testing.assert_allclose(predicted, recorded, rtol=0, atol=1e-5)
