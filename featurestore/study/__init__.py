"""Studies: a declared study file (`xray study run`) and the legacy demo study (`run_study`).

`file` parses and checks a study file, `plan` says what a run will train or reuse, `run`
trains it through the library's own functions, `report` answers the declared questions
(with `compare.questions`, re-exported here until `featurestore.compare` exports it).
"""

from __future__ import annotations

from featurestore.compare.questions import (
    METRICS,
    Answer,
    PairResult,
    answer_questions,
    compare_pair,
)
from featurestore.config import StudyConfig
from featurestore.study.file import Arm, Question, Study, builtin_text, load_study, parse_study
from featurestore.study.legacy import (
    StudyResult,
    resolve_study_weights,
    run_study,
    study_commands,
)

__all__ = [
    "METRICS",
    "Answer",
    "Arm",
    "PairResult",
    "Question",
    "Study",
    "StudyConfig",
    "StudyResult",
    "answer_questions",
    "builtin_text",
    "compare_pair",
    "load_study",
    "parse_study",
    "resolve_study_weights",
    "run_study",
    "study_commands",
]
