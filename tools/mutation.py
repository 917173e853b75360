"""Mutation testing on demand: do the tests notice when a number-changing module is wrong?

mutmut (3.x) rewrites one module many times, each time with one small bug (`<` for `<=`, a
dropped argument, `+` for `-`), and runs the tests that cover the changed function. A mutant
the tests pass is "survived": either a test is missing or the change cannot alter any result
(an equivalent mutant). Equivalent ones are listed, with the reason, in docs/MUTATION.md; this
script reports every other survivor and exits 1 when there is one.

Not part of CI (minutes per module on two cores). Usage, from the repository root:

    pip install "mutmut>=3.8,<4"
    python tools/mutation.py compare/stats.py compare/bootstrap.py
    python tools/mutation.py --all --max-children 2

Each target runs in its own scratch copy of the repository (default under the system temp
folder), so the working tree is never touched. The copy is kept: a rerun reuses mutmut's
verdicts and retests only new mutants and the survivors; `--fresh` starts over (needed after
tests were removed or weakened).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_DOC = ROOT / "docs" / "MUTATION.md"

# Modules whose mistakes change a reported number, the tests that judge them, and whether the
# tests import torch (torch is not fork-safe once it has threads: workers then fork from a
# clean server, slower). Slow end-to-end tests are left out: mutmut runs the covering tests
# once per mutant. compare's report tests are not listed for bootstrap/stats: they check
# compare_runs against these very functions, so they cannot see a bug inside them.
TARGETS: dict[str, tuple[list[str], bool]] = {
    "compare/metrics.py": (["tests/compare/test_metrics.py", "tests/compare/test_stats.py"], False),
    "compare/bootstrap.py": (["tests/compare/test_stats.py"], False),
    "compare/stats.py": (["tests/compare/test_stats.py"], False),
    "data/manifest.py": (["tests/data/test_manifest.py"], False),
    "store/read.py": (["tests/store/test_store.py", "tests/store/test_extract.py"], True),
    "train/optim.py": (["tests/train/test_loop.py"], True),
    "train/loop.py": (["tests/train/test_loop.py"], True),
}
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
_NAME = re.compile(r"^(?P<module>[\w.]+)\.(?P<function>[^.]+)__mutmut_(?P<n>\d+)$")


def scratch_copy(target: str, workdir: Path) -> Path:
    """A copy of the library, the CLI and the tests with a [tool.mutmut] section for `target`."""
    tests, uses_torch = TARGETS[target]
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("featurestore", "cli", "tests"):
        if (workdir / folder).exists():
            shutil.rmtree(workdir / folder)
        shutil.copytree(ROOT / folder, workdir / folder, ignore=ignore)
    pytest_args = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not slow"]
    config = (ROOT / "pyproject.toml").read_text() + (
        "\n[tool.mutmut]\n"
        'source_paths = ["featurestore"]\n'
        f'only_mutate = ["featurestore/{target}"]\n'
        f"pytest_add_cli_args = {json.dumps(pytest_args)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        f'process_isolation = "{"forkserver" if uses_torch else "fork"}"\n'
    )
    (workdir / "pyproject.toml").write_text(config)
    return workdir


def mutmut(workdir: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        raise SystemExit(f"mutmut {' '.join(args)} failed in {workdir}:\n" + "\n".join(tail))
    return done.stdout


def results(workdir: Path) -> dict[str, str]:
    """Mutant name -> status (killed, survived, no tests, timeout, ...)."""
    out = {}
    for line in mutmut(workdir, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and _NAME.match(name):
            out[name] = status
    return out


def mutated_line(workdir: Path, name: str) -> str:
    """The mutant's changed source line(s) as `mutmut show` prints them after `+`, or the
    removed ones after `-` (a dropped argument), without comments."""
    diff = mutmut(workdir, "show", name, check=False).splitlines()

    def lines(sign: str) -> list[str]:
        return [
            ln[1:].split("  #")[0].strip() for ln in diff if ln.startswith(sign) and ln[1:2] != sign
        ]

    added = lines("+")
    return " / ".join(added) if added else "removed " + " / ".join(lines("-"))


def equivalent_mutants(doc: Path = EQUIVALENT_DOC) -> set[tuple[str, str, str]]:
    """(module, function, mutated line) rows of docs/MUTATION.md's equivalent-mutant tables."""
    rows = set()
    if not doc.is_file():
        return rows
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`featurestore."):
            rows.add((cells[0].strip("`"), cells[1].strip("`"), cells[2].strip("`")))
    return rows


