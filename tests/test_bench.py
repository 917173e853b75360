"""Smoke tests: every bench script runs with --quick and prints its table and one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# The figures each bench's JSON line must carry (values are timings: not asserted on).
EXPECTED = {
    "startup": ["commands", "python_floor_s", "meets_target"],
    "extract": ["models", "decode_images_per_s_per_core", "memory", "best_ratio"],
    "head": ["results", "meets_target", "frozen_epoch_is_estimate", "sweep_meets_target"],
    "finetune": ["first_epoch_ratio", "later_epoch_ratio", "loader_profile", "cached_images"],
    "precision": ["models", "cpu_computes_bf16", "meets_target"],
    "scale": ["stages", "fingerprint_full_s", "fingerprint_stat_only_s", "peak_rss_mb"],
}


# Extra arguments of a quick run: the GPU bench runs on the CPU at its tiny size.
QUICK_ARGS = {"gpu": ["--device", "cpu"]}


def run_quick(name: str) -> tuple[dict, str]:
    """Run bench/<name>.py --quick; return its JSON record and whole stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", *QUICK_ARGS.get(name, [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last), proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bench_quick_prints_table_and_json(name: str) -> None:
    record, stdout = run_quick(name)
    assert record["bench"] == name
    assert record["cores"] >= 1 and record["torch"] and record["torch_threads"] >= 1
    for key in EXPECTED[name]:
        assert key in record, f"{name}: {key} missing from {sorted(record)}"
    assert "┃" in stdout  # the rich table came before the JSON line
    if name == "finetune":
        assert record["cached_images"] == 10  # every image of the quick set went into the cache


def test_gpu_bench_runs_on_cpu_at_a_tiny_size() -> None:
    """Not marked slow: bench/gpu.py must stay runnable in one call when a GPU is lent."""
    record, stdout = run_quick("gpu")
    assert record["bench"] == "gpu" and record["quick"] and record["device"] == "cpu"
    assert "┃" in stdout
    (model,) = record["models"]
    sides = {"forward", "extract first", "extract second", "finetune step"}
    assert set(model["images_per_s"]) == sides
    assert all(v > 0 for v in model["images_per_s"].values())
    for ratio in ("extract_first_over_forward", "finetune_step_over_forward"):
        assert model[ratio] > 0


def test_interleave_alternates_order_and_dataset_refuses_too_few_images() -> None:
    """The shared helpers: measurement order alternates per round; tiny datasets refused."""
    sys.path.insert(0, str(BENCH))
    try:
        import benchlib
    finally:
        sys.path.remove(str(BENCH))
    calls: list[str] = []
    got = benchlib.interleave(
        {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]  # order alternates every round
    assert got == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert benchlib.median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        benchlib.radiograph_dataset(0)
