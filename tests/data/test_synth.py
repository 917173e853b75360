"""Tests for featurestore.data.synth: layout, Kermany naming, splits, determinism, no leaks."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import featurestore.data.synth as synth
from featurestore.data import SynthSummary, generate_synthetic, render_radiograph
from featurestore.errors import XrayError
from featurestore.progress import make_progress

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")
PNEUMONIA_NAME = re.compile(r"person(\d+)_(bacteria|virus)_(\d+)\.jpeg")
NORMAL_NAME = re.compile(r"(NORMAL2-)?IM-(\d{4,})-(\d{4})\.jpeg")


def make(root: Path, *, seed: int = 0, patients: int = 12, overwrite: bool = False) -> SynthSummary:
    """A quick dataset of 32 px images."""
    return generate_synthetic(
        root, seed=seed, patients=patients, min_side=32, max_side=40, overwrite=overwrite
    )


def patient_of(name: str) -> str:
    """Kermany patient id: person12_bacteria_55 -> person12; (NORMAL2-)IM-0115-0001 -> IM-0115."""
    if m := PNEUMONIA_NAME.fullmatch(name):
        return f"person{m[1]}"
    if m := NORMAL_NAME.fullmatch(name):
        return f"IM-{m[2]}"
    raise AssertionError(f"not a Kermany file name: {name}")


def files(root: Path) -> list[Path]:
    """All image files under root, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def as_rows(root: Path) -> list[tuple[str, str, str, int, int]]:
    """(split, class, name, width, height) of every image."""
    rows = []
    for p in files(root):
        with Image.open(p) as im:
            rows.append((p.parts[-3], p.parts[-2], p.name, im.width, im.height))
    return rows


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """The default 120-patient dataset, at small image sizes."""
    # Tiny images keep the full default patient count at about a second.
    root = tmp_path_factory.mktemp("synth") / "synthetic"
    return generate_synthetic(root, min_side=48, max_side=64)


def test_layout_and_image_format(default_set: SynthSummary) -> None:
    root = default_set.root
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(SPLITS)
    for split in SPLITS:
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
    paths = files(root)
    assert paths and all(p.suffix == ".jpeg" for p in paths)
    aspects = []
    for p in paths[::7]:
        with Image.open(p) as im:
            assert (im.format, im.mode) == ("JPEG", "L")
            assert 48 <= im.width <= 64 and 48 <= im.height <= 64
            aspects.append(im.height / im.width)
    assert min(aspects) >= 0.78 and max(aspects) <= 1.32
    assert len({round(a, 2) for a in aspects}) > 5  # sizes vary, not all square


def test_kermany_names_with_several_images_per_patient(default_set: SynthSummary) -> None:
    rows = as_rows(default_set.root)
    for _, cls, name, _, _ in rows:
        pattern = PNEUMONIA_NAME if cls == "PNEUMONIA" else NORMAL_NAME
        assert pattern.fullmatch(name), name
    names = [r[2] for r in rows]
    assert any(n.startswith("NORMAL2-") for n in names)
    assert any(n.startswith("IM-") for n in names)
    assert any("_virus_" in n for n in names) and any("_bacteria_" in n for n in names)
    per_patient: dict[str, int] = {}
    for n in names:
        per_patient[patient_of(n)] = per_patient.get(patient_of(n), 0) + 1
    assert max(per_patient.values()) >= 3
    # NORMAL2-IM-NNNN names belong to the same patient ids as IM-NNNN (one patient, one class).
    normal_ids = {patient_of(n) for n in names if "IM-" in n}
    assert not normal_ids & {patient_of(n) for n in names if n.startswith("person")}


def test_summary_matches_disk_and_ratios(default_set: SynthSummary) -> None:
    rows = as_rows(default_set.root)
    counted = {s: {c: 0 for c in CLASSES} for s in SPLITS}
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    for split, cls, name, _, _ in rows:
        counted[split][cls] += 1
        patients[split].add(patient_of(name))
    assert default_set.counts == counted
    assert default_set.patients == {s: len(p) for s, p in patients.items()}
    assert sum(default_set.patients.values()) == 120
    total = len(rows)
    assert 200 <= total <= 400  # a few hundred images by default
    assert counted["val"] == {"NORMAL": 4, "PNEUMONIA": 4}  # tiny, like the real val split
    train = counted["train"]
    assert 2.0 <= train["PNEUMONIA"] / train["NORMAL"] <= 4.5  # about 3:1
    test = counted["test"]
    assert 0.2 <= sum(test.values()) / total <= 0.35
    assert 0.5 <= test["PNEUMONIA"] / sum(test.values()) <= 0.72  # more balanced than train


def test_patients_disjoint_across_splits(default_set: SynthSummary) -> None:
    by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for split, _, name, _, _ in as_rows(default_set.root):
        by_split[split].add(patient_of(name))
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]


