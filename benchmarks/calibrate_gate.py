"""How often `kvbench compare --fail-on-regression PCT` ends in each of its three outcomes, regression,
inconclusive and pass, on simulated results files written, read and compared by kvbench's own code.

    python benchmarks/calibrate_gate.py [--sims 100] [--workers 1] [--pct 5]

Each simulated comparison is two results files of CELLS cells × 2 modes (8 measurements, so the
family-wise rate is what is measured). Every measurement of the second file has its true mean multiplied
by the true ratio: 1.00 (no change), 1 + PCT (the boundary: not a regression of more than PCT), and
clearly above. Noise is normal or lognormal with a CV of 1%, 5% or 20%, or "mixed" (cached 1%, uncached
20%: unequal CVs in one family), with 3, 5 or 10 runs per mode. The files go through `write_result` and
`compare_results` on their paths, exactly as `kvbench compare` reads them. A comparison's outcome is the
gate's: regression if any measurement is one, else inconclusive if any is, else pass. At the boundary
the regression share is the family-wise false-regression rate and must stay at most 5%.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kvbench.compare.judging import INCONCLUSIVE, PASS, REGRESSION, compare_results
from kvbench.model.cells import Cell
from kvbench.model.records import BenchmarkResult, CellResult, RunRecord
from kvbench.model.settings import BenchConfig, config_to_dict
from kvbench.storage.writer import write_result

NOISES = ("normal", "lognormal")
# A CV per mode; "mixed" gives the modes of one family unequal noise, where Holm's levels computed for
# ratio 1 let the gate fail 5.3-5.6% of comparisons at a true ratio of 1 + PCT.
CVS: dict[str, dict[str, float]] = {
    "1%": {"cached": 0.01, "uncached": 0.01},
    "5%": {"cached": 0.05, "uncached": 0.05},
    "20%": {"cached": 0.20, "uncached": 0.20},
    "mixed": {"cached": 0.01, "uncached": 0.20},
}
RUNS = (3, 5, 10)
CELLS = 4
# True mean latencies per mode (times the cell's batch size): each cell is its own measurement.
MEANS_S = {"cached": 1.0, "uncached": 4.0}
BOUND = 0.05
OUTCOMES = (REGRESSION, INCONCLUSIVE, PASS)


def ratios_for(pct: float) -> tuple[float, ...]:
    """No change, the boundary (exactly +PCT), and two clear slowdowns beyond it."""
    boundary = 1 + pct / 100
    return (1.0, boundary, boundary + 0.05, boundary + 0.20)


def draw(rng: random.Random, mean: float, cv: float, noise: str) -> float:
    if noise == "lognormal":
        sigma = math.sqrt(math.log(1 + cv**2))
        return mean * math.exp(rng.gauss(-(sigma**2) / 2, sigma))
    while True:  # a normal draw at or below zero is no latency (at a CV of 20% it is a 5-sigma event)
        value = rng.gauss(mean, cv * mean)
        if value > 0:
            return value


def simulated_sweep(cells: int, n: int, latency: Callable[[str, int], float]) -> BenchmarkResult:
    """A results file of `cells` cells × the two modes, n runs each, `latency(mode, cell index)` drawing each
    run's seconds (called in the order the runs are stored, so a seeded draw repeats)."""
    # The cells differ in batch size, not length: a sweep over lengths would have write_result fit
    # latency against length, which takes most of a comparison's time and plays no part in the gate.
    sweep = [Cell("sim", 100, index + 1, "float32", "dynamic", "auto") for index in range(cells)]
    config = BenchConfig(model=["sim"], max_new_tokens=[100], batch_size=[cell.batch_size for cell in sweep], runs=n)
    result = BenchmarkResult(
        environment={"device": "cpu", "device_name": "simulated"},
        config=config_to_dict(config),
        complete=True,
        cells=[CellResult(settings=cell, status="measured") for cell in sweep],
    )
    for index, cell in enumerate(sweep):
        for mode in MEANS_S:
            for run in range(n):
                seconds = latency(mode, index)
                tokens = cell.max_new_tokens * cell.batch_size
                result.runs.append(
                    RunRecord(cell.id, mode, run, seconds, cell.max_new_tokens, 6, cell.batch_size, tokens / seconds, None)
                )
    return result


