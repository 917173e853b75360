"""Label-efficiency curves in compare: points per training size, intervals, report section."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import write_fake_run

from featurestore.compare import CompareConfig, compare_runs, curve_points, write_report


def subset_run(root: Path, name: str, *, model: str, images: int, tag: str, skill: float,
               seed: int = 0) -> Path:  # fmt: skip
    run = write_fake_run(root, name, model=model, mode="frozen", skill=skill, seed=seed)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(train_images=images, train_patients=images // 2, subset_tag=tag, seed=seed,
               train_fraction=float(tag[1:]))  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_the_curve_has_one_line_per_backbone_with_intervals(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    runs = [
        subset_run(root, f"r50-{tag}-s{seed}", model="resnet50", images=n, tag=tag,
                   skill=skill, seed=seed)
        for tag, n, skill in (("f0.1", 12, 0.3), ("f0.5", 60, 0.9), ("f1", 120, 1.5))
        for seed in (0, 1)
    ]  # fmt: skip
    runs += [subset_run(root, f"d121-{t}", model="densenet121", images=n, tag=t, skill=1.0)
             for t, n in (("f0.1", 12), ("f1", 120))]  # fmt: skip
    # A run trained at one size only draws no curve.
    runs.append(write_fake_run(root, "r18", model="resnet18", mode="frozen", skill=1.0))
    cmp = compare_runs(runs, CompareConfig(n_boot=200))
    points = curve_points(cmp)
    assert {p.line for p in points} == {"resnet50 frozen/linear", "densenet121 frozen/linear"}
    r50 = [p for p in points if p.line.startswith("resnet50")]
    assert [p.train_images for p in r50] == [12, 12, 60, 60, 120, 120]
    assert all(p.auc.lo <= p.auc.estimate <= p.auc.hi for p in points)
    # Runs of different sizes are not one configuration's seeds.
    assert all("@f" in g.label for g in cmp.seed_groups) and len(cmp.seed_groups) == 3
    report = write_report(cmp, tmp_path / "report")
    text = report.read_text()
    assert "## Label efficiency" in text and "label_efficiency.png" in text
    assert (tmp_path / "report" / "label_efficiency.png").stat().st_size > 0


def test_no_curve_without_several_sizes(tmp_path: Path) -> None:
    runs = [write_fake_run(tmp_path, n, model=n, mode="frozen", skill=1.0) for n in ("a", "b")]
    cmp = compare_runs(runs, CompareConfig(n_boot=200))
    assert curve_points(cmp) == []
    text = write_report(cmp, tmp_path / "report").read_text()
    assert "Label efficiency" not in text


def test_runs_trained_otherwise_are_other_lines_and_fractions_and_shots_are_apart(
    tmp_path: Path,
) -> None:
    """Helper review: runs at another learning rate were pooled into one line, and fraction
    and shots subsets of one configuration were drawn as one series."""
    root = tmp_path / "runs"
    runs = [subset_run(root, f"a-{t}", model="resnet50", images=n, tag=t, skill=1.0)
            for t, n in (("f0.1", 12), ("f0.5", 60))]  # fmt: skip
    for tag, n in (("k2", 4), ("k5", 10)):
        run = subset_run(root, f"a-{tag}", model="resnet50", images=n, tag="f1", skill=1.0)
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(subset_tag=tag, shots=int(tag[1:]), train_fraction=None)
        (run / "config.json").write_text(json.dumps(cfg))
        runs.append(run)
    full = write_fake_run(root, "a-all", model="resnet50", mode="frozen", skill=1.0)
    cfg = json.loads((full / "config.json").read_text())
    cfg.update(train_images=120, train_patients=60)  # as every run records it now
    (full / "config.json").write_text(json.dumps(cfg))
    runs.append(full)
    other = [subset_run(root, f"b-{t}", model="resnet50", images=n, tag=t, skill=1.0)
             for t, n in (("f0.1", 12), ("f0.5", 60))]  # fmt: skip
    for run in other:
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(cfg | {"lr": 0.01}))
    cmp = compare_runs([*runs, *other], CompareConfig(n_boot=100))
    points = curve_points(cmp)
    lines: dict[str, list[tuple[str, int, int | None]]] = {}
    for p in points:
        lines.setdefault(p.line, []).append((p.subset, p.train_images, p.train_patients))
    assert len(lines) == 3, lines
    fractions = next(v for k, v in lines.items() if k.endswith("(fraction of patients)"))
    shots = next(v for k, v in lines.items() if k.endswith("(images per class)"))
    assert fractions == [("f0.1", 12, 6), ("f0.5", 60, 30), ("all", 120, 60)]
    assert shots == [("k2", 4, 2), ("k5", 10, 5), ("all", 120, 60)]
    (tenfold,) = [k for k in lines if "(" not in k]
    assert "lr=0.01" in tenfold and lines[tenfold] == [("f0.1", 12, 6), ("f0.5", 60, 30)]