def test_image_size_does_not_reveal_the_label(default_set: SynthSummary) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    rows = as_rows(default_set.root)
    sizes = np.array([(w, h) for *_, w, h in rows], dtype=float)
    labels = np.array([r[1] == "PNEUMONIA" for r in rows])
    for axis in (0, 1):
        normal, pneumonia = np.median(sizes[~labels, axis]), np.median(sizes[labels, axis])
        assert abs(normal - pneumonia) <= 0.1 * normal
    scores = cross_val_predict(LogisticRegression(), sizes, labels, cv=5, method="predict_proba")[
        :, 1
    ]
    assert roc_auc_score(labels, scores) < 0.65


def test_learnable_but_not_trivial_and_mean_pixel_uninformative(default_set: SynthSummary) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for p in files(default_set.root / split):
            with Image.open(p) as im:
                xs.append(
                    np.asarray(im.resize((24, 24), Image.Resampling.BILINEAR), np.float32) / 255
                )
            ys.append(p.parent.name == "PNEUMONIA")
        return np.stack(xs).reshape(len(xs), -1), np.array(ys)

    x_train, y_train = load("train")
    x_test, y_test = load("test")
    clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    auc = roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1])
    assert 0.65 < auc < 0.98
    assert roc_auc_score(y_test, x_test.mean(axis=1)) < 0.7
    assert roc_auc_score(y_train, x_train.mean(axis=1)) < 0.7


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in files(root)}

    a = digest(make(tmp_path / "a", seed=3, patients=14).root)
    b = digest(make(tmp_path / "b", seed=3, patients=14).root)
    c = digest(make(tmp_path / "c", seed=4, patients=14).root)
    assert a == b
    assert a != c


def test_refuses_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    root = make(tmp_path / "synthetic").root
    before = {p: p.read_bytes() for p in files(root)}
    with pytest.raises(XrayError, match="--overwrite"):
        make(root, seed=1)
    assert {p: p.read_bytes() for p in files(root)} == before


def test_overwrite_replaces_a_synthetic_dataset(tmp_path: Path) -> None:
    root = make(tmp_path / "synthetic").root
    (root / "train" / "NORMAL" / "stale.jpeg").write_bytes(b"old")
    summary = make(root, seed=1, overwrite=True)
    assert summary.root == root
    assert not (root / "train" / "NORMAL" / "stale.jpeg").exists()
    assert sum(sum(c.values()) for c in summary.counts.values()) == len(files(root))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no temp folders left


def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpeg").write_bytes(b"precious")
    with pytest.raises(XrayError, match="refusing to overwrite"):
        make(mine, overwrite=True)
    assert (mine / "holiday.jpeg").read_bytes() == b"precious"


def test_writes_into_an_existing_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    summary = make(tmp_path / "empty")
    assert files(summary.root)


def test_output_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(XrayError, match="not a folder"):
        make(tmp_path / "data")


