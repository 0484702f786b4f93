"""The memory sampler's cost: generate() timed with no sampler, with a sampling thread, and with a
sampling process (kvbench's design), interleaved.

    python benchmarks/sampler_overhead.py [--device cpu] [--rounds 6] [--interval-ms 10]

On a GPU both read real NVML. Without one (no NVML here) both read the measured process's
/proc/<pid>/statm instead, at the same interval: a system call per reading, as NVML's is an ioctl, so
the wake-ups, GIL hand-offs and CPU time of sampling are what is measured. The target is 1%.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import threading
import types

from bare_generate import BareGenerate

from kvbench.core.devices import resolve_device
from kvbench.hardware.memory import NvmlSampler, SamplingProcess
from kvbench.hardware.nvml import gpu_uuids, open_by_uuid

TARGET = 0.01


class ProcStatmReader(types.SimpleNamespace):
    """Stands in for pynvml where there is no GPU: each reading is one read of /proc/<pid>/statm."""

    NVMLError = OSError

    def nvmlDeviceGetMemoryInfo(self, pid):
        with open(f"/proc/{pid}/statm") as statm:
            return types.SimpleNamespace(used=int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))

    def nvmlDeviceGetComputeRunningProcesses(self, pid):
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=self.nvmlDeviceGetMemoryInfo(pid).used)]


def open_statm(device: str, pid: int):
    return ProcStatmReader(), {device: pid}


class SamplingThread:
    """The design kvbench does not use, kept here to be measured against: the same sampler on a thread."""

    def __init__(self, opener, interval_s: float) -> None:
        nvml, handles = opener()
        self._sampler = NvmlSampler(nvml, handles, os.getpid())
        self._interval_s = interval_s

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sampler.sample()

    def start(self) -> None:
        self._sampler.begin()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sampler.sample(final=True)
        return self._sampler.reading()

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()

    device = resolve_device(args.device)
    uuids, reason = gpu_uuids([device])
    if reason is None:
        opener, source = functools.partial(open_by_uuid, uuids), "NVML"
    else:
        opener = functools.partial(open_statm, device, os.getpid())
        source = f"a /proc/<pid>/statm stand-in ({reason})"
    interval_s = args.interval_ms / 1000
    samplers = {"thread": SamplingThread(opener, interval_s), "process": SamplingProcess(opener, interval_s)}
    generate = BareGenerate(args.model, device, args.new_tokens)
    generate("cached")  # warm up
    times: dict[tuple[str, str], list[float]] = {}
    samples: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode in ("cached", "uncached"):
            for variant in ("off", *samplers):
                sampler = samplers.get(variant)
                if sampler is not None:
                    sampler.start()
                times.setdefault((mode, variant), []).append(generate(mode))
                if sampler is not None:
                    samples[variant] = sampler.stop().samples
    for sampler in samplers.values():
        sampler.close()

    print(
        f"{args.model} on {device}, {args.new_tokens} new tokens, {args.rounds} rounds, sampling every"
        f" {args.interval_ms:g} ms via {source}"
    )
    for variant in samplers:
        worst = 0.0
        for mode in ("cached", "uncached"):
            off, on = statistics.fmean(times[(mode, "off")]), statistics.fmean(times[(mode, variant)])
            worst = max(worst, abs(on / off - 1))
            print(f"{variant:8} {mode:9} off {off:.4f} s   on {on:.4f} s   on/off {on / off:.4f}")
        print(
            f"{variant:8} largest difference {worst:.2%} (target: within {TARGET:.0%});"
            f" {samples[variant]} samples in the last run"
        )


if __name__ == "__main__":
    main()
