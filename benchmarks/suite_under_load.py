"""The test suite beside busy CPU loops: its verdicts must be the code's, never the machine's.

    python benchmarks/suite_under_load.py [--busy 2] [--repeat 1] [-- PYTEST ARGS]

Starts `--busy` processes that spin on a core each (a neighbour's build, another CI job), runs the test
suite as the README's test command runs it (`python -m pytest -q -n auto --dist loadfile`, from the
repository root, with this interpreter), stops the loops, and prints the suite's closing line, its wall
time and the load average it ran under. With `--repeat N` it runs the suite N times in a row and stops at
the first failure. Exits non-zero if any run failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def spin() -> None:
    while True:
        pass


def run_suite(pytest_args: list[str]) -> tuple[int, str, float, float]:
    """The suite's exit code, closing line, wall seconds and the highest 1-minute load average seen."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-n", "auto", "--dist", "loadfile", "-p", "no:cacheprovider", *pytest_args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    loads: list[float] = []
    watching = threading.Event()

    def watch_load() -> None:
        while not watching.wait(1.0):
            loads.append(os.getloadavg()[0])

    watcher = threading.Thread(target=watch_load, daemon=True)
    watcher.start()
    assert process.stdout is not None
    lines = [line.rstrip("\n") for line in process.stdout]
    process.wait()
    watching.set()
    peak_load = max(loads, default=os.getloadavg()[0])
    closing = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "(no summary)")
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    for line in failures:
        print(f"  {line}")
    return process.returncode, closing.strip("= "), time.monotonic() - started, peak_load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy loops to run beside the suite (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="run the suite this many times in a row")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args()

    loops = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    worst = 0
    try:
        for attempt in range(1, args.repeat + 1):
            code, closing, wall_s, peak_load = run_suite(args.pytest_args)
            print(
                f"run {attempt}/{args.repeat} beside {args.busy} busy loop(s): {closing}; exit {code};"
                f" {wall_s / 60:.1f} min; load average up to {peak_load:.1f} on {os.cpu_count()} cores",
                flush=True,
            )
            worst = max(worst, code)
            if code != 0:
                break
    finally:
        for loop in loops:
            loop.terminate()
    return worst


if __name__ == "__main__":
    sys.exit(main())
