"""`xray demo`: the built-in study file, written from `StudyConfig` (the demo's one source of
defaults), so the shipped `demo.toml` is `demo_text()` and every demo option is an edit of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.config import StudyConfig
from featurestore.study.file import Study, builtin_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from featurestore.study.report import StudyReport
    from featurestore.study.run import StudyRun

Notice = Callable[[str], None]

HEADER = """\
# The built-in demo study (`xray study show demo > study.toml`, then edit and
# `xray study run study.toml`). Paths are relative to where you run xray.
"""


def demo_name(config: StudyConfig) -> str:
    """The demo's study name (its folder under studies/): `demo`, `demo-multiclass`, ..."""
    return "demo" if config.task == "binary" else f"demo-{config.task}"


def _floats(values: tuple[float, ...]) -> str:
    # repr of a float is valid TOML (0.0001, 1e-05), never an int that TOML would read as one.
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def _strings(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _arm(name: str, model: str, body: list[str]) -> list[str]:
    return ["", "[[study.arm]]", f'name = "{name}"', f'model = "{model}"', *body]


def finetune_patience(config: StudyConfig) -> int:
    """Early-stopping patience of the demo's fine-tuning: a third of its epochs, at least 2."""
    return max(2, config.finetune_epochs // 3)


def demo_text(
    config: StudyConfig | None = None,
    *,
    data: Path | None = None,
    cache: Path | None = None,
    out: Path | None = None,
) -> str:
    """The demo's study file for `config` (default: the shipped `demo.toml`, byte for byte).

    Each backbone gets a frozen arm (extract + head) and a fine-tuned arm, and with
    `config.sweeps` a head sweep arm and a label-efficiency arm (`--sweep` and
    `--train-fraction` take every task's store). The declared questions: does
    fine-tuning help the first backbone, and, fine-tuned, is it better than each other one.
    `data` None leaves `data` out (the `--data` default chain); `cache` and `out` None leave
    the study's defaults (cache/, studies/).
    """
    config = config if config is not None else StudyConfig()
    lines = [HEADER.rstrip("\n"), "[study]", f'name = "{demo_name(config)}"']
    if data is None:
        lines.append(
            '# data = "data/chest_xray"   # absent: --data\'s default '
            "(XRAY_DATA, data/chest_xray, synthetic)"
        )
    else:
        lines.append(f'data = "{data.as_posix()}"')
    lines += [
        f"image_size = {config.image_size}",
        f"seeds = [{', '.join(str(s) for s in range(config.seeds))}]",
        f'weights = "{config.weights}"'
        + ("             # ImageNet when cached offline, else random init (with a banner)"
           if config.weights == "auto" else ""),
        f"n_boot = {config.n_boot}",
    ]  # fmt: skip
    if cache is not None:
        lines.append(f'cache = "{cache.as_posix()}"')
    if out is not None:
        lines.append(f'out = "{out.as_posix()}"')
    if config.labels != "as-given":
        lines.append(f'labels = "{config.labels}"')
    if config.workers is not None:
        lines.append(f"workers = {config.workers}")
    if config.precision is not None:
        lines.append(f'precision = "{config.precision}"')
    frozen = ['mode = "frozen"', f'head = "{config.head}"', f"epochs = {config.head_epochs}"]
    finetuned = [
        'mode = "finetune"',
        f"epochs = {config.finetune_epochs}",
        f"batch_size = {config.finetune_batch_size}",
        f"patience = {finetune_patience(config)}",
    ]
    for model in config.models:
        lines += _arm(f"{model}-frozen", model, frozen)
        lines += _arm(f"{model}-finetune", model, finetuned)
    if config.sweeps:
        lines += ["", "# Exploratory arms: a sweep table and a label-efficiency curve, never"]
        lines += ["# primary questions."]
        g = config.sweep
        sweep = (
            f"sweep = {{ lrs = {_floats(g.lrs)}, weight_decays = {_floats(g.weight_decays)}, "
            f"heads = {_strings(g.heads)} }}"
        )
        fractions = f"train_fractions = {_floats(config.train_fractions)}"
        for model in config.models:
            lines += _arm(f"{model}-sweep", model, [*frozen, sweep])
            lines += _arm(f"{model}-frozen-fewer-labels", model, [*frozen, fractions])
    first, others = config.models[0], config.models[1:]
    questions = [(f"does fine-tuning help {first}?", f"{first}-finetune", f"{first}-frozen")]
    questions += [
        (f"fine-tuned, is {first} better than {m}?", f"{first}-finetune", f"{m}-finetune")
        for m in others
    ]
    for name, a, b in questions:
        lines += ["", "[[study.question]]", f'name = "{name}"', f'a = "{a}"', f'b = "{b}"']
        lines.append('metric = "roc_auc"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` did: the study run, its report and the same study as commands."""

    study: Study
    run: StudyRun
    report: StudyReport
    path: Path
    """report.md in the study folder (beside it: report.json, study.toml, study.json)."""
    commands: list[str]


def run_demo(
    config: StudyConfig,
    *,
    data: Path,
    given_data: bool,
    cache: Path | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
    console: Console | None = None,
    notice: Notice | None = None,
) -> DemoResult:
    """Run the demo's study file (`demo_text(config)`) on `data`, report it, list its commands.

    `given_data` False (the default chain chose `data`) leaves `data` out of a binary demo's
    file, so that the default demo runs the shipped `demo.toml` itself; other tasks' files
    name the data (the default chain would pick binary data for them).

    Raises:
        XrayError: as `xray study run` raises it (an unknown backbone, unreadable data).
    """
    from featurestore.study.commands import study_commands
    from featurestore.study.file import parse_study
    from featurestore.study.report import build_report, write_study_report
    from featurestore.study.run import run_study_file

    written = data if given_data or config.task != "binary" else None
    text = demo_text(config, data=written, cache=cache, out=out)
    study = parse_study(text, source="demo")
    if text != builtin_text("demo"):  # an edited demo: named by the file it runs, kept there
        study = replace(study, source=str(study.folder / "study.toml"))
    done = run_study_file(study, data=data, progress=progress, console=console, notice=notice)
    report = build_report(done.plan, done.paths)
    path = write_study_report(report, done.plan.study.folder)
    commands = study_commands(done.plan, done.stores, cache=study.cache)
    return DemoResult(study, done, report, path, commands)
