"""Whether measuring a model's cells in one process changes what is measured: the same sweep with
`--isolation model` and `--isolation cell`, alternating, each cell's mean latency paired across the two.

    python benchmarks/isolation_check.py [--rounds 3] [--config configs/cache-implementations-cpu.toml]
        [-- extra kvbench run arguments]

Per cell and mode: the ratio of means (model / cell) in each round, and a 95% t interval over the rounds'
ratios; a cell whose interval holds 1 shows no effect the rounds can see. Agreement with the dynamic cache
and cached-vs-uncached equality must be identical, to the last bit, between the two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvbench.core.distributions import t_quantile  # noqa: E402

EXACT = ("outputs_match", "first_divergence", "agreement_token_share", "agreement_first_divergence",
         "agreement_top1_share", "agreement_kl_mean_nats")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="configs/cache-implementations-cpu.toml")
    parser.add_argument("extra", nargs="*", help="more kvbench run arguments, after --")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kvbench-isolation-"))
    environ = {**os.environ, "KVBENCH_CACHE_DIR": str(folder / "cache")}
    means: dict[tuple[str, str], dict[str, list[float]]] = {}
    exact: dict[str, dict[str, tuple]] = {"model": {}, "cell": {}}
    for round_ in range(args.rounds):
        order = ("model", "cell") if round_ % 2 == 0 else ("cell", "model")
        for isolation in order:
            output = folder / f"{isolation}-{round_}.json"
            command = [sys.executable, "-m", "kvbench", "run", "--config", args.config, *args.extra,
                       "--isolation", isolation, "--output", str(output)]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True, env=environ)
            document = json.loads(output.read_text())
            for run in document["runs"]:
                key = (run["cell"], run["mode"])
                means.setdefault(key, {}).setdefault(f"{isolation}-{round_}", []).append(run["latency_s"])
            for cell in document["cells"]:
                exact[isolation][cell["id"]] = tuple(cell.get(name) for name in EXACT)
        print(f"round {round_ + 1}/{args.rounds} done ({' then '.join(order)})", flush=True)
    print("cell, mode: model/cell ratio of means per round; mean [95% interval]")
    holding = 0
    for (cell, mode), by_run in sorted(means.items()):
        ratios = [
            statistics.fmean(by_run[f"model-{r}"]) / statistics.fmean(by_run[f"cell-{r}"])
            for r in range(args.rounds)
            if f"model-{r}" in by_run and f"cell-{r}" in by_run
        ]
        mean = statistics.fmean(ratios)
        half = math.inf
        if len(ratios) > 1:
            half = t_quantile(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
        holds = mean - half <= 1 <= mean + half
        holding += holds
        shown = " ".join(f"{ratio:.3f}" for ratio in ratios)
        print(f"{cell} {mode}: {shown}; {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]{'' if holds else '  (1 outside)'}")
    print(f"{holding} of {len(means)} intervals hold 1")
    same = exact["model"] == exact["cell"]
    print(f"agreement and equality identical between the two: {same}")


if __name__ == "__main__":
    main()
