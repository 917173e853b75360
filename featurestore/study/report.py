"""`xray study report`: the declared questions first, then the arms, sweeps, curves, and the
exploratory pairs (not corrected for multiplicity), as report.md and report.json."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import XrayError
from featurestore.study.plan import Plan
from featurestore.tasks import Task

REPORT = "report.md"
REPORT_JSON = "report.json"


@dataclass(frozen=True)
class StudyReport:
    """What the report says, as data (report.json) and as Markdown (report.md)."""

    name: str
    task: str
    answers: list[Any]
    """compare.questions.Answer per declared question, in file order."""
    arms: list[dict[str, Any]]
    sweeps: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    exploratory: list[dict[str, Any]]
    header: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; undefined numbers are None."""
        return {
            **self.header,
            "questions": [a.as_dict() for a in self.answers],
            "arms": self.arms,
            "sweeps": self.sweeps,
            "curves": self.curves,
            "exploratory": self.exploratory,
        }


def _metrics_for(task: Task) -> list[str]:
    """The table's metrics: the task's primary metric first, then its other headline ones."""
    return [task.primary_metric, *(m for m in task.table_metrics if m != task.primary_metric)]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).all():
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None


def build_report(plan: Plan, paths: dict[str, Path]) -> StudyReport:
    """Read every run of the plan and answer the study's questions.

    Raises:
        XrayError: a run of the plan has no complete folder (run `xray study run` first).
    """
    from featurestore.compare.questions import answer_questions, compare_pair, metric_label, score
    from featurestore.runs import load_run

    study = plan.study
    missing = [r.label for r in plan.runs if r.key not in paths]
    if missing:
        raise XrayError(
            f"{study.source}: {len(missing)} runs are not done yet ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); run `xray study run {study.source}` first"
        )
    records = {r.key: load_run(paths[r.key]) for r in plan.runs}
    by_arm: dict[str, list[Any]] = {}
    for r in plan.runs:
        if r.point is None:
            by_arm.setdefault(r.arm.name, []).append(records[r.key])
    task = records[plan.runs[0].key].task
    metrics = _metrics_for(task)
    answers = answer_questions(
        [(q.name, q.a, q.b, by_arm[q.a], by_arm[q.b], q.metric) for q in study.questions],
        n_boot=study.n_boot,
        alpha=study.alpha,
        seed=study.bootstrap_seed,
    )
    arms = []
    for arm in study.arms:
        if arm.kind == "curve":
            continue
        runs = by_arm[arm.name]
        row: dict[str, Any] = {
            "arm": arm.name,
            "model": arm.model,
            "mode": arm.mode,
            "kind": arm.kind,
            "runs": len(runs),
        }
        for m in metrics:
            row[m], row[f"{m}_sd"] = _mean_sd([score(rec, m) for rec in runs])
        arms.append(row)
    sweeps = []
    for arm in study.arms:
        if arm.kind != "sweep":
            continue
        for seed, rec in zip(study.seeds, by_arm[arm.name], strict=True):
            cfg = rec.config
            sweeps.append(
                {
                    "arm": arm.name,
                    "seed": seed,
                    "members": len(arm.sweep.members()) if arm.sweep else None,
                    "chosen_head": cfg.get("head"),
                    "chosen_lr": cfg.get("lr"),
                    "chosen_weight_decay": cfg.get("weight_decay"),
                    **{m: _none(score(rec, m)) for m in metrics},
                }
            )
    curves = []
    for arm in study.arms:
        if arm.kind != "curve":
            continue
        what = "fraction" if arm.train_fractions else "shots"
        for point in arm.train_fractions or arm.shots_per_class:
            runs = [
                records[r.key] for r in plan.runs if r.arm.name == arm.name and r.point == point
            ]
            row = {"arm": arm.name, what: point, "runs": len(runs)}
            for m in metrics:
                row[m], row[f"{m}_sd"] = _mean_sd([score(rec, m) for rec in runs])
            curves.append(row)
    declared = {frozenset((q.a, q.b)) for q in study.questions}
    primary = [a.name for a in study.arms if a.kind == "primary"]
    # The declared questions' metrics (as the engine names them), else the primary one.
    question_metrics = sorted({metric_label(task, q.metric) for q in study.questions}) or [
        task.primary_metric
    ]
    exploratory = []
    # Arms whose ROC-AUC interval reaches 0.5 in any pair they are in (each arm's own interval).
    chance = [c for ans in answers for c in ans.result.at_chance(ans.a, ans.b)]
    for a, b in itertools.combinations(primary, 2):
        if frozenset((a, b)) in declared:
            continue
        for m in question_metrics:
            res = compare_pair(
                by_arm[a],
                by_arm[b],
                m,
                n_boot=study.n_boot,
                alpha=study.alpha,
                seed=study.bootstrap_seed,
            )
            exploratory.append({"a": a, "b": b, **res.as_dict()})
            chance += res.at_chance(a, b)
    header = {
        "study": study.name,
        "source": study.source,
        "sha256": study.sha256,
        "data": str(plan.data),
        "task": plan.task,
        "seeds": list(study.seeds),
        "random_init": plan.random_init,
        "n_boot": study.n_boot,
        "alpha": study.alpha,
        "bootstrap_seed": study.bootstrap_seed,
        "metrics": metrics,
        "precision": _precision(plan, records),
        "at_chance": list(dict.fromkeys(chance)),
    }
    return StudyReport(study.name, plan.task, answers, arms, sweeps, curves, exploratory, header)


