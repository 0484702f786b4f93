"""kvbench's own overhead: each generation kvbench times is paired with a bare generate() of the same mode
made right beside it.

    python benchmarks/overhead.py [--device cpu] [--model gpt2] [--new-tokens 48] [--rounds 4] [--runs 4]

A bare generate() (the same architecture, seeded random weights, prompt and settings, with nothing of
kvbench's measuring code) runs from the runner's observer hooks, outside kvbench's timed span: before
kvbench's generation on a mode's even pairs and after it on its odd ones, counted over the whole
benchmark, so neither order is favoured, even with an odd --runs. Each pair is a few
seconds apart, so the machine's drift (±20% over minutes on a shared machine) cancels within it.

Each round runs `run_benchmark` three ways, in an order that rotates from round to round: as it is; with
the live terminal progress display attached (drawing into memory, as `kvbench run` draws in a terminal);
and without its memory sampling process (memory_sampling=false), which tells the sampler's cost from the
rest. The cells run in this process (isolation "none") so the hooks can pair. Under process isolation,
kvbench's default, the timed generate() runs in a child whose token hook forwards a count to the parent
about once a second, and the display draws in the parent, on another core: that arrangement is not
what this script measures.

Each pair gives a kvbench/bare ratio; their mean on the log scale, with a 95% t interval over pairs, is
judged against TARGET: "met" when the whole interval lies within it, "exceeded" when the whole interval
lies outside, and "cannot tell" otherwise, with about how many pairs would decide. Each of the six
verdicts is a 95% interval alone, not adjusted for there being six, and pairs are pooled over rounds as
if independent: the figures are for a person to read, not a gate.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
from dataclasses import replace
from typing import Any

from bare_generate import BareGenerate

from kvbench import BenchConfig, run_benchmark
from kvbench.core.devices import resolve_device
from kvbench.model.events import Observer

TARGET = 0.01
MODES = ("cached", "uncached")


def verdict(log_ratios: list[float], target: float = TARGET) -> str:
    """The mean ratio, its 95% interval, and whether it is within `target` of 1."""
    from scipy.special import stdtrit

    if not log_ratios:
        return "no pairs"
    mean = statistics.fmean(log_ratios)
    ratio = math.exp(mean)
    if len(log_ratios) < 2:
        return f"{ratio:.4f} (one pair: cannot tell)"
    half = float(stdtrit(len(log_ratios) - 1, 0.975)) * statistics.stdev(log_ratios) / math.sqrt(len(log_ratios))
    low, high = math.exp(mean - half), math.exp(mean + half)
    if 1 / (1 + target) <= low and high <= 1 + target:
        judged = "met"
    elif high < 1 / (1 + target) or low > 1 + target:
        judged = "exceeded"
    else:
        # The interval narrows as 1/sqrt(pairs): inside the target, it must fit in the room left beside the
        # mean; outside, it must shrink clear of the target's edge.
        room = abs(math.log(1 + target) - abs(mean))
        needed = math.ceil(len(log_ratios) * (half / room) ** 2) if room > 0 else None
        if needed is None or needed > 100 * len(log_ratios):
            judged = "cannot tell (the mean is at the target's edge)"
        else:
            judged = f"cannot tell (about {needed} pairs would)"
    return f"{ratio:.4f} [{low:.4f}, {high:.4f}]  n={len(log_ratios)}  {judged}"


class Pairing(Observer):
    """Runs a bare generation of the same mode beside each generation kvbench times, and keeps the pairs'
    log ratios; other hooks go on to `display`, when there is one."""

    def __init__(self, bare: BareGenerate, pairs_made: dict[str, int], display: Any = None) -> None:
        """`pairs_made`: per mode, the pairs made so far over the whole benchmark, shared by every Pairing
        and advanced here."""
        self.bare = bare
        self.pairs_made = pairs_made
        self.display = display
        self.log_ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
        self._bare_s: float | None = None

    def planned(self, generations: Any, starting: Any = None) -> None:
        if self.display is not None:
            self.display.planned(generations, starting)

    def cell_started(self, cell: Any, index: int, count: int) -> None:
        if self.display is not None:
            self.display.cell_started(cell, index, count)

    def generation_started(self, label: str, generation: Any) -> None:
        self._bare_s = None
        # Counted per mode: the modes alternate, so a count over both would put every cached pair's bare
        # generation first and every uncached one's last.
        if not label.startswith("warmup") and self.pairs_made[generation.mode] % 2 == 0:
            self._bare_s = self.bare(generation.mode)
        if self.display is not None:
            self.display.generation_started(label, generation)

    def token(self) -> None:
        if self.display is not None:
            self.display.token()

    def generation_finished(self, latency_s: float | None, generation: Any = None) -> None:
        if self.display is not None:
            self.display.generation_finished(latency_s, generation)
        if latency_s is None:
            return  # a warmup
        bare_s = self._bare_s if self._bare_s is not None else self.bare(generation.mode)
        self.log_ratios[generation.mode].append(math.log(latency_s / bare_s))
        self.pairs_made[generation.mode] += 1

    def cell_finished(self, cell: Any) -> None:
        if self.display is not None:
            self.display.cell_finished(cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()

    device = resolve_device(args.device)
    bare = BareGenerate(args.model, device, args.new_tokens)
    bare("cached")  # warm up
    # kvbench's default warmup; the device peaks are measured before any generation and would only cost time.
    config = BenchConfig(
        model=[args.model],
        weights="random",
        max_new_tokens=[args.new_tokens],
        runs=args.runs,
        device=device,
        dtype=["float32"],
        isolation="none",
        device_peaks=False,
    )
    settings = {
        "kvbench": (config, False),
        "kvbench + display": (config, True),
        "kvbench, no sampler": (replace(config, memory_sampling=False), False),
    }
    pooled: dict[tuple[str, str], list[float]] = {(way, mode): [] for way in settings for mode in MODES}
    names = list(settings)
    pairs_made = dict.fromkeys(MODES, 0)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for way in names[shift:] + names[:shift]:
            way_config, with_display = settings[way]
            if with_display:
                from rich.console import Console

                from kvbench.render.progress import LiveProgress

                live = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
                pairing = Pairing(bare, pairs_made, live)
                with live:
                    run_benchmark(way_config, observer=pairing)
            else:
                pairing = Pairing(bare, pairs_made)
                run_benchmark(way_config, observer=pairing)
            for mode in MODES:
                pooled[way, mode] += pairing.log_ratios[mode]
        print(
            f"round {round_index + 1}/{args.rounds}: "
            + "  ".join(f"{way} {mode} {verdict(values).split()[0]}" for (way, mode), values in pooled.items()),
            flush=True,
        )

    print(
        f"{args.model} on {device}, {args.new_tokens} new tokens, {args.rounds} rounds x {args.runs} runs per mode"
        f" and way; kvbench/bare per pair, mean [95% interval], target within {TARGET:.0%}:"
    )
    for (way, mode), values in pooled.items():
        print(f"{way:20} {mode:9} {verdict(values)}")


if __name__ == "__main__":
    main()
