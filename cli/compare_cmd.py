"""`xray compare` and `xray demo`: the study's table, tests and report."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.common import (
    DataOption,
    JsonOption,
    RunsOption,
    console,
    emit_table,
    err_console,
    user_errors,
)

if TYPE_CHECKING:
    from featurestore.report import Comparison


def register(app: typer.Typer) -> None:
    """Add `compare` and `demo` to the app."""
    app.command("compare")(compare)
    app.command("demo")(demo)


@user_errors
def compare(
    runs: list[Path] = typer.Argument(
        None, help="Run folders to compare. Default: every complete run under --runs."
    ),
    runs_dir: Path = RunsOption,
    out: Path = typer.Option(
        None,
        "--out",
        help="Report folder. Default: reports/<time>.",
        show_default=False,
    ),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples."),
    resample: str = typer.Option(
        "patients", "--resample", help="Bootstrap unit: patients or images."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    allow_different_test: bool = typer.Option(
        False,
        "--allow-different-test",
        help="Compare runs evaluated on different test sets (paired tests skipped).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Compare runs: one table with bootstrap 95% intervals, paired tests, a report.

    Reads run folders written by `fit-head` and `finetune`; refuses runs evaluated on
    different test sets. Writes report.md, report.html, table.csv and plots.

    Examples:

        xray compare

        xray compare runs/20261128-101500-resnet50-frozen runs/20261128-102000-resnet50-finetune

        xray compare --resample images --bootstrap 5000 --out reports/study --json
    """
    from featurestore.report import CompareConfig, compare_runs
    from featurestore.report_write import write_report
    from featurestore.runs import list_runs

    paths = list(runs) if runs else list_runs(runs_dir)
    if not paths:
        from featurestore.errors import XrayError

        raise XrayError(
            f"no complete run folders under {runs_dir}: train with `xray fit-head` or "
            "`xray finetune` first, or pass run folders"
        )
    config = CompareConfig(
        n_boot=bootstrap, resample=resample, seed=seed, allow_different_test=allow_different_test
    )
    cmp = compare_runs(paths, config)
    out_dir = out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    report = write_report(cmp, out_dir)
    render_comparison(cmp, as_json=as_json, report=report)


def render_comparison(cmp: Comparison, *, as_json: bool, report: Path) -> None:
    """The comparison as rich tables (or one JSON document) and the report's path."""
    from featurestore.report import TABLE_METRICS
    from featurestore.report_write import METRIC_TITLES, fmt_interval, fmt_p

    if as_json:
        import json

        from featurestore.report_write import _finite

        doc = _finite(cmp.as_dict())
        doc["report"] = str(report)
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for note in cmp.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    cols = ["run", "params", "best/ep", "s/epoch", "extract s"]
    cols += [METRIC_TITLES[m] for m in TABLE_METRICS]
    rows = [
        [
            r.label,
            f"{r.trainable_params:,}",
            f"{r.best_epoch}/{r.epochs_run}",
            f"{r.seconds_per_epoch:.2f}",
            "-" if r.extraction_seconds is None else f"{r.extraction_seconds:.1f}",
        ]
        + [fmt_interval(r.metrics["at_threshold"][m]) for m in TABLE_METRICS]
        for r in cmp.rows
    ]
    b = cmp.baseline
    rows.append(
        [f"majority ({b['majority_class']})", "-", "-", "-", "-"]
        + [f"{b[m]:.3f}" if b.get(m) is not None else "-" for m in TABLE_METRICS]
    )
    ts = cmp.test_set
    emit_table(
        f"Test metrics at the validation threshold, 95% CI ({cmp.config.resample} bootstrap, "
        f"{ts['images']} images, {ts['patients']} patients)",
        cols,
        rows,
        as_json=False,
    )
    if cmp.pairs:
        emit_table(
            "Paired tests (same test images)",
            ["A", "B", "McNemar b/c", "McNemar p", "AUC A-B", "DeLong p"],
            [
                [
                    p.a,
                    p.b,
                    f"{p.mcnemar.b}/{p.mcnemar.c}",
                    fmt_p(p.mcnemar.p_value),
                    f"{p.delong.diff:+.3f}",
                    fmt_p(p.delong.p_value),
                ]
                for p in cmp.pairs
            ],
            as_json=False,
        )
    if cmp.seed_groups:
        emit_table(
            "Across seeds: mean ± sd",
            ["configuration", "seeds"] + [METRIC_TITLES[m] for m in TABLE_METRICS],
            [
                [g.label, str(len(g.seeds))]
                + [f"{g.mean[m]:.3f} ± {g.std[m]:.3f}" for m in TABLE_METRICS]
                for g in cmp.seed_groups
            ],
            as_json=False,
        )
    console.print(f"report: [bold]{report}[/] (also report.html, table.csv, plots)")


@user_errors
def demo(
    data: Path = DataOption,
    as_json: bool = JsonOption,
) -> None:
    """Run the whole study on the built-in data (placeholder until the trainer lands)."""
    from featurestore.errors import XrayError

    raise XrayError("xray demo is not available yet")
