"""compare_runs and the report: intervals, paired tests, refusals, files, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from featurestore.cli.main import app
from typer.testing import CliRunner

from featurestore.compare import (
    TABLE_METRICS,
    BootMetric,
    CompareConfig,
    clustered_delong_test,
    clustered_mcnemar,
    compare_runs,
    json_safe,
    mcnemar,
    weight_blocks,
    write_report,
)
from featurestore.errors import XrayError
from featurestore.runs import HISTORY_COLUMNS, RUN_FILES

CLASSES = ["NORMAL", "PNEUMONIA"]


def make_test_set(n_patients: int = 40, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Keys, patients (2 images each) and labels of a fake test split."""
    rng = np.random.default_rng(seed)
    keys, groups, labels = [], [], []
    for i in range(n_patients):
        y = int(rng.random() < 0.6)
        for j in range(2):
            keys.append(f"test/{CLASSES[y]}/p{i}_{j}.jpeg")
            groups.append(f"p{i}")
            labels.append(y)
    return keys, groups, np.array(labels)


def write_fake_run(
    root: Path,
    name: str,
    *,
    model: str,
    mode: str,
    skill: float,
    seed: int = 0,
    test: tuple[list[str], list[str], np.ndarray] | None = None,
    threshold: float = 0.5,
    probs: np.ndarray | None = None,
) -> Path:
    """A run folder of the contract: the given probabilities, else ones of a given skill (noise
    added to the labels, seeded by name and seed)."""
    keys, groups, labels = test or make_test_set()
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), and so would the data.
    rng = np.random.default_rng(zlib.crc32(f"{name}/{seed}".encode()))
    if probs is None:
        probs = 1 / (1 + np.exp(-(skill * (labels - 0.5) * 4 + rng.normal(0, 1, labels.size))))
    run = root / name
    run.mkdir(parents=True)
    config = {
        "mode": mode,
        "model": model,
        "head": "linear",
        "seed": seed,
        "class_names": CLASSES,
        "positive_index": 1,
        "positive_class": "PNEUMONIA",
        "trainable_params": 2050 if mode == "frozen" else 23_000_000,
        "weights_id": "none",
        "class_counts": {"train": {"NORMAL": 30, "PNEUMONIA": 90}},
    }
    if mode == "frozen":
        config["extraction_seconds"] = 12.5
    (run / "config.json").write_text(json.dumps(config))
    metrics = {
        "best_epoch": 3,
        "epochs_run": 6,
        "stopped_early": True,
        "threshold": {"policy": "youden", "value": threshold},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    timing = {"seconds_per_epoch": 0.01 if mode == "frozen" else 40.0, "epochs_run": 6}
    (run / "timing.json").write_text(json.dumps(timing))
    with (run / "history.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HISTORY_COLUMNS)
        for epoch in range(1, 7):
            w.writerow([epoch] + [0.5] * (len(HISTORY_COLUMNS) - 1))
    with (run / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "key", "patient", "label", "probability", "prediction"])
        for k, g, y, p in zip(keys, groups, labels, probs, strict=True):
            w.writerow(["test", k, g, int(y), repr(float(p)), int(p >= threshold)])
        w.writerow(["val", "train/NORMAL/v.jpeg", "v", 0, "0.2", 0])
    (run / "best.pt").write_bytes(b"")
    assert all((run / f).exists() for f in RUN_FILES)
    return run


@pytest.fixture
def four_runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    return [
        write_fake_run(root, "r50-ft", model="resnet50", mode="finetune", skill=1.6),
        write_fake_run(root, "d121-ft", model="densenet121", mode="finetune", skill=1.2),
        write_fake_run(root, "r50-fz", model="resnet50", mode="frozen", skill=1.0),
        write_fake_run(root, "d121-fz", model="densenet121", mode="frozen", skill=0.2),
    ]


HASH_SEED_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_report import write_fake_run
from featurestore.compare import CompareConfig, compare_runs
root = Path(sys.argv[1])
runs = [write_fake_run(root, n, model="resnet50", mode="frozen", skill=s) for n, s in
        (("a", 1.0), ("b", 0.5))]
print(json.dumps(compare_runs(runs, CompareConfig(n_boot=100)).as_dict(), sort_keys=True))
"""


def test_fake_runs_and_their_comparison_ignore_the_hash_seed(tmp_path: Path) -> None:
    """Fake data seeded with hash() changed with every process; crc32 keeps it fixed."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", HASH_SEED_SCRIPT, str(tmp_path / hash_seed),
             str(Path(__file__).parent)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]


