"""A sweep's wall time against one bare Python process doing the same generations, side by side.

    python benchmarks/sweep_wall.py [--rounds 3] [--model tiny-gpt2] [--lengths 16 32 64 128] [--runs 3]
        [--warmup 1] [--isolation model]

The bare process imports torch and transformers, loads the model once and, for each length, does the cell's
warmup and its runs with the modes interleaved, as kvbench does, timing nothing of its own. kvbench runs the
same sweep through `kvbench run` (CPU). Rounds alternate the two, and each prints the ratio of wall times and
where kvbench's time went (the cells' phases_s, summed). kvbench's device peaks are measured once first, so
every round reads them from its cache, as every run after a machine's first does. Target: at most 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.5

BARE = """
import sys
from kvbench.launch.worker import _import_what_measuring_needs
_import_what_measuring_needs()
sys.path.insert(0, {benchmarks!r})
from bare_generate import BareGenerate
lengths, runs, warmup = {lengths!r}, {runs!r}, {warmup!r}
generate = BareGenerate({model!r}, "cpu", lengths[0])
for length in lengths:
    generate.new_tokens = length
    for _ in range(warmup):
        for mode in ("cached", "uncached"):
            generate(mode)
    for _ in range(runs):
        for mode in ("cached", "uncached"):
            generate(mode)
"""


def timed(command: list[str], environ: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=environ)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--isolation", default="model")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kvbench-sweep-wall-"))
    environ = {**os.environ, "KVBENCH_CACHE_DIR": str(folder / "cache")}
    bare = [sys.executable, "-c", BARE.format(
        benchmarks=str(Path(__file__).resolve().parent), lengths=args.lengths, runs=args.runs, warmup=args.warmup,
        model=args.model,
    )]  # fmt: skip

    def kvbench(output: Path) -> list[str]:
        lengths = [word for length in args.lengths for word in ("-n", str(length))]
        return [
            sys.executable, "-m", "kvbench", "run", "-m", args.model, *lengths, "-r", str(args.runs), "-w",
            str(args.warmup), "--device", "cpu", "--isolation", args.isolation, "-o", str(output),
        ]  # fmt: skip

    # The device's peaks, once: later runs read them from the cache, as on any machine after its first run.
    timed(kvbench(folder / "peaks.json"), environ)
    ratios = []
    for round_ in range(args.rounds):
        output = folder / f"round-{round_}.json"
        first, second = ("bare", "kvbench") if round_ % 2 == 0 else ("kvbench", "bare")
        seconds = {}
        for which in (first, second):
            seconds[which] = timed(bare if which == "bare" else kvbench(output), environ)
        ratio = seconds["kvbench"] / seconds["bare"]
        ratios.append(ratio)
        document = json.loads(output.read_text())
        phases: dict[str, float] = {}
        for cell in document["cells"]:
            for phase, spent in (cell.get("phases_s") or {}).items():
                phases[phase] = phases.get(phase, 0.0) + spent
        timed_s = sum(run["latency_s"] for run in document["runs"])
        shown = ", ".join(f"{phase} {spent:.2f}" for phase, spent in sorted(phases.items(), key=lambda item: -item[1]))
        print(
            f"round {round_ + 1}/{args.rounds}: bare {seconds['bare']:.2f} s, kvbench {seconds['kvbench']:.2f} s,"
            f" {ratio:.2f}x; timed runs {timed_s:.2f} s ({timed_s / seconds['kvbench']:.0%} of kvbench's wall);"
            f" phases (s): {shown}"
        )
    median = statistics.median(ratios)
    verdict = "met" if median <= TARGET else "exceeded"
    print(f"{args.model}, lengths {args.lengths}, {args.runs} runs, {args.warmup} warmup, --isolation {args.isolation}:"
          f" kvbench/bare median {median:.2f}x over {args.rounds} rounds (target at most {TARGET:g}x: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