def simulated_result(rng: random.Random, ratio: float, cvs: dict[str, float], n: int, noise: str) -> BenchmarkResult:
    return simulated_sweep(CELLS, n, lambda mode, index: draw(rng, MEANS_S[mode] * (index + 1) * ratio, cvs[mode], noise))


def grid_cell(task: tuple[str, str, int, float, int, float, int]) -> dict:
    """Outcome shares for one (noise, CV, n, ratio) over `sims` simulated comparisons."""
    noise, cv, n, ratio, sims, pct, seed = task
    rng = random.Random(seed)
    outcomes = {outcome: 0 for outcome in OUTCOMES}
    settle = []  # per inconclusive measurement, the runs per mode it would likely take
    # In memory where there is a tmpfs: write_result syncs each file to disk, most of the time on a disk.
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=memory) as folder:
        base, other = Path(folder) / "base.json", Path(folder) / "other.json"
        for _ in range(sims):
            write_result(simulated_result(rng, 1.0, CVS[cv], n, noise), base)
            write_result(simulated_result(rng, ratio, CVS[cv], n, noise), other)
            comparison = compare_results([base, other], threshold_pct=pct)
            assert not comparison.unjudged, comparison.unjudged
            outcome = comparison.outcome
            assert outcome in outcomes, outcome
            outcomes[outcome] += 1
            settle += [
                entry.settle_runs[0]
                for row, index in comparison.inconclusive
                if (entry := row.entries[index]) is not None and entry.settle_runs is not None
            ]
    return {
        "noise": noise,
        "cv": cv,
        "n": n,
        "ratio": ratio,
        "shares": {outcome: count / sims for outcome, count in outcomes.items()},
        "settle": sorted(settle)[len(settle) // 2] if settle else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=100, help="simulated comparisons per grid cell")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pct", type=float, default=5.0, help="the gate's threshold [default: 5]")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    ratios = ratios_for(args.pct)
    grid = list(itertools.product(NOISES, CVS, RUNS, ratios))
    tasks = [(*point, args.sims, args.pct, args.seed + i) for i, point in enumerate(grid)]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        found = {(r["noise"], r["cv"], r["n"], r["ratio"]): r for r in pool.map(grid_cell, tasks)}
    elapsed = time.perf_counter() - started
    print(
        f"--fail-on-regression {args.pct:g}: {args.sims} simulated comparisons per row and true ratio,"
        f" {CELLS} cells × {len(MEANS_S)} modes each; share of comparisons ending regression / inconclusive /"
        " pass, and the median runs per mode an inconclusive measurement would likely need\n"
    )
    print("| noise | CV | n | " + " | ".join(f"{ratio:.2f}" for ratio in ratios) + " | runs to settle |")
    print("|---|---|---|" + "---|" * (len(ratios) + 1))
    for noise, cv, n in itertools.product(NOISES, CVS, RUNS):
        cells = []
        for ratio in ratios:
            shares = found[noise, cv, n, ratio]["shares"]
            cells.append(" / ".join(f"{shares[outcome]:.0%}" for outcome in OUTCOMES))
        settles = [found[noise, cv, n, ratio]["settle"] for ratio in ratios[:2]]
        settle = " / ".join("—" if value is None else str(value) for value in settles)
        print(f"| {noise} | {cv} | {n} | " + " | ".join(cells) + f" | {settle} |")
    for name, ratio in (("no change (1.00)", ratios[0]), (f"the boundary ({ratios[1]:.2f})", ratios[1])):
        rows = list(itertools.product(NOISES, CVS, RUNS))
        rates = [found[noise, cv, n, ratio]["shares"][REGRESSION] for noise, cv, n in rows]
        pooled = sum(rates) / len(rates)
        # One row's rate from `sims` comparisons has a binomial standard error; the pooled rate is the
        # figure to hold against the bound, the worst row is shown with its error.
        error = math.sqrt(max(BOUND * (1 - BOUND), max(rates) * (1 - max(rates))) / args.sims)
        verdict = "meets" if pooled <= BOUND else "BREAKS"
        print(
            f"\nfalse regressions at {name}: {pooled:.1%} over all rows ({verdict} the {BOUND:.0%} bound),"
            f" worst row {max(rates):.1%} ± {error:.1%}"
        )
    print(f"\n{len(grid) * args.sims} comparisons in {elapsed:.0f} s with {args.workers} worker(s)")


if __name__ == "__main__":
    main()