def _precision(plan: Plan, records: dict[str, Any]) -> dict[str, str]:
    """Arm -> what its backbone computed in (`bf16`, `fp32`; `unrecorded` for runs from before
    it was kept; several joined by `/` when its runs differ)."""
    from featurestore.runs import run_precision

    out: dict[str, set[str]] = {}
    for r in plan.runs:
        out.setdefault(r.arm.name, set()).add(run_precision(records[r.key].config) or "unrecorded")
    return {arm: "/".join(sorted(values)) for arm, values in out.items()}


def _precision_text(by_arm: dict[str, str]) -> str:
    """`backbones in bf16`, or each arm's precision when they differ."""
    values = set(by_arm.values())
    if len(values) == 1:
        return f"backbones in {values.pop()}"
    return "backbone precision " + ", ".join(f"{a} {p}" for a, p in by_arm.items())


def _none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _cell(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "undefined"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def render_markdown(report: StudyReport) -> str:
    """report.md: questions, arms, sweeps, curves, exploratory pairs, in that order."""
    from featurestore.compare.questions import fmt, fmt_p

    h = report.header
    out = [f"# Study {report.name}", ""]
    out.append(
        f"File `{h['source']}` (sha256 `{h['sha256'][:12]}`), data `{h['data']}` ({h['task']}), "
        f"seeds {', '.join(map(str, h['seeds']))}; {_precision_text(h['precision'])}; "
        "intervals: paired patient bootstrap, "
        f"{h['n_boot']} resamples (seed {h['bootstrap_seed']}), alpha {h['alpha']:g}."
    )
    if h["random_init"]:
        out += [
            "",
            "**RANDOM-INIT BACKBONES (weights none) in this study: a pipeline check only.**",
        ]
    family = len(report.answers)
    out += ["", f"## Questions (declared before the results; Holm over {family})", ""]
    if not report.answers:
        out.append("The study declares no questions.")
    for i, ans in enumerate(report.answers, 1):
        r = ans.result
        out += [f"### {i}. {ans.name}", "", ans.statement(), ""]
        out += [
            "| a | b | metric | a | b | a - b | interval | test | p | Holm p |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {ans.a} | {ans.b} | {r.metric} | {fmt(r.estimate_a)} | {fmt(r.estimate_b)} | "
            f"{fmt(r.diff, signed=True)} | {fmt(r.lo, signed=True)} to {fmt(r.hi, signed=True)} | "
            f"{r.test} | {fmt_p(r.p_value)} | {fmt_p(ans.holm_p)} |",
            "",
            f"{r.n_runs} run(s) per arm, {r.n_images} test images of {r.n_patients} patients; "
            f"{r.n_skipped} of {r.n_boot} resamples undefined.",
            "",
        ]
    metrics = list(h["metrics"])
    if h.get("at_chance"):
        out += [
            "**No better than chance on this test set:** " + "; ".join(h["at_chance"]) + ".",
            "",
        ]
    out += ["## Arms (mean ± SD over seeds)", ""]
    out += ["| arm | model | mode | kind | runs | " + " | ".join(metrics) + " |"]
    out += ["|" + "---|" * (5 + len(metrics))]
    for row in report.arms:
        cells = [_cell(row[m], row[f"{m}_sd"]) for m in metrics]
        out.append(
            f"| {row['arm']} | {row['model']} | {row['mode']} | {row['kind']} | {row['runs']} | "
            + " | ".join(cells)
            + " |"
        )
    if report.sweeps:
        out += ["", "## Sweeps (the member chosen on validation, per seed)", ""]
        out += ["| arm | seed | members | head | lr | weight decay | " + " | ".join(metrics) + " |"]
        out += ["|" + "---|" * (6 + len(metrics))]
        for row in report.sweeps:
            out.append(
                f"| {row['arm']} | {row['seed']} | {row['members']} | {row['chosen_head']} | "
                f"{row['chosen_lr']} | {row['chosen_weight_decay']} | "
                + " | ".join(fmt(row[m]) for m in metrics)
                + " |"
            )
    if report.curves:
        out += ["", "## Label efficiency (a curve; never a primary question)", ""]
        for row in report.curves:
            point = (
                f"fraction {row['fraction']:g}" if "fraction" in row else f"{row['shots']} shots"
            )
            out.append(
                f"- {row['arm']}, {point} ({row['runs']} runs): "
                + ", ".join(f"{m} {_cell(row[m], row[f'{m}_sd'])}" for m in metrics)
            )
    out += ["", "## Exploratory pairs (NOT corrected for multiplicity)", ""]
    out.append(
        "Every other pair of primary arms, for orientation only: these p-values are raw, "
        "not part of the Holm family, and are not evidence on their own."
    )
    if not report.exploratory:
        out += ["", "None: no pair of primary arms is left outside the declared questions."]
    if report.exploratory:
        out += [
            "",
            "| a | b | metric | a - b | interval | test | raw p |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in report.exploratory:
            out.append(
                f"| {e['a']} | {e['b']} | {e['metric']} | {fmt(_nan(e['diff']), signed=True)} | "
                f"{fmt(_nan(e['lo']), signed=True)} to {fmt(_nan(e['hi']), signed=True)} | "
                f"{e['test']} | {fmt_p(_nan(e['p_value']))} |"
            )
    return "\n".join(out) + "\n"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def write_study_report(report: StudyReport, folder: Path) -> Path:
    """report.md and report.json in the study folder; returns report.md's path."""
    from featurestore.fileio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(report.as_dict(), indent=2, default=str) + "\n"
    atomic_write_bytes(folder / REPORT_JSON, doc.encode())
    atomic_write_bytes(folder / REPORT, render_markdown(report).encode())
    return folder / REPORT
