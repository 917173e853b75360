"""`xray compare`: the runs' table, tests and report."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from featurestore.config import CompareConfig, EvaluateConfig

from .common import console, err_console, notice, user_errors
from .options import (
    DEFAULT_REPORTS,
    DEFAULT_RUNS,
    JsonFlag,
    Resample,
    RunsDir,
)

if TYPE_CHECKING:
    from featurestore.compare import Comparison, Interval


def register(app: typer.Typer) -> None:
    """Add `compare` to the app."""
    app.command("compare")(compare)


_COMPARE = CompareConfig()
_EVALUATE = EvaluateConfig()


@user_errors
def compare(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Run folders, folders of runs, or study folders (studies/<name> from `xray "
            "demo` / `xray study run`). Default: every complete run under --runs, else the "
            "newest study's runs.",
            show_default=False,
        ),
    ] = None,
    runs_dir: RunsDir = DEFAULT_RUNS,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report folder. Default: a new folder under reports/ named by the time "
            "(none with --json unless --out is given).",
            show_default=False,
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples.")
    ] = _COMPARE.n_boot,
    resample: Annotated[Resample, typer.Option("--resample", help="Bootstrap unit.")] = Resample(
        _COMPARE.resample
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = _COMPARE.seed,
    allow_different_test: Annotated[
        bool,
        typer.Option(
            "--allow-different-test",
            help="Compare runs evaluated on different test sets (paired tests skipped).",
        ),
    ] = _COMPARE.allow_different_test,
    evaluations: Annotated[
        Path,
        typer.Option(
            "--evaluations",
            help="Folder of `xray evaluate` outputs: the compared runs' evaluations on other "
            "datasets get an external-validation section in the report.",
        ),
    ] = _EVALUATE.out_dir,
    explain: Annotated[
        int,
        typer.Option(
            "--explain",
            help="Add Grad-CAM heatmaps of N test images per class and run to the report "
            "(multi-label: per finding, N present and N absent; needs the runs' test images). "
            "0: none.",
        ),
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Compare runs: one table with bootstrap 95% intervals, paired tests, a report.

    Reads run folders written by `fit-head` and `finetune` (or evaluation folders written by
    `xray evaluate`, compared on their external set); refuses runs evaluated on different test
    sets. Writes report.md, report.html, table.csv and plots, with an external-validation
    section when the runs have evaluations under --evaluations.

    Examples:

        xray compare

        xray compare runs/20261128-101500-resnet50-frozen runs/20261128-102000-resnet50-finetune

        xray compare --resample images --bootstrap 5000 --out reports/study --json

        xray compare --explain 2

        xray compare evaluations/*-on-hospital_b-test
    """
    from featurestore.compare import compare_runs, write_report
    from featurestore.runs import find_runs

    paths, where = find_runs(runs or [], runs_dir)
    if where is not None:
        notice(where)
    if not paths:
        from featurestore.errors import XrayError

        raise XrayError(
            f"no complete run folders under {runs_dir}: train with `xray fit-head` or "
            "`xray finetune` first, or pass run folders"
        )
    config = CompareConfig(
        n_boot=bootstrap,
        resample=resample.value,
        seed=seed,
        allow_different_test=allow_different_test,
    )
    out_dir = out or DEFAULT_REPORTS / datetime.now().strftime("%Y%m%d-%H%M%S")
    if explain < 0:
        from featurestore.errors import XrayError

        raise XrayError(f"--explain must be 0 or more, got {explain}")
    cmp = compare_runs(paths, config, evaluations=evaluations)
    if as_json and out is None and not explain:  # a script asked for JSON, not for files
        render_comparison(cmp, as_json=True, report=None)
        return
    if explain:
        from featurestore.progress import make_progress

        with make_progress(err_console, transient=True) as progress:
            report = write_report(cmp, out_dir, explain=explain, progress=progress)
    else:
        report = write_report(cmp, out_dir)
    render_comparison(cmp, as_json=as_json, report=report)


def fmt_short(iv: Interval) -> str:
    """`0.912` over `[0.887,0.934]` (stacked, so a column stays narrow); `-` where undefined,
    `†` after an unreliable interval."""
    if iv.estimate != iv.estimate:  # NaN: undefined on this test set
        return "-"
    return f"{iv.estimate:.3f}\n[{iv.lo:.3f},{iv.hi:.3f}]" + ("" if iv.reliable else " †")