def test_compare_table_has_intervals_and_pairs(four_runs: list[Path]) -> None:
    cmp = compare_runs(four_runs, CompareConfig(n_boot=300))
    assert len(cmp.rows) == 4
    assert len(cmp.pairs) == 6  # every pair of 4 runs
    for row in cmp.rows:
        for t in ("at_0.5", "at_threshold"):
            for iv in row.metrics[t].values():
                assert iv.lo <= iv.estimate <= iv.hi
    best = max(cmp.rows, key=lambda r: r.metrics["at_0.5"]["roc_auc"].estimate)
    assert best.model == "resnet50" and best.mode == "finetune"
    ts = cmp.test_set
    assert (ts["images"], ts["patients"]) == (80, 40)
    assert ts["positive_patients"] + ts["negative_patients"] == 40
    # The majority rule predicts the train majority (PNEUMONIA) everywhere: AUC 0.5.
    assert cmp.baseline["majority_class"] == "PNEUMONIA"
    assert cmp.baseline["roc_auc"] == 0.5
    assert any(w.startswith("RANDOM WEIGHTS: All runs") for w in cmp.warnings)


def test_accuracy_interval_recomputed_from_predictions(four_runs: list[Path]) -> None:
    """The point estimate equals accuracy recomputed by hand from predictions.csv."""
    cmp = compare_runs(four_runs[:1], CompareConfig(n_boot=200))
    with (four_runs[0] / "predictions.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    acc = np.mean([(float(r["probability"]) >= 0.5) == (r["label"] == "1") for r in rows])
    assert cmp.rows[0].metrics["at_0.5"]["accuracy"].estimate == pytest.approx(acc)


def correct_at(run: Path, threshold: float) -> dict[str, bool]:
    """Key -> is the run's test prediction at `threshold` right (from predictions.csv)."""
    with (run / "predictions.csv").open() as fh:
        return {
            r["key"]: (float(r["probability"]) >= threshold) == (r["label"] == "1")
            for r in csv.DictReader(fh)
            if r["split"] == "test"
        }


def discordant(ca: dict[str, bool], cb: dict[str, bool]) -> tuple[int, int]:
    """(only A right, only B right)."""
    return sum(ca[k] and not cb[k] for k in ca), sum(cb[k] and not ca[k] for k in ca)


def test_mcnemar_uses_each_runs_own_threshold(tmp_path: Path) -> None:
    """Two runs with other thresholds than 0.5: the discordant counts are those at 0.3 and 0.7."""
    labels = make_test_set()[2]
    rng = np.random.default_rng(1)
    pa = 1 / (1 + np.exp(-(3.0 * (labels - 0.5) + rng.normal(0, 1, labels.size))))
    pb = 1 / (1 + np.exp(-(2.0 * (labels - 0.5) + rng.normal(0, 1, labels.size))))
    a = write_fake_run(tmp_path, "a", model="resnet50", mode="frozen", skill=0, threshold=0.3,
                       probs=pa)  # fmt: skip
    b = write_fake_run(tmp_path, "b", model="resnet18", mode="frozen", skill=0, threshold=0.7,
                       probs=pb)  # fmt: skip
    ca, cb = correct_at(a, 0.3), correct_at(b, 0.7)
    expected = discordant(ca, cb)
    assert expected == (18, 8)  # by hand from the seeded scores above
    # The test can fail: at 0.5 (or with the thresholds swapped) the counts are others.
    assert discordant(correct_at(a, 0.5), correct_at(b, 0.5)) != expected
    assert discordant(correct_at(a, 0.7), correct_at(b, 0.3)) != expected
    pair = compare_runs([a, b], CompareConfig(n_boot=200)).pairs[0]
    assert (pair.tests["mcnemar"].result.b, pair.tests["mcnemar"].result.c) == expected
    order = sorted(ca)
    patient = dict(zip(make_test_set()[0], make_test_set()[1], strict=True))
    ref = clustered_mcnemar(
        np.array([ca[k] for k in order]),
        np.array([cb[k] for k in order]),
        [patient[k] for k in order],
    )
    assert pair.tests["mcnemar"].result == ref


def test_mcnemar_pair_matches_hand_count(four_runs: list[Path]) -> None:
    cmp = compare_runs(four_runs[:2], CompareConfig(n_boot=200))
    pair = cmp.pairs[0]
    ca, cb = correct_at(four_runs[0], 0.5), correct_at(four_runs[1], 0.5)
    assert (pair.tests["mcnemar"].result.b, pair.tests["mcnemar"].result.c) == discordant(ca, cb)
    keys = sorted(ca)
    a, b_ = np.array([ca[k] for k in keys]), np.array([cb[k] for k in keys])
    patients = [k.rsplit("/", 1)[1].split("_")[0] for k in keys]
    # Two images per patient: the McNemar test clustered by patient (Durkalski 2003).
    assert pair.tests["mcnemar"].result.p_value == pytest.approx(
        clustered_mcnemar(a, b_, patients).p_value
    )
    by_image = compare_runs(four_runs[:2], CompareConfig(n_boot=200, resample="images"))
    assert by_image.pairs[0].tests["mcnemar"].result.p_value == pytest.approx(
        mcnemar(a, b_).p_value
    )


def test_different_test_sets_refused_unless_allowed(tmp_path: Path) -> None:
    a = write_fake_run(tmp_path, "a", model="resnet50", mode="frozen", skill=1.0)
    other = make_test_set(n_patients=30, seed=5)
    b = write_fake_run(tmp_path, "b", model="resnet50", mode="frozen", skill=1.0, test=other)
    with pytest.raises(XrayError, match="different test sets"):
        compare_runs([a, b], CompareConfig(n_boot=200))
    cmp = compare_runs([a, b], CompareConfig(n_boot=200, allow_different_test=True))
    assert cmp.pairs == []
    assert any("paired tests skipped" in n for n in cmp.notes)


def test_seed_groups_report_mean_and_spread(tmp_path: Path) -> None:
    runs = [
        write_fake_run(tmp_path, f"s{s}", model="resnet18", mode="frozen", skill=1.0, seed=s)
        for s in range(3)
    ]
    cmp = compare_runs(runs, CompareConfig(n_boot=200))
    assert len(cmp.seed_groups) == 1
    group = cmp.seed_groups[0]
    assert group.seeds == (0, 1, 2)
    aucs = [r.metrics["at_threshold"]["roc_auc"].estimate for r in cmp.rows]
    assert group.mean["roc_auc"] == pytest.approx(np.mean(aucs))
    assert group.std["roc_auc"] == pytest.approx(np.std(aucs, ddof=1))


def clustered_test_set(
    n_patients: int = 30, per_patient: int = 8, seed: int = 0
) -> tuple[tuple[list[str], list[str], np.ndarray], np.ndarray]:
    """A test split whose images are strongly correlated within a patient, and P(positive).

    Each patient has one label and one score (signal plus patient-level noise); its images
    differ only by a little image noise. AUC is ~0.8, neither 0.5 nor 1.
    """
    rng = np.random.default_rng(seed)
    keys, groups, labels, logits = [], [], [], []
    for i in range(n_patients):
        y = i % 2
        patient_logit = 1.2 * y + rng.normal(0, 1)
        for j in range(per_patient):
            keys.append(f"test/{CLASSES[y]}/p{i}_{j}.jpeg")
            groups.append(f"p{i}")
            labels.append(y)
            logits.append(patient_logit + rng.normal(0, 0.05))
    probs = 1 / (1 + np.exp(-np.array(logits)))
    return (keys, groups, np.array(labels)), probs


def test_patient_resampling_is_clearly_wider_on_correlated_images(tmp_path: Path) -> None:
    """Eight near-copies per patient: the patient interval is ~sqrt(8) times wider."""
    test, probs = clustered_test_set()
    run = write_fake_run(tmp_path, "clustered", model="resnet50", mode="frozen", skill=0,
                         test=test, probs=probs)  # fmt: skip
    widths = {}
    for unit in ("patients", "images"):
        row = compare_runs([run], CompareConfig(n_boot=1000, resample=unit)).rows[0]
        iv = row.metrics["at_0.5"]["roc_auc"]
        assert 0.6 < iv.estimate < 0.95  # not degenerate: both intervals have a width
        widths[unit] = iv.hi - iv.lo
    assert widths["images"] > 0.02
    assert widths["patients"] > 1.8 * widths["images"], widths


@pytest.mark.parametrize("resample", ["patients", "images"])
def test_compare_gives_the_bootstrap_labels_groups_and_threshold(
    tmp_path: Path, resample: str
) -> None:
    """Every interval of the table is the percentile interval of the metric on weight_blocks'
    resamples of the run's own test arrays: labels as 1 = positive class (here index 0),
    patient groups when resampling patients, and the run's threshold at "at_threshold"."""
    (keys, groups, labels), probs = clustered_test_set(n_patients=12, per_patient=3)
    run = write_fake_run(tmp_path, "r", model="resnet50", mode="frozen", skill=0,
                         test=(keys, groups, labels), probs=probs, threshold=0.37)  # fmt: skip
    # Make class index 0 the positive one: label 1 in predictions.csv now means negative.
    config = json.loads((run / "config.json").read_text())
    config.update(class_names=["PNEUMONIA", "NORMAL"], positive_index=0, positive_class="PNEUMONIA")
    (run / "config.json").write_text(json.dumps(config))
    cfg = CompareConfig(n_boot=300, resample=resample, alpha=0.1, seed=3)
    row = compare_runs([run], cfg).rows[0]
    order = np.argsort(keys, kind="stable")
    y = (labels[order] == 0).astype(np.int64)
    p = probs[order]
    g = np.array(groups)[order] if resample == "patients" else None
    draws = [w for _, w in weight_blocks(y.size, g, 300, 3)]
    for t_name, t in (("at_0.5", 0.5), ("at_threshold", 0.37)):
        for name in TABLE_METRICS:
            metric = BootMetric(name, t)
            values = np.concatenate([metric.weighted(y.astype(float), p, w) for w in draws])
            lo, hi = np.quantile(values[np.isfinite(values)], [0.05, 0.95])
            got = row.metrics[t_name][name]
            assert (got.estimate, got.lo, got.hi) == (metric(y, p), lo, hi), (t_name, name)
    assert row.threshold == 0.37


def test_compare_gives_the_paired_tests_the_same_images(tmp_path: Path) -> None:
    """DeLong on both runs' probabilities of the same keys, whatever order the files list them."""
    test, _ = clustered_test_set(n_patients=10, per_patient=2)
    a = write_fake_run(tmp_path, "a", model="resnet50", mode="frozen", skill=1.0, test=test)
    b = write_fake_run(tmp_path, "b", model="resnet18", mode="frozen", skill=0.3, test=test)
    # Shuffle b's rows: compare must pair images by key, not by row.
    lines = (b / "predictions.csv").read_text().splitlines()
    body = lines[1:]
    np.random.default_rng(0).shuffle(body)
    (b / "predictions.csv").write_text("\n".join([lines[0], *body]) + "\n")
    pair = compare_runs([a, b], CompareConfig(n_boot=200)).pairs[0]

    def by_key(run: Path) -> dict[str, tuple[int, float, str]]:
        with (run / "predictions.csv").open() as fh:
            return {
                r["key"]: (int(r["label"]), float(r["probability"]), r["patient"])
                for r in csv.DictReader(fh)
                if r["split"] == "test"
            }

    ra, rb = by_key(a), by_key(b)
    order = sorted(ra)
    y = np.array([ra[k][0] for k in order])
    pa, pb = np.array([ra[k][1] for k in order]), np.array([rb[k][1] for k in order])
    # Resampling patients (the default): DeLong clustered by patient.
    assert pair.tests["delong"].result == clustered_delong_test(
        y, pa, pb, [ra[k][2] for k in order]
    )
    by_image = compare_runs([a, b], CompareConfig(n_boot=200, resample="images")).pairs[0]
    assert by_image.tests["delong"].result == clustered_delong_test(y, pa, pb, None)


def test_write_report_files(four_runs: list[Path], tmp_path: Path) -> None:
    cmp = compare_runs(four_runs, CompareConfig(n_boot=200))
    report = write_report(cmp, tmp_path / "report")
    folder = report.parent
    for name in ("report.md", "report.html", "table.csv", "comparison.json", "roc.png"):
        assert (folder / name).is_file(), name
    text = report.read_text()
    assert "McNemar" in text and "majority class" in text and "![roc.png](roc.png)" in text
    with (folder / "table.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8  # 4 runs x 2 thresholds
    json.loads((folder / "comparison.json").read_text())
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_compare(four_runs: list[Path], tmp_path: Path) -> None:
    runs_dir = four_runs[0].parent
    out = tmp_path / "rep"
    args = ["compare", "--runs", str(runs_dir), "--out", str(out), "--bootstrap", "200"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["runs"]) == 4 and len(doc["pairs"]) == 6
    assert (out / "report.md").is_file()
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "Paired tests" in plain.stdout


def test_cli_compare_without_runs_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compare", "--runs", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no complete run folders" in result.stderr
    assert "Traceback" not in result.output


def test_cli_compare_refuses_incomplete_run(four_runs: list[Path], tmp_path: Path) -> None:
    (four_runs[1] / "metrics.json").unlink()
    result = CliRunner().invoke(
        app, ["compare", str(four_runs[0]), str(four_runs[1]), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "not a complete run folder" in result.stderr


def one_sided_test_set(normal_patients: int, pneumonia_patients: int = 6) -> tuple:
    """Keys, patients (one image each) and labels: NORMAL patients first."""
    n = normal_patients + pneumonia_patients
    labels = np.array([0] * normal_patients + [1] * pneumonia_patients)
    keys = [f"test/{CLASSES[y]}/p{i}.jpeg" for i, y in enumerate(labels)]
    return keys, [f"p{i}" for i in range(n)], labels


def test_issue_13_2_a_test_set_of_one_class_is_compared_with_undefined_columns(
    tmp_path: Path,
) -> None:
    test = one_sided_test_set(0)
    runs = [
        write_fake_run(tmp_path, name, model="resnet50", mode="frozen", skill=s, test=test)
        for name, s in (("a", 1.0), ("b", 0.5))
    ]
    cmp = compare_runs(runs, CompareConfig(n_boot=200))
    for row in cmp.rows:
        for m in ("specificity", "roc_auc", "f1_macro"):
            assert not row.metrics["at_threshold"][m].defined, m
        assert row.metrics["at_threshold"]["sensitivity"].defined
        assert row.metrics["at_threshold"]["accuracy"].defined
    assert any("PNEUMONIA images only" in n and "undefined" in n for n in cmp.notes)
    assert (
        cmp.pairs[0].tests["delong"].result is None
        and cmp.pairs[0].tests["mcnemar"].result.p_value <= 1
    )
    assert cmp.verdict is not None and cmp.verdict.metric == "accuracy"
    doc = json.loads(json.dumps(json_safe(cmp.as_dict()), allow_nan=False))
    assert doc["runs"][0]["metrics"]["at_threshold"]["specificity"]["estimate"] is None
    assert doc["pairs"][0]["tests"]["delong"]["p_value"] is None
    text = write_report(cmp, tmp_path / "rep").read_text()
    assert "n/a" in text and "nan" not in text.lower().replace("pneumonia", "")


def test_issue_13_3_one_negative_patient_counts_undefined_resamples_and_warns(
    tmp_path: Path,
) -> None:
    test = one_sided_test_set(1)
    run = write_fake_run(tmp_path, "a", model="resnet50", mode="frozen", skill=1.0, test=test)
    cmp = compare_runs([run], CompareConfig(n_boot=300))
    spec = cmp.rows[0].metrics["at_threshold"]["specificity"]
    auc = cmp.rows[0].metrics["at_threshold"]["roc_auc"]
    # (6/7)^7 = 34% of resamples draw no NORMAL patient: counted, not silently dropped.
    assert 0.2 * 300 < auc.n_undefined < 0.5 * 300
    assert spec.n_undefined == auc.n_undefined and spec.n_boot == 300
    assert not spec.reliable and not auc.reliable
    assert cmp.rows[0].metrics["at_threshold"]["accuracy"].reliable  # needs no one class
    doc = json_safe(cmp.as_dict())
    assert doc["runs"][0]["metrics"]["at_threshold"]["roc_auc"]["n_undefined"] == auc.n_undefined
    folder = write_report(cmp, tmp_path / "rep").parent
    text = (folder / "report.md").read_text()
    assert f"{auc.n_undefined} of 300 resamples undefined, unreliable" in text
    assert "†" in text
    with (folder / "table.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert row["roc_auc_undefined_resamples"] == str(auc.n_undefined)
    assert row["roc_auc_reliable"] == "False"


def test_issue_14_report_opens_with_banner_verdict_and_dataset(
    four_runs: list[Path], tmp_path: Path
) -> None:
    data = tmp_path / "synthetic"
    data.mkdir()
    (data / ".xray-synth.json").write_text("{}")
    for run in four_runs:
        config = json.loads((run / "config.json").read_text())
        config.update(dataset_root=str(data), dataset_fingerprint="ab" * 32)
        (run / "config.json").write_text(json.dumps(config))
    cmp = compare_runs(four_runs, CompareConfig(n_boot=200))
    report = write_report(cmp, tmp_path / "rep")
    text = report.read_text()
    banner = text.index("**\u26a0 RANDOM WEIGHTS")
    verdict = text.index("## Verdict")
    first_table = text.index("## Test metrics at the validation-chosen threshold")
    assert banner < verdict < first_table < text.index("## Test metrics at the threshold 0.5")
    assert "RANDOM WEIGHTS: All runs use" in text and "SYNTHETIC DATA" in text
    assert f"Dataset: **synthetic** (`{data}`), fingerprint `abababababababab`" in text
    assert "Best on ROC-AUC: resnet50 finetune" in text
    assert "Holm-adjusted over 6 pairs" in text and "Obuchowski 1997" in text
    page = (report.parent / "report.html").read_text()
    assert '<div class="banner">' in page and "Verdict" in page
    assert cmp.verdict is not None and cmp.verdict.best == "resnet50 finetune"


def test_issue_14_4_compare_at_80_columns_keeps_every_digit(
    four_runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    args = ["compare", "--runs", str(four_runs[0].parent), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout
    cmp = compare_runs(four_runs, CompareConfig(n_boot=200))
    for row in cmp.rows:
        iv = row.metrics["at_threshold"]["roc_auc"]
        assert f"[{iv.lo:.3f},{iv.hi:.3f}]" in result.stdout
        assert row.label.split()[0] in result.stdout
    assert result.stdout.lstrip().startswith("⚠ RANDOM WEIGHTS")
    assert result.stdout.index("Verdict") < result.stdout.index("Test metrics")


def test_issue_14_8_compare_json_writes_no_report_unless_asked(
    four_runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--runs", str(four_runs[0].parent), "--bootstrap", "200", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] is None
    assert not (tmp_path / "reports").exists()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "asked")])
    assert json.loads(result.stdout)["report"] == str(tmp_path / "asked" / "report.md")


def test_issue_14_6_bare_compare_finds_the_newest_study_and_takes_a_study_folder(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    old = write_fake_run(runs / "study-20261128-100000", "a", model="resnet18", mode="frozen",
                         skill=1.0)  # fmt: skip
    new = [
        write_fake_run(runs / "study-20261129-100000", name, model=m, mode="frozen", skill=1.0)
        for name, m in (("a", "resnet50"), ("b", "densenet121"))
    ]
    args = ["compare", "--bootstrap", "200", "--json"]
    result = CliRunner().invoke(app, [*args, "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)["runs"]] == ["a", "b"]
    assert "study-20261129-100000 (the newest study; 1 older" in result.stderr
    result = CliRunner().invoke(app, [*args, str(old.parent), str(new[0])])
    assert result.exit_code == 0, result.output
    assert [r["model"] for r in json.loads(result.stdout)["runs"]] == ["resnet18", "resnet50"]


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).length;
  const right = (e) => e.getBoundingClientRect().right;
  const tables = [...document.querySelectorAll("table")];
  document.body.setAttribute("data-probe", JSON.stringify({
    width: window.innerWidth,
    images: images.length,
    broken: broken,
    page_overflow: document.documentElement.scrollWidth > window.innerWidth,
    tables: tables.length,
    tables_overflowing: tables.filter((t) => right(t) > window.innerWidth).length,
    banners: document.querySelectorAll(".banner").length,
  }));
});
</script>"""


def find_browser() -> str | None:
    """A headless-capable Chromium on PATH (Debian: `apt-get install -y chromium`)."""
    import shutil

    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


def test_issue_14_11_report_html_renders_in_a_headless_browser(
    four_runs: list[Path], tmp_path: Path
) -> None:
    """The report page in a real browser at a 1280 px window: every plot loads, the banner
    shows, and nothing is wider than the window (a wide table scrolls inside its box)."""
    import html
    import re
    import subprocess

    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH: `apt-get install -y chromium`, or run .ci/browser")
    cmp = compare_runs(four_runs, CompareConfig(n_boot=200))
    page = write_report(cmp, tmp_path / "rep").parent / "report.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, result.stderr[-2000:]
    seen = json.loads(html.unescape(found[1]))
    assert seen["width"] == 1280
    assert seen["images"] == 3 and seen["broken"] == 0  # roc, metrics, confusion
    assert seen["banners"] == 1 and seen["tables"] >= 4
    assert not seen["page_overflow"] and seen["tables_overflowing"] == 0, seen


def test_the_verdict_never_names_a_repeat_of_the_best_as_its_runner_up(tmp_path: Path) -> None:
    """The same command run twice (identical settings and seed, identical scores) is a repeat:
    the runner-up is the best different run, and with none the verdict says so."""
    root = tmp_path / "runs"
    test = make_test_set()
    probs = 1 / (1 + np.exp(-(1.6 * (test[2] - 0.5) * 4)))
    twice = [
        write_fake_run(root, n, model="resnet50", mode="finetune", skill=0, test=test, probs=probs)
        for n in ("first", "again")
    ]
    other = write_fake_run(root, "d121", model="densenet121", mode="frozen", skill=0.4, test=test)
    cmp = compare_runs([*twice, other], CompareConfig(n_boot=100))
    assert cmp.verdict is not None and len(cmp.repeats) == 1
    assert cmp.verdict.best in cmp.repeats[0]
    assert cmp.verdict.runner_up == next(r.label for r in cmp.rows if r.name == other.name)
    alone = compare_runs(twice, CompareConfig(n_boot=100))
    assert alone.verdict is not None and alone.verdict.runner_up is None
    assert any("repeat" in line for line in alone.verdict.lines)