def function_of(name: str) -> tuple[str, str]:
    """`featurestore.compare.stats.x_mcnemar__mutmut_9` -> (module, `mcnemar`)."""
    match = _NAME.match(name)
    assert match is not None, name
    function = match["function"]
    function = function[2:] if function.startswith("x_") else function  # mutmut's prefix
    return match["module"], function.replace("xǁ", "").replace("ǁ", ".")


def run_target(target: str, root: Path, max_children: int, *, fresh: bool) -> dict[str, object]:
    workdir = root / target.replace("/", "_").removesuffix(".py")
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    scratch_copy(target, workdir)
    # Which tests cover which function is collected once and cached: collect it again, so a
    # function that had no test meets the ones written since.
    (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    print(f"== {target}: mutmut in {workdir}", flush=True)
    mutmut(workdir, "run", "--max-children", str(max_children), check=False)
    # mutmut keeps earlier verdicts: retest the survivors by name, so that a test written
    # since then gets its chance (a killed mutant stays killed while tests are only added).
    survivors = [n for n, s in results(workdir).items() if s not in KILLED and s != "skipped"]
    if survivors:
        mutmut(workdir, "run", "--max-children", str(max_children), *survivors, check=False)
    statuses = results(workdir)
    if not statuses:
        raise SystemExit(f"mutmut produced no results for {target}; see {workdir}")
    counts = Counter(statuses.values())
    known = equivalent_mutants()
    unexplained, equivalent = [], []
    for name, status in sorted(statuses.items()):
        if status in KILLED or status == "skipped":
            continue
        module, function = function_of(name)
        line = mutated_line(workdir, name)
        row = (module, function, line)
        (equivalent if row in known else unexplained).append((name, status, line))
    considered = sum(n for s, n in counts.items() if s != "skipped")
    killed = sum(counts[s] for s in KILLED)
    return {
        "target": target,
        "mutants": considered,
        "killed": killed,
        "equivalent": len(equivalent),
        "score": killed / considered if considered else float("nan"),
        "score_without_equivalent": (
            killed / (considered - len(equivalent)) if considered > len(equivalent) else 1.0
        ),
        "counts": dict(counts),
        "unexplained": unexplained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"modules under featurestore/: {list(TARGETS)}")
    parser.add_argument("--all", action="store_true", help="every module in TARGETS")
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutant runs")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "xray-mutation",
        help="where the scratch copies live (kept between runs)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget earlier verdicts (after removing tests)"
    )
    args = parser.parse_args(argv)
    targets = list(TARGETS) if args.all else args.targets
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown:
        parser.error(f"choose targets among {list(TARGETS)} (unknown: {unknown})")
    failed = False
    for target in targets:
        r = run_target(target, args.workdir, args.max_children, fresh=args.fresh)
        print(
            f"{target}: {r['killed']}/{r['mutants']} killed ({r['score']:.1%}); "
            f"{r['equivalent']} listed equivalent -> {r['score_without_equivalent']:.1%} of the "
            f"rest; statuses {r['counts']}"
        )
        for name, status, line in r["unexplained"]:  # type: ignore[attr-defined]
            module, function = function_of(name)
            print(f"  {status}: | `{module}` | `{function}` | `{line}` |  ({name})")
        failed |= bool(r["unexplained"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
