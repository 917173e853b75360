"""The comparison's verdict in plain words, the dataset it is about, and warnings to show first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from featurestore.compare.analysis import Comparison, PairTest, RunRow
    from featurestore.runs import RunRecord

PRIMARY_TITLES = {
    "roc_auc": "ROC-AUC",
    "roc_auc_macro": "macro ROC-AUC",
    "accuracy": "accuracy",
}
_TEST_TITLES = {
    "delong": "clustered DeLong (Obuchowski 1997)",
    "auc_difference": "paired patient bootstrap of the difference (Davison & Hinkley 1997)",
    "mcnemar": "clustered McNemar (Durkalski et al. 2003)",
}
# The paired test behind each primary metric.
_TEST_OF = {"roc_auc": "delong", "roc_auc_macro": "auc_difference", "accuracy": "mcnemar"}


@dataclass(frozen=True)
class Verdict:
    """Which run is best on the primary metric, by how much, and whether that is significant."""

    metric: str
    """The task's primary metric (ROC-AUC; macro ROC-AUC for multi-class and multi-label), or
    accuracy (at the first decision rule) when an AUC is undefined for a single-label task."""
    best: str
    estimate: float
    lo: float
    hi: float
    runner_up: str | None
    margin: float | None
    """best - runner-up, on the primary metric."""
    test: str | None
    """The paired test behind p_value (clustered DeLong, paired bootstrap or McNemar)."""
    p_value: float | None
    p_adjusted: float | None
    """p_value after Holm's correction over every pair compared."""
    n_pairs: int
    significant: bool | None
    baseline: float | None
    """The majority-class (prevalence) rule's value of the primary metric."""
    lines: list[str] = field(default_factory=list)
    """The verdict as sentences, first thing in the terminal and the report."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _find_pair(pairs: list[PairTest], a: str, b: str) -> PairTest | None:
    return next((p for p in pairs if {p.a, p.b} == {a, b}), None)


def make_verdict(cmp: Comparison) -> Verdict:
    """Rank the runs on the task's primary metric (ROC-AUC; macro ROC-AUC for multi-class and
    multi-label; accuracy when an AUC is undefined for a single-label task) at the first
    decision rule; test the best against the runner-up (the best run that is not a repeat of
    it: same settings and seed) with the paired test of that metric
    (clustered DeLong, Obuchowski 1997; the paired patient bootstrap of the macro AUC
    difference; clustered McNemar, Durkalski et al. 2003) and Holm's correction over all pairs
    (stats.holm)."""
    rows = cmp.rows
    metric = cmp.task.primary_metric
    if not all(r.primary(metric).defined for r in rows) and not cmp.task.multilabel:
        metric = "accuracy"
    title = PRIMARY_TITLES[metric]
    level = f"{100 * (1 - cmp.config.alpha):.0f}%"
    ranked = sorted(
        rows, key=lambda r: -r.primary(metric).estimate if r.primary(metric).defined else 1.0
    )
    best = ranked[0]
    iv = best.primary(metric)
    lines = []
    if not iv.defined:
        lines.append(f"Best on {title}: undefined for every run on this test set (see the notes).")
    else:
        lines.append(
            f"Best on {title}: {best.label}, {iv.estimate:.3f} ({level} CI {iv.lo:.3f}-{iv.hi:.3f}"
            + ("" if iv.reliable else ", unreliable: too few patients of a class")
            + ")."
        )
    # The runner-up is the best run that is not a repeat of the best (the same command run
    # twice scores the same: comparing the two says nothing).
    twins = next((set(g) for g in cmp.repeats if best.label in g), {best.label})
    others = [r for r in ranked if r.label not in twins]
    runner = others[0] if others else None
    margin = p = p_adj = None
    test = None
    significant = None
    if runner is None and len(ranked) > 1:
        lines.append(
            f"The other runs repeat {best.label} (identical settings and seed): there is no "
            "different run to compare it with."
        )
    elif runner is None:
        lines.append("Only one run: there is nothing to compare it with.")
    elif iv.defined:
        margin = iv.estimate - runner.primary(metric).estimate
        pair = _find_pair(cmp.pairs, best.label, runner.label)
        clustered = cmp.config.resample == "patients"
        unit = "patients as clusters" if clustered else "images as independent"
        paired = None if pair is None else pair.test(_TEST_OF[metric])
        if pair is None:
            lines.append(
                f"Runner-up: {runner.label}, {margin:+.3f} behind; not tested "
                "(different test sets)."
            )
        elif paired is None or paired.p_value is None:
            lines.append(
                f"Runner-up: {runner.label}, {margin:.3f} lower; the paired test is undefined "
                "on this test set."
            )
        else:
            test = _TEST_TITLES[paired.name]
            p, p_adj = paired.p_value, paired.p_holm
            assert p_adj is not None
            significant = p_adj < cmp.config.alpha
            n = len(cmp.pairs)
            lines.append(
                f"Runner-up: {runner.label}, {margin:.3f} lower; {test}, {unit}: p = "
                f"{_fmt_p(p)}; Holm-adjusted over {n} pair{'s' if n > 1 else ''}: "
                f"p = {_fmt_p(p_adj)}: "
                + (
                    f"significant at {cmp.config.alpha:g}."
                    if significant
                    else f"not significant at {cmp.config.alpha:g}; the data do not separate them."
                )
            )
    b = cmp.baseline
    base_value = b.get(metric)
    acc = b.get("accuracy")
    if cmp.task.multilabel:
        lines.append(f"Baseline ({b['rule']}): macro ROC-AUC 0.500 (a constant ranks nothing).")
    else:
        lines.append(
            f"Majority-class baseline (always {b['majority_class']}): accuracy "
            + ("n/a" if acc is None else f"{acc:.3f}")
            + f", {'ROC-AUC' if cmp.task.binary else 'macro ROC-AUC'} 0.500 "
            "(a constant ranks nothing)."
        )
    auc = cmp.task.primary_metric
    chance = [
        r.label + _why_not_learned(r)
        for r in rows
        if r.primary(auc).defined and r.primary(auc).lo <= 0.5
    ]
    if chance:
        lines.append(
            f"No better than chance on this test set ({PRIMARY_TITLES[auc]} interval includes "
            "0.5): " + "; ".join(chance) + "."
        )
    return Verdict(
        metric,
        best.label,
        iv.estimate,
        iv.lo,
        iv.hi,
        None if runner is None else runner.label,
        margin,
        test,
        p,
        p_adj,
        len(cmp.pairs),
        significant,
        None if base_value is None else float(base_value),
        lines,
    )


def _why_not_learned(row: RunRow) -> str:
    """The recorded facts that explain a run at chance level, e.g. ` (random weights, 2
    fine-tune epochs: too little training for a network that starts from scratch)`."""
    facts = []
    if row.weights == "none":
        facts.append("random weights")
    if row.mode == "finetune" and row.epochs_run <= 3:
        facts.append(f"{row.epochs_run} fine-tune epoch{'s' if row.epochs_run > 1 else ''}")
    if not facts:
        return ""
    why = ": too little training for a network that starts from scratch" if len(facts) == 2 else ""
    return f" ({', '.join(facts)}{why})"


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def describe_dataset(records: list[RunRecord]) -> dict[str, Any]:
    """name, path, fingerprint, images per split and class, synthetic: what the runs used.

    The path is the dataset folder recorded by the run (fine-tune) or its store (frozen);
    synthetic is True when that folder holds the marker `xray data synth` writes. For
    evaluation folders it is the dataset `xray evaluate` scored (its split's counts), with
    `trained_on` the runs' own.
    """
    from featurestore.data import MARKER
    from featurestore.runs import is_synthetic, run_dataset_root

    ref = records[0].config
    evaluation = ref.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("data"):
        # An `xray evaluate` folder: the dataset it scored, not the one the run trained on.
        scored = Path(str(evaluation["data"]))
        folder = scored.parent if scored.suffix.lower() in (".csv", ".npz") else scored
        counts = evaluation.get("per_class") or evaluation.get("positives")
        counts = counts if isinstance(counts, dict) else None  # older folders: an int
        trained = run_dataset_root(ref)
        return {
            "name": evaluation.get("dataset") or folder.name,
            "path": str(scored),
            "fingerprint": evaluation.get("dataset_fingerprint"),
            "class_counts": {str(evaluation.get("split")): counts} if counts else None,
            "synthetic": (folder / MARKER).is_file(),
            "trained_on": str(trained) if trained else None,
        }
    path = run_dataset_root(ref)
    return {
        "name": path.name if path else None,
        "path": str(path) if path else None,
        "fingerprint": ref.get("dataset_fingerprint"),
        "class_counts": ref.get("class_counts"),
        "synthetic": is_synthetic(ref),
    }


def data_warnings(rows: list[RunRow], dataset: dict[str, Any]) -> list[str]:
    """Random-weights and synthetic-data warnings ("all runs" when every run is concerned)."""
    out = []
    random = [r.label for r in rows if r.weights == "none"]
    if random:
        who = (
            "All runs use"
            if len(random) == len(rows)
            else f"{len(random)} of {len(rows)} runs ({', '.join(random)}) use"
        )
        out.append(
            f"RANDOM WEIGHTS: {who} randomly initialised backbones (--weights none): a "
            "pipeline check, not a result about pretrained transfer."
        )
    if dataset.get("synthetic"):
        out.append(
            "SYNTHETIC DATA: all runs are on the built-in synthetic phantoms "
            f"({dataset.get('path')}): the numbers say nothing about real radiographs."
        )
    return out


def counts_line(dataset: dict[str, Any]) -> str:
    """`train 240 (NORMAL 80, PNEUMONIA 160), val ..., test ...`, or "" when not recorded."""
    counts = dataset.get("class_counts") or {}
    parts = []
    for split, per_class in counts.items():
        total = int(np.sum(list(per_class.values())))
        inner = ", ".join(f"{c} {n}" for c, n in per_class.items())
        parts.append(f"{split} {total} ({inner})")
    return "; ".join(parts)
