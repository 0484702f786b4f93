"""The memory sampler's cost: generate() timed with the VRAM sampler thread running and without.

    python benchmarks/sampler_overhead.py [--device cpu] [--rounds 6] [--interval-ms 10]

On a GPU the sampler reads real NVML. Without one (no NVML here) it reads /proc/self/statm through the
same thread and at the same interval instead: a system call per reading, as NVML's is an ioctl, so the
thread's wake-ups and GIL hand-offs are what is measured. The target is within 1%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types

from kvbench.memory import NvmlSampler, open_nvml
from kvbench.models import build_model, prepare_model, prompt_ids, resolve_device

TARGET = 0.01


class ProcStatmReader(types.SimpleNamespace):
    """Stands in for pynvml where there is no GPU: each reading is one read of /proc/self/statm."""

    NVMLError = OSError

    def nvmlDeviceGetMemoryInfo(self, handle):
        with open("/proc/self/statm") as statm:
            return types.SimpleNamespace(used=int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=self.nvmlDeviceGetMemoryInfo(handle).used)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()

    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    device = resolve_device(args.device)
    pynvml, handles, reason = open_nvml([device])
    if reason is not None:
        pynvml, handles = ProcStatmReader(), {device: None}
        source = f"/proc/self/statm stand-in ({reason})"
    else:
        source = "NVML"
    sampler = NvmlSampler(pynvml, handles, args.interval_ms / 1000)
    prepared = prepare_model(args.model, "random")
    model = build_model(prepared, dtype="float32", attn_implementation="auto", device=device, seed=0).model
    ids, _ = prompt_ids(prepared, "", 6, seed=0)
    input_ids = ids.unsqueeze(0).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)

    def generate(mode: str) -> float:
        sync()
        start = time.perf_counter()
        model.generate(
            input_ids, attention_mask=input_ids.new_ones(input_ids.shape), max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, use_cache=mode == "cached", pad_token_id=0,
        )
        sync()
        return time.perf_counter() - start

    generate("cached")  # warm up
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for mode in ("cached", "uncached"):
            for sampling in (False, True):
                if sampling:
                    sampler.start()
                times.setdefault((mode, sampling), []).append(generate(mode))
                if sampling:
                    sampler.stop()
    print(f"{args.model} on {device}, {args.new_tokens} new tokens, sampler every {args.interval_ms:g} ms via {source}")
    worst = 0.0
    for mode in ("cached", "uncached"):
        off, on = statistics.fmean(times[(mode, False)]), statistics.fmean(times[(mode, True)])
        worst = max(worst, abs(on / off - 1))
        print(f"{mode:9} sampler off {off:.4f} s   on {on:.4f} s   on/off {on / off:.4f}")
    print(f"largest difference {worst:.2%} (target: within {TARGET:.0%}); last run took {sampler.samples} samples")


if __name__ == "__main__":
    main()
