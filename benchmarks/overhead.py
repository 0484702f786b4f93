"""kvbench's own overhead: the same generate() timed by a bare loop and by kvbench, interleaved.

    python benchmarks/overhead.py [--device cpu] [--model gpt2] [--new-tokens 48] [--rounds 4] [--display]

Each round times RUNS bare generate() calls per mode and a kvbench run of RUNS per mode (alternating
which goes first), on the same
architecture with the same seeded random weights and generation settings. kvbench's mean should be
within 2% of the bare loop's: what it adds (a per-token streamer, memory probes outside the timed span)
must not show in the numbers it reports. With --display, kvbench runs with the live terminal progress
display attached (drawing into memory), as `kvbench run` does in a terminal.
"""

from __future__ import annotations

import argparse
import io
import statistics

from bare_generate import BareGenerate

from kvbench import BenchConfig, run_benchmark
from kvbench.devices import resolve_device

TARGET = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--display", action="store_true", help="attach the live progress display")
    args = parser.parse_args()

    device = resolve_device(args.device)
    generate = BareGenerate(args.model, device, args.new_tokens)
    config = BenchConfig(
        model=[args.model], weights="random", max_new_tokens=[args.new_tokens], runs=args.runs, warmup=0,
        device=device, dtype=["float32"],
    )
    generate("cached")  # warm up
    bare: dict[str, list[float]] = {"cached": [], "uncached": []}
    measured: dict[str, list[float]] = {"cached": [], "uncached": []}

    def time_bare() -> None:
        # Modes interleaved run by run, as kvbench runs them.
        for _ in range(args.runs):
            for mode in bare:
                bare[mode].append(generate(mode))

    def time_kvbench() -> None:
        if args.display:
            from rich.console import Console

            from kvbench.progress import LiveProgress

            display = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
            with display:
                result = run_benchmark(config, observer=display)
        else:
            result = run_benchmark(config)
        for mode in measured:
            measured[mode] += [run.latency_s for run in result.runs_of(result.cells[0].id, mode)]

    for round_index in range(args.rounds):
        # Alternate which goes first, so a machine that speeds up or slows down favours neither.
        order = (time_bare, time_kvbench) if round_index % 2 == 0 else (time_kvbench, time_bare)
        for timing in order:
            timing()

    shown = " with the live display" if args.display else ""
    print(f"{args.model} on {device}, {args.new_tokens} new tokens, {args.rounds} rounds x {args.runs} runs per mode{shown}")
    worst = 0.0
    for mode in bare:
        ratio = statistics.fmean(measured[mode]) / statistics.fmean(bare[mode])
        worst = max(worst, abs(ratio - 1))
        print(
            f"{mode:9} bare {statistics.fmean(bare[mode]):.4f} s   kvbench {statistics.fmean(measured[mode]):.4f} s"
            f"   kvbench/bare {ratio:.4f}"
        )
    print(f"largest difference {worst:.2%} (target: within {TARGET:.0%})")


if __name__ == "__main__":
    main()