def _fmt_value(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


LEGEND = (
    "Each cell: estimate over its 95% bootstrap interval [low,high]; -: undefined on this "
    "test set; †: unreliable (a class has fewer than {min_units} {unit}, or >1% of "
    "resamples undefined)."
)
MAX_PAIR_ROWS = 6
"""More pairs than this: the terminal shows the best run's pairs, the report shows all."""
PAIR_LEGEND = "Tests {clustered}; Holm p: adjusted over the {n} pairs (Holm 1979), per test."


def render_comparison(
    cmp: Comparison,
    *,
    as_json: bool,
    report: Path | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The comparison of runs of any task: warnings, the verdict, then the tables (or one
    JSON document, with `extra` keys added)."""
    from rich.markup import escape

    from featurestore.compare import (
        METRIC_TITLES,
        THRESHOLD_TITLES,
        fmt_best,
        pair_rows,
        test_set_line,
    )

    from .common import print_table

    if as_json:
        import json

        from featurestore.compare import json_safe

        doc = json_safe(cmp.as_dict())
        doc["report"] = None if report is None else str(report)
        doc.update(extra or {})
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for warning in cmp.warnings:
        console.print(f"[bold white on red] ⚠ {escape(warning)} [/]", highlight=False)
    if cmp.verdict is not None:
        console.print("[bold]Verdict[/]")
        for line in cmp.verdict.lines:
            console.print(f"  {line}", highlight=False, markup=False)
    for note in cmp.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    task = cmp.task
    shown = [m for m in task.table_metrics if m != "loss"]  # the loss: in the compute table
    first = cmp.decisions[0].name
    b = cmp.baseline
    base = f"majority ({b['majority_class']})" if b.get("majority_class") else "prevalence rule"
    legend = LEGEND.format(min_units=cmp.config.min_units_per_class, unit=cmp.config.resample)
    print_table(
        f"Test metrics at the {THRESHOLD_TITLES[first]} ({cmp.config.resample} bootstrap; "
        f"{test_set_line(cmp).removeprefix('Test set: ').rstrip('.')})",
        ["run"] + [METRIC_TITLES[m] for m in shown],
        [[r.label] + [fmt_short(r.metrics[first][m]) for m in shown] for r in cmp.rows]
        + [[base] + [_fmt_value(b.get(m)) for m in shown]],
        legend=legend,
    )
    if task.per_class_metrics:
        noun = task.unit_noun
        metric = "auc"
        print_table(
            f"Per {noun}: test ROC-AUC" + (" (one-vs-rest)" if task.multiclass else ""),
            ["run", *task.class_names],
            [[r.label, *(fmt_short(r.per_class[c][metric]) for c in task.class_names)]
             for r in cmp.rows],
        )  # fmt: skip
    loss_at = cmp.decisions[-1].name
    print_table(
        "Training and compute",
        ["run", "trainable", "best / run", "s/epoch", "extract s"]
        + (["test loss"] if "loss" in task.table_metrics else []),
        [
            [
                r.label,
                f"{r.trainable_params:,}",
                fmt_best(r) + (" (early stop)" if r.stopped_early else ""),
                f"{r.seconds_per_epoch:.2f}" + (" per C" if r.swept == "C" else ""),
                "-" if r.extraction_seconds is None else f"{r.extraction_seconds:.1f} once",
            ]
            + ([fmt_short(r.metrics[loss_at]["loss"])] if "loss" in task.table_metrics else [])
            for r in cmp.rows
        ],
        legend="best / run: best epoch / epochs run (logreg: the C kept / C values swept)."
        if any(r.swept == "C" for r in cmp.rows)
        else None,
    )
    if cmp.pairs:
        clustered = "clustered by patient" if cmp.config.resample == "patients" else "by image"
        head, rows = pair_rows(cmp, undefined="-")
        title, more = "Paired tests (same test images)", ""
        best = cmp.verdict.best if cmp.verdict is not None else None
        if len(rows) > MAX_PAIR_ROWS and best is not None:
            # Many runs: the pairs with the best run answer "is it better than each other run?";
            # every pair is in the report (report.md, comparison.json).
            rows = [r for r in rows if best in (r[0], r[1])]
            n = len(cmp.pairs)
            title = f"Paired tests: the best run against each other ({len(rows)} of {n} pairs)"
            more = f" The other {len(cmp.pairs) - len(rows)} pairs are in the report."
        print_table(
            title,
            head,
            rows,
            legend=PAIR_LEGEND.format(clustered=clustered, n=len(cmp.pairs))
            + (" DeLong per finding: in the report." if task.multilabel else "")
            + more,
        )
    if cmp.seed_groups:
        print_table(
            "Across seeds (same settings, distinct seeds): mean ± sd",
            ["configuration", "seeds"] + [METRIC_TITLES[m] for m in cmp.metrics],
            [
                [g.label, ", ".join(map(str, g.seeds))]
                + [
                    "-" if g.mean[m] != g.mean[m] else f"{g.mean[m]:.3f} ± {g.std[m]:.3f}"
                    for m in cmp.metrics
                ]
                for g in cmp.seed_groups
            ],
        )
    if report is not None:
        console.print(f"report: [bold]{report}[/] (also report.html, table.csv, plots)")
