"""How often `kvbench compare` calls a measurement "slower" or "faster" wrongly, with the gate
(`--fail-on-regression PCT`) on and off, and how often it finds a true slowdown, on simulated results files
written, read and compared by kvbench's own code.

    python benchmarks/calibrate_words.py [--sims 400] [--workers 1] [--pct 5] [--scenarios 1.00,1.10,half]

Each simulated comparison is two results files of CELLS cells × 2 modes (1, 4 or 10 cells: 2, 8 or 20
measurements in one family), normal noise with a CV of 2% or 5%, 5 or 10 runs per mode. The second file's
true means are those of the first (1.00: every word is false), or all 10% slower (1.10), or only its uncached
mode 10% slower ("half": a word on a cached measurement is false, one on an uncached measurement true). Both
files are compared twice, without the gate and with it, exactly as `kvbench compare` reads them. Per row:

- false words: the share of comparisons that call any measurement wrongly ("slower" or "faster" where its
  true mean did not change, "faster" where it slowed), gate off / gate on: Holm's bound is 5%;
- found: the share of truly slowed measurements called "slower", gate off / gate on;
- regression: the share of comparisons the gate ends as a regression (at 1.10 and "half", where some
  measurement is truly 10% slower than the baseline, against a threshold of PCT);
- the number of measurements whose word differs between gate off and gate on, and whose verdict
  contradicts its own printed interval (both should be 0).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however this script is loaded

from calibrate_gate import MEANS_S, simulated_sweep  # noqa: E402

from kvbench.compare.judging import PASS, REGRESSION, compare_results
from kvbench.model.records import BenchmarkResult
from kvbench.storage.writer import write_result

CVS = (0.02, 0.05)
RUNS = (5, 10)
CELLS = (1, 4, 10)
SCENARIOS = ("1.00", "1.10", "half")
SLOWDOWN = 1.10
BOUND = 0.05


def true_ratio(scenario: str, mode: str) -> float:
    if scenario == "1.00":
        return 1.0
    if scenario == "1.10":
        return SLOWDOWN
    return SLOWDOWN if mode == "uncached" else 1.0


def simulated_result(rng: random.Random, scenario: str | None, cv: float, n: int, cells: int) -> BenchmarkResult:
    """A results file of `cells` cells (batch sizes 1..cells) × 2 modes; `scenario` None is the baseline."""

    def latency(mode: str, index: int) -> float:
        mean = MEANS_S[mode] * (index + 1) * (1.0 if scenario is None else true_ratio(scenario, mode))
        seconds = -1.0
        while seconds <= 0:
            seconds = rng.gauss(mean, cv * mean)
        return seconds

    return simulated_sweep(cells, n, latency)


def grid_cell(task: tuple[float, int, int, str, int, float, int]) -> dict:
    cv, n, cells, scenario, sims, pct, seed = task
    rng = random.Random(seed)
    false_words = {"off": 0, "on": 0}
    found = {"off": 0, "on": 0}
    slowed = 0
    regressions = 0
    words_differ = 0
    contradictions = 0
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    limit = 1 + pct / 100
    with tempfile.TemporaryDirectory(dir=memory) as folder:
        base, other = Path(folder) / "base.json", Path(folder) / "other.json"
        for _ in range(sims):
            write_result(simulated_result(rng, None, cv, n, cells), base)
            write_result(simulated_result(rng, scenario, cv, n, cells), other)
            words: dict[str, list[str]] = {}
            for gate, threshold in (("off", None), ("on", pct)):
                comparison = compare_results([base, other], threshold_pct=threshold)
                assert not comparison.unjudged, comparison.unjudged
                wrong = False
                said = []
                for row in comparison.rows:
                    entry = row.entries[1]
                    assert entry is not None
                    test = entry.tests["latency"]
                    word = test.direction()
                    said.append(word)
                    changed = true_ratio(scenario, row.key.mode) != 1.0
                    if (changed and word == "faster") or (not changed and word != "no significant change"):
                        wrong = True
                    if changed:
                        slowed += gate == "off"
                        found[gate] += word == "slower"
                    if gate == "on":
                        assert test.low is not None and test.high is not None
                        if (entry.verdict == PASS and test.high >= limit) or (
                            entry.verdict == REGRESSION and test.low <= limit
                        ):
                            contradictions += 1
                false_words[gate] += wrong
                words[gate] = said
                if gate == "on":
                    regressions += comparison.outcome == REGRESSION
            words_differ += sum(a != b for a, b in zip(words["off"], words["on"]))
    return {
        "key": (cv, n, cells, scenario),
        "false_words": {gate: count / sims for gate, count in false_words.items()},
        "found": {gate: count / slowed for gate, count in found.items()} if slowed else None,
        "regression": regressions / sims,
        "words_differ": words_differ,
        "contradictions": contradictions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=400, help="simulated comparisons per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pct", type=float, default=5.0, help="the gate's threshold [default: 5]")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="true ratios to simulate, of 1.00,1.10,half")
    args = parser.parse_args()
    scenarios = [name for name in SCENARIOS if name in args.scenarios.split(",")]
    grid = list(itertools.product(CVS, RUNS, CELLS, scenarios))
    tasks = [(*point, args.sims, args.pct, args.seed + i) for i, point in enumerate(grid)]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        found = {r["key"]: r for r in pool.map(grid_cell, tasks)}
    elapsed = time.perf_counter() - started
    print(
        f"{args.sims} simulated comparisons per row, normal noise, the gate at --fail-on-regression {args.pct:g};"
        " false words: share of comparisons with any wrong 'slower'/'faster', gate off / on; found: share of"
        " truly slowed measurements called 'slower', off / on; regression: share of comparisons the gate fails\n"
    )
    print("| CV | n | cells | true ratio | false words | found | regression | words differ | contradictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cv, n, cells, scenario in grid:
        r = found[cv, n, cells, scenario]
        false = " / ".join(f"{r['false_words'][gate]:.1%}" for gate in ("off", "on"))
        caught = "—" if r["found"] is None else " / ".join(f"{r['found'][gate]:.1%}" for gate in ("off", "on"))
        regression = "—" if scenario == "1.00" else f"{r['regression']:.1%}"
        print(
            f"| {cv:.0%} | {n} | {cells} | {scenario} | {false} | {caught} | {regression} |"
            f" {r['words_differ']} | {r['contradictions']} |"
        )
    error = math.sqrt(BOUND * (1 - BOUND) / args.sims)
    for gate in ("off", "on"):
        worst = max(r["false_words"][gate] for r in found.values())
        pooled = sum(r["false_words"][gate] for r in found.values()) / len(found)
        verdict = "meets" if pooled <= BOUND else "BREAKS"
        print(
            f"\nfalse words, gate {gate}: {pooled:.1%} over all rows ({verdict} the {BOUND:.0%} bound),"
            f" worst row {worst:.1%} (one row's error at 5%: ± {error:.1%})"
        )
    print(f"\n{len(grid) * args.sims} comparisons in {elapsed:.0f} s with {args.workers} worker(s)")


if __name__ == "__main__":
    main()
