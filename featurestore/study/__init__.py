"""Studies: a declared study file (`xray study run`), and the demo, the built-in one.

`file` parses and checks a study file, `plan` says what a run will train or reuse, `run`
trains it through the library's own functions, `report` answers the declared questions
(with `compare.questions`, re-exported here until `featurestore.compare` exports it),
`commands` spells a study out as step-by-step commands, `demo` writes the demo's file.
"""

from __future__ import annotations

from featurestore.compare.questions import (
    METRIC_NAMES,
    Answer,
    PairResult,
    answer_questions,
    check_metric,
    compare_pair,
    metric_names,
    score,
)
from featurestore.config import StudyConfig
from featurestore.study.commands import study_commands
from featurestore.study.demo import DemoResult, demo_text, run_demo
from featurestore.study.file import Arm, Question, Study, builtin_text, load_study, parse_study
from featurestore.study.plan import resolve_study_weights
from featurestore.study.report import build_report, render_markdown
from featurestore.study.run import run_study_file

__all__ = [
    "METRIC_NAMES",
    "Answer",
    "Arm",
    "DemoResult",
    "PairResult",
    "Question",
    "Study",
    "StudyConfig",
    "answer_questions",
    "build_report",
    "builtin_text",
    "check_metric",
    "compare_pair",
    "demo_text",
    "load_study",
    "metric_names",
    "parse_study",
    "render_markdown",
    "resolve_study_weights",
    "run_demo",
    "run_study_file",
    "score",
    "study_commands",
]
