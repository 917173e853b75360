"""Run folders: what a training records (`run_config`, `RunSummary`) and the folder itself,
written atomically and read back (`write_run`, `load_run`, `list_runs`).
"""

from __future__ import annotations

from featurestore.runs.folder import (
    RUN_FILES,
    PLOT_FILES,
    PREDICTION_COLUMNS,
    INPROGRESS,
    HISTORY_COLUMNS,
    run_name,
    config_hash,
    inprogress_dir,
    write_run,
    write_history,
    write_predictions,
    RunRecord,
    find_runs,
    is_complete_run,
    load_run,
    list_runs,
)
from featurestore.runs.record import (
    Notice,
    RunSummary,
    summarize,
    class_counts,
    run_config,
)

__all__ = [
    "HISTORY_COLUMNS",
    "INPROGRESS",
    "Notice",
    "PLOT_FILES",
    "PREDICTION_COLUMNS",
    "RUN_FILES",
    "RunRecord",
    "RunSummary",
    "class_counts",
    "config_hash",
    "inprogress_dir",
    "find_runs",
    "is_complete_run",
    "list_runs",
    "load_run",
    "run_config",
    "run_name",
    "summarize",
    "write_history",
    "write_predictions",
    "write_run",
]
