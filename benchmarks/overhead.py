"""kvbench's own overhead: the same generate() timed by a bare loop and by kvbench, interleaved.

    python benchmarks/overhead.py [--device cpu] [--model gpt2] [--new-tokens 48] [--rounds 4]

Each round times RUNS bare generate() calls per mode and a kvbench run of RUNS per mode (alternating
which goes first), on the same
architecture with the same seeded random weights and generation settings. kvbench's mean should be
within 2% of the bare loop's: what it adds (a per-token streamer, memory probes outside the timed span)
must not show in the numbers it reports.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kvbench import BenchConfig, run_benchmark
from kvbench.models import build_model, prepare_model, prompt_ids, resolve_device

TARGET = 0.02


def bare_times(model, input_ids, new_tokens: int, mode: str, runs: int, pad_token_id: int, sync) -> list[float]:
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        model.generate(
            input_ids,
            attention_mask=input_ids.new_ones(input_ids.shape),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=mode == "cached",
            pad_token_id=pad_token_id,
        )
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    device = resolve_device(args.device)
    prepared = prepare_model(args.model, "random")
    loaded = build_model(prepared, dtype="float32", attn_implementation="auto", device=device, seed=0)
    ids, _ = prompt_ids(prepared, "What is KV caching?", None, seed=0)
    input_ids = ids.unsqueeze(0).to(device)
    pad = loaded.model.generation_config.eos_token_id or 0
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    config = BenchConfig(
        model=[args.model], weights="random", max_new_tokens=[args.new_tokens], runs=args.runs, warmup=0,
        device=device, dtype=["float32"],
    )
    bare_times(loaded.model, input_ids, args.new_tokens, "cached", 1, pad, sync)  # warm up
    bare: dict[str, list[float]] = {"cached": [], "uncached": []}
    measured: dict[str, list[float]] = {"cached": [], "uncached": []}
    def time_bare() -> None:
        # Modes interleaved run by run, as kvbench runs them.
        for _ in range(args.runs):
            for mode in bare:
                bare[mode] += bare_times(loaded.model, input_ids, args.new_tokens, mode, 1, pad, sync)

    def time_kvbench() -> None:
        result = run_benchmark(config)
        for mode in measured:
            measured[mode] += [run.latency_s for run in result.runs_of(result.cells[0].id, mode)]

    for round_index in range(args.rounds):
        # Alternate which goes first, so a machine that speeds up or slows down favours neither.
        order = (time_bare, time_kvbench) if round_index % 2 == 0 else (time_kvbench, time_bare)
        for timing in order:
            timing()

    print(f"{args.model} on {device}, {args.new_tokens} new tokens, {args.rounds} rounds x {args.runs} runs per mode")
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
