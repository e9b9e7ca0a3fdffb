"""How long ``hiscrm`` takes to start (issue 11): ``hiscrm --help`` and ``hiscrm account
list`` against an empty private redis-server, each beside the floor measured in the same
run, Python importing the libraries every command needs (typer, rich, redis, pydantic).
Goal: at most 1.5× the floor. A benchmark, not a test.

Each round runs the three commands once, in turn, as new processes (so the machine's
load falls on all three alike); a figure is the best round of N, wall time from the
start of the process to its exit.

    .venv/bin/python -m benchmarks.startup [--runs 20] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.delivery.figures import figure, write_figures
from benchmarks.delivery.infra import RESULTS, describe_machine, describe_revision, redis_server
from benchmarks.delivery.report import Table, write_results

SECTION = "## CLI start-up (issue 11)"
FLOOR = "import typer, rich, redis, pydantic"
GOAL = 1.5
# the packages `hiscrm account list` runs on
MEASURED = ("hiscrm_cli", "hiscrm_bus", "hiscrm_master", "pyproject.toml")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    expect: str
    """Something its standard output must contain, so a failing command is not timed."""


def cases() -> list[Case]:
    hiscrm = Path(sys.executable).with_name("hiscrm")
    if not hiscrm.exists():
        found = shutil.which("hiscrm")
        if found is None:
            raise SystemExit("no hiscrm command beside this Python nor on PATH (pip install -e .)")
        hiscrm = Path(found)
    return [
        Case(f"python -c '{FLOOR}' (the floor)", (sys.executable, "-c", FLOOR), ""),
        Case("hiscrm --help", (str(hiscrm), "--help"), "account"),
        Case("hiscrm account list (empty Redis)", (str(hiscrm), "account", "list"), "platform"),
    ]


def run_once(case: Case, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(case.argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or case.expect not in done.stdout:
        raise SystemExit(
            f"{' '.join(case.argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return elapsed


def measure(redis_url: str, runs: int) -> dict[str, list[float]]:
    """Wall times in seconds of every case, ``runs`` rounds after one unmeasured."""
    # none of the caller's HISCRM_* settings: every run sees the same configuration
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISCRM_")}
    env |= {"HISCRM_REDIS_URL": redis_url, "COLUMNS": "100", "NO_COLOR": "1"}
    todo = cases()
    times: dict[str, list[float]] = {case.name: [] for case in todo}
    for n in range(runs + 1):
        for case in todo:
            elapsed = run_once(case, env)
            if n:
                times[case.name].append(elapsed)
    return times


def figures_of(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The run's figures, as benchmarks/results.json holds them: best of N in ms, the
    floor's best beside each command's, the goal on their ratio."""
    (floor_name, floor_s), *commands = times.items()
    floor = min(floor_s) * 1000
    out = [figure(floor_name, "ms", floor)]
    out += [
        figure(name, "ms", min(values) * 1000, floor, ("ratio", "<=", GOAL))
        for name, values in commands
    ]
    return out


def report(
    times: dict[str, list[float]], figures: Sequence[dict[str, Any]]
) -> tuple[Table, list[str], list[str]]:
    t = Table(head=("measure", "best", "median", "floor (best)", "ratio", "goal"))
    for fig, values in zip(figures, times.values(), strict=True):
        floor = fig["floor"]
        t.add(
            fig["name"],
            f"{fig['value']:.0f} ms",
            f"{statistics.median(values) * 1000:.0f} ms",
            "" if floor is None else f"{floor:.0f} ms",
            "" if fig["ratio"] is None else f"{fig['ratio']:.2f}×",
            "" if fig["goal"] is None else fig["goal"]["text"],
        )
    runs = len(next(iter(times.values())))
    load = os.getloadavg()[0]
    notes = [
        f"best and median of {runs} rounds, after one unmeasured; each round runs the three "
        "commands once, in turn, each a new process; load average "
        f"{load:.1f} on {os.cpu_count()} CPUs at the end.",
        "`hiscrm account list` reads an empty account set from a private redis-server "
        "(benchmarks/delivery/infra.py starts it): the settings, the connection, the "
        "commands and an empty table are all in its time.",
    ]
    verdicts = [
        f"{fig['name']}: {fig['ratio']:.2f}× the floor, "
        + ("within" if fig["met"] else "outside")
        + f" the {GOAL}× goal."
        for fig in figures
        if fig["goal"] is not None
    ]
    return t, notes, verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="rounds measured; best of them kept")
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    ap.add_argument("--no-results", action="store_true", help="print only")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="two rounds, checked for completion only; writes no results (make bench-smoke)",
    )
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.no_results = 2, True
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    with (
        tempfile.TemporaryDirectory(prefix="hiscrm-bench-startup-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        times = measure(url, args.runs)
    figures = figures_of(times)
    t, notes, says = report(times, figures)
    print(t.text())
    print("\n".join(says))
    if args.smoke:
        print("smoke: every command ran (too few rounds for the numbers to mean much)")
        return
    if not args.no_results:
        command = " ".join([".venv/bin/python", "-m", "benchmarks.startup", *sys.argv[1:]])
        env = f"{describe_machine()}; {describe_revision(MEASURED)}"
        write_results(
            args.results,
            title=SECTION,
            command=command,
            env=env,
            t=t,
            notes=notes,
            says=says,
            intro="Ratios are each command's best ÷ the floor's best.",
        )
        results_json = args.results.parent / "results.json"
        write_figures(results_json, title=SECTION, command=command, env=env, figures=figures)
        print(f"results written to {args.results} and {results_json}")


if __name__ == "__main__":
    main()
