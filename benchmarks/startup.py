"""Start-up time of the commands that must stay light, against `python -c "import torch"`, and `kvbench show`
of the committed long sweep against `kvbench --version`.

    python benchmarks/startup.py [--repeats 5]

`kvbench --help`, `kvbench compare` and `kvbench show` never import torch, transformers or scipy; each
should take a small fraction of torch's import time, and `show` of the long sweep (20 cells, length fits)
at most 4 times what printing kvbench's version takes (the rest is reading, judging and drawing). Commands
run interleaved; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = sorted((Path(__file__).resolve().parent.parent / "results").glob("*.json"))
LONG_SWEEP = Path(__file__).resolve().parent.parent / "results" / "explain-cpu-long.json"
SHOW_TARGET = 4.0  # kvbench show of the long sweep, in times kvbench --version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if len(RESULTS) < 2:
        raise SystemExit("needs two results files under results/")
    python = sys.executable
    commands = {
        'python -c "import torch"': [python, "-c", "import torch"],
        "kvbench --help": [python, "-m", "kvbench", "--help"],
        "kvbench compare (2 files)": [python, "-m", "kvbench", "compare", str(RESULTS[0]), str(RESULTS[1])],
        "kvbench show": [python, "-m", "kvbench", "show", str(RESULTS[0])],
        "kvbench --version": [python, "-m", "kvbench", "--version"],
        "kvbench show (long sweep)": [python, "-m", "kvbench", "show", str(LONG_SWEEP)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    torch_time = statistics.median(times['python -c "import torch"'])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28} {median:.3f} s   {median / torch_time:.2f} x import torch")
    ratio = statistics.median(times["kvbench show (long sweep)"]) / statistics.median(times["kvbench --version"])
    verdict = "met" if ratio <= SHOW_TARGET else "exceeded"
    print(f"show of the long sweep: {ratio:.2f} x kvbench --version (target at most {SHOW_TARGET:g} x: {verdict})")


if __name__ == "__main__":
    main()