def test_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = synth.render_radiograph

    def flaky(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "render_radiograph", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        make(tmp_path / "synthetic")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": 11}, "--patients"),
        ({"min_side": 64, "max_side": 48}, "min side"),
        ({"min_side": 16, "max_side": 48}, "min side"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_invalid_settings_are_user_errors(
    tmp_path: Path, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(XrayError, match=message):
        generate_synthetic(tmp_path / "synthetic", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "synthetic").exists()


def test_progress_task_counts_every_image(tmp_path: Path) -> None:
    progress = make_progress(Console(file=io.StringIO()))
    with progress:
        summary = generate_synthetic(
            tmp_path / "s", patients=12, min_side=32, max_side=32, progress=progress
        )
    (task,) = progress.tasks
    total = sum(sum(c.values()) for c in summary.counts.values())
    assert task.total == task.completed == total


def test_render_normal_has_no_opacity() -> None:
    pixels, mask = render_radiograph(np.random.default_rng(0), 70, 60, pneumonia=False)
    assert pixels.shape == mask.shape == (70, 60)
    assert pixels.dtype == np.uint8 and mask.dtype == bool
    assert not mask.any()
    assert pixels.std() > 20  # an actual picture, not a flat field


@pytest.mark.parametrize("kind", ["patchy", "lobar"])
def test_render_opacity_lies_where_the_mask_says(kind: str) -> None:
    # Same generator state with and without pneumonia: same patient, pose and exposure.
    normal, _ = render_radiograph(np.random.default_rng(5), 128, 112, pneumonia=False)
    sick, mask = render_radiograph(
        np.random.default_rng(5),
        128,
        112,
        pneumonia=True,
        opacity_kind=kind,  # type: ignore[arg-type]
        opacity_strength=0.4,
    )
    assert 0.005 < mask.mean() < 0.3
    diff = sick.astype(float) - normal.astype(float)
    assert diff[mask].mean() > diff[~mask].mean() + 25
    # Opacities stay inside the thorax: the image border is untouched.
    assert not mask[:, :5].any() and not mask[:, -5:].any()


def test_multiclass_set_ties_the_opacity_to_the_pneumonia_kind(tmp_path: Path) -> None:
    from featurestore.data import load_manifest

    kw = {"seed": 3, "patients": 14, "min_side": 32, "max_side": 40}
    binary = generate_synthetic(tmp_path / "b", **kw)
    multi = generate_synthetic(tmp_path / "m", task="multiclass", **kw)
    for split, per_class in multi.counts.items():
        assert set(per_class) == {"NORMAL", "BACTERIAL", "VIRAL"}
        pneumonia = binary.counts[split]["PNEUMONIA"]
        assert per_class["BACTERIAL"] + per_class["VIRAL"] == pneumonia
    # Same files and NORMAL images; only pneumonia opacities follow the name's kind.
    b_files = {p.relative_to(binary.root).as_posix() for p in files(binary.root)}
    assert b_files == {p.relative_to(multi.root).as_posix() for p in files(multi.root)}
    for key in b_files:
        if "/NORMAL/" in key:
            assert (binary.root / key).read_bytes() == (multi.root / key).read_bytes()
    m = load_manifest(multi.root, labels="kermany3", val_min=0)
    assert m.class_names == ("NORMAL", "BACTERIAL", "VIRAL")
    totals = {c: sum(pc[c] for pc in multi.counts.values()) for c in m.class_names}
    assert totals == {c: sum(r.label == k for r in m.records) for k, c in enumerate(m.class_names)}
    with pytest.raises(XrayError, match="--task"):
        generate_synthetic(tmp_path / "x", task="multilabel", **kw)


def test_the_multiclass_opacities_differ_by_kind() -> None:
    rng = np.random.default_rng(0)
    lobar = [render_radiograph(rng, 64, 64, pneumonia=True, opacity_kind="lobar")[1] for _ in "ab"]
    patchy = [
        render_radiograph(rng, 64, 64, pneumonia=True, opacity_kind="patchy")[1] for _ in "ab"
    ]
    assert synth.SYNTH_OPACITY == {"bacteria": "lobar", "virus": "patchy"}
    assert all(m.any() for m in lobar + patchy)


def test_multilabel_set_has_patients_co_occurring_findings_and_uncertain_labels(
    tmp_path: Path,
) -> None:
    import csv

    from featurestore.data import SYNTH_FINDINGS, generate_synthetic_multilabel, load_manifest

    kw = {"seed": 2, "patients": 60, "min_side": 32, "max_side": 40}
    summary = generate_synthetic_multilabel(tmp_path / "ml", **kw)
    rows = list(csv.DictReader((summary.root / "labels.csv").open()))
    assert len(rows) == sum(c["images"] for c in summary.counts.values())
    cells = [r[f] for r in rows for f in SYNTH_FINDINGS]
    assert "-1" in cells and set(cells) <= {"0", "1", "-1"}
    both = sum(r["Cardiomegaly"] == "1" and r["Effusion"] == "1" for r in rows)
    assert both > 0  # findings co-occur
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())  # a patient is in one split
    m = load_manifest(summary.root / "labels.csv", val_min=0)
    assert m.task == "multilabel" and m.class_names == SYNTH_FINDINGS
    again = generate_synthetic_multilabel(tmp_path / "again", **kw)
    assert (again.root / "labels.csv").read_text() == (summary.root / "labels.csv").read_text()


@pytest.mark.slow
def test_multilabel_set_reads_with_the_default_uncertain_policy(tmp_path: Path) -> None:
    """Issue #28.8: seed 7 wrote a row with every finding uncertain, which the default
    `--uncertain ignore` refused; no row may be all -1, and the default policy reads it."""
    import csv

    from featurestore.data import SYNTH_FINDINGS, generate_synthetic_multilabel, load_manifest

    # The defaults of `xray data synth` (the image sizes change the draws): p0035_0 was it.
    summary = generate_synthetic_multilabel(tmp_path / "ml", seed=7)
    rows = list(csv.DictReader((summary.root / "labels.csv").open()))
    assert not [r for r in rows if all(r[f] == "-1" for f in SYNTH_FINDINGS)]
    assert any(r[f] == "-1" for r in rows for f in SYNTH_FINDINGS)  # still some uncertain
    m = load_manifest(summary.root / "labels.csv", val_min=0)  # the defaults: ignore
    assert len(m.records) == len(rows)


def test_the_three_class_set_read_as_given_says_how_to_read_its_classes(tmp_path: Path) -> None:
    """`xray data synth --task multiclass` writes NORMAL/PNEUMONIA folders named by kind: read
    as given it is binary, and extract/finetune say so and name --labels kermany3."""
    from featurestore.data import synth_label_hint

    three, two = tmp_path / "mc", tmp_path / "bin"
    generate_synthetic(three, task="multiclass", patients=12, seed=0, max_side=64, min_side=48)
    generate_synthetic(two, patients=12, seed=0, max_side=64, min_side=48)
    hint = synth_label_hint(three, "as-given")
    assert hint is not None and "--labels kermany3" in hint
    assert synth_label_hint(three, "kermany3") is None
    assert synth_label_hint(two, "as-given") is None
    assert synth_label_hint(tmp_path, "as-given") is None  # no marker: not a built-in set
