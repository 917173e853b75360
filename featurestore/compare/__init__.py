"""Judging runs: metrics at a threshold, bootstrap intervals, paired tests (McNemar, DeLong),
the majority baseline, `compare_runs` and the report files behind `xray compare`.
"""

from __future__ import annotations

from featurestore.compare.analysis import (
    TABLE_METRICS,
    THRESHOLD_FREE,
    THRESHOLDS,
    Comparison,
    Interval,
    PairTest,
    RunRow,
    SeedGroup,
    compare_runs,
)
from featurestore.compare.bootstrap import (
    BOOT_METRICS,
    BootMetric,
    BootstrapResult,
    PairedResult,
    WeightedMetric,
    bootstrap_ci,
    bootstrap_interval,
    check_labels,
    paired_bootstrap,
)
from featurestore.compare.metrics import (
    PROB_EPS,
    binary_metrics,
    choose_threshold,
    evaluate_split,
    expected_calibration_error,
)
from featurestore.compare.multiclass import (
    MULTICLASS_DECISION,
    check_multiclass_inputs,
    evaluate_multiclass_split,
    multiclass_metrics,
    one_vs_rest_auc,
)
from featurestore.compare.report import (
    METRIC_TITLES,
    THRESHOLD_TITLES,
    fmt_interval,
    fmt_p,
    json_safe,
    render_html,
    render_markdown,
    write_report,
)
from featurestore.compare.stats import (
    DeLongResult,
    McNemarResult,
    delong_ci,
    delong_roc_test,
    majority_baseline,
    mcnemar,
)
from featurestore.config import THRESHOLD_POLICIES, CompareConfig

__all__ = [
    "BOOT_METRICS",
    "METRIC_TITLES",
    "MULTICLASS_DECISION",
    "PROB_EPS",
    "TABLE_METRICS",
    "THRESHOLDS",
    "THRESHOLD_FREE",
    "THRESHOLD_POLICIES",
    "THRESHOLD_TITLES",
    "BootMetric",
    "BootstrapResult",
    "CompareConfig",
    "Comparison",
    "DeLongResult",
    "Interval",
    "McNemarResult",
    "PairTest",
    "PairedResult",
    "RunRow",
    "SeedGroup",
    "WeightedMetric",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_interval",
    "check_labels",
    "check_multiclass_inputs",
    "choose_threshold",
    "compare_runs",
    "delong_ci",
    "delong_roc_test",
    "evaluate_multiclass_split",
    "evaluate_split",
    "expected_calibration_error",
    "fmt_interval",
    "fmt_p",
    "json_safe",
    "majority_baseline",
    "mcnemar",
    "multiclass_metrics",
    "one_vs_rest_auc",
    "paired_bootstrap",
    "render_html",
    "render_markdown",
    "write_report",
]
