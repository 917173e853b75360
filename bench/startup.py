"""Bench: wall time of `xray --help` and `xray <command> --help`, and whether torch got imported.

Run: .venv/bin/python bench/startup.py [--quick] [--repeats N]
Target: < 0.5 s each (median of N fresh processes), torch never imported for --help.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import emit, environment, median

TARGET_SECONDS = 0.5
COMMANDS = (["--help"], ["fit-head", "--help"], ["extract", "--help"], ["finetune", "--help"])
HEAVY = ("torch", "torchvision", "h5py", "sklearn", "matplotlib")

# Runs the CLI's --help in this interpreter, then reports which heavy modules it imported.
_PROBE = """
import sys
sys.argv = ["xray", *sys.argv[1:]]
from featurestore.cli.main import main
try:
    main()
except SystemExit:
    pass
heavy = [m for m in {heavy!r} if m in sys.modules]
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


def xray_executable() -> list[str]:
    """The installed console script beside this interpreter, else `python -m featurestore.cli`."""
    script = Path(sys.executable).with_name("xray")
    if script.is_file():
        return [str(script)]
    found = shutil.which("xray")
    return [found] if found else [sys.executable, "-m", "featurestore.cli"]


def time_once(argv: list[str]) -> float:
    """Wall seconds of one fresh `xray ARGS` process (its output discarded)."""
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - began


def heavy_imports(args: list[str]) -> list[str]:
    """Heavy modules (torch, h5py, ...) that `xray ARGS` imports."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def python_floor() -> float:
    """Wall seconds of a bare `python -c pass`: the part no CLI work can remove."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - began


def main() -> None:
    """Time each --help in fresh processes, interleaved, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 2 commands")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    commands = COMMANDS[:2] if args.quick else COMMANDS
    exe = xray_executable()
    time_once([*exe, "--help"])  # warm the OS file cache once
    times: dict[str, list[float]] = {" ".join(c): [] for c in commands}
    floor: list[float] = []
    for r in range(repeats):
        # Alternate the order each round so background load hits every command alike.
        for cmd in commands if r % 2 == 0 else reversed(commands):
            times[" ".join(cmd)].append(time_once([*exe, *cmd]))
        floor.append(python_floor())
    rows = []
    record: dict[str, object] = {"bench": "startup", **environment(), "repeats": repeats}
    results = {}
    for cmd in commands:
        name = " ".join(cmd)
        med = median(times[name])
        heavy = heavy_imports(list(cmd))
        ok = med < TARGET_SECONDS and not heavy
        results[name] = {
            "median_s": round(med, 3),
            "min_s": round(min(times[name]), 3),
            "heavy_imports": heavy,
            "meets_target": ok,
        }
        verdict = "yes" if ok else "NO"
        rows.append((f"xray {name}", med, min(times[name]), ", ".join(heavy) or "none", verdict))
    rows.append(("python -c pass (floor)", median(floor), min(floor), "-", "-"))
    record["commands"] = results
    record["python_floor_s"] = round(median(floor), 3)
    record["target_s"] = TARGET_SECONDS
    record["meets_target"] = all(r["meets_target"] for r in results.values())
    env = environment()
    emit(
        f"startup ({env['cores']} cores, torch {env['torch']}, {repeats} repeats)",
        ["command", "median s", "min s", "heavy imports", f"< {TARGET_SECONDS} s"],
        rows,
        record,
    )


if __name__ == "__main__":
    main()
