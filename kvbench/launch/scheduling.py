"""Pure planning for measuring processes: how a cell's runs split over processes, and which devices each
cell may use when cells run at once, one per GPU."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kvbench.core.devices import is_gpu


def split_runs(runs: int, processes: int) -> list[tuple[int, int]]:
    """(first run number, number of runs) for each of `processes` processes sharing `runs` runs per mode,
    as evenly as possible, the larger shares first (pyperf spreads its runs over worker processes alike)."""
    if not 1 <= processes <= runs:
        raise ValueError(f"cannot split {runs} runs over {processes} processes")
    base, extra = divmod(runs, processes)
    shares, first = [], 0
    for index in range(processes):
        count = base + (1 if index < extra else 0)
        shares.append((first, count))
        first += count
    return shares


def host_cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Host CPU cores one cell measured at once with others needs: its decode loop, one Python thread that launches
# every kernel (a GPU decode step at batch 1 waits on it, not on the GPU), and the samplers and transfers beside it.
CORES_PER_CELL = 2


def device_slots(
    requested: str, resolved: str, gpu_count: int, device_map: str | None, cpu_cores: int | None = None
) -> list[str]:
    """The devices cells may run on at once. Only `--device auto` on a machine with several GPUs spreads
    cells over them (a named device means that device); a model spread with --device-map takes them all,
    so there is one slot. Spread, as many cells run at once as the host's `cpu_cores` give CORES_PER_CELL
    each: cells that share a core slow each other's kernel launches, which would be measured as the GPU's time."""
    if requested == "auto" and is_gpu(resolved) and gpu_count > 1 and device_map is None:
        at_once = gpu_count if cpu_cores is None else max(1, min(gpu_count, cpu_cores // CORES_PER_CELL))
        return [f"cuda:{index}" for index in range(at_once)]
    return [resolved]


@dataclass
class DevicePool:
    """Devices free for the next cell. A cell takes one device, or every device (a model spread over all
    GPUs), and gives them back when it ends."""

    devices: Sequence[str]

    def __post_init__(self) -> None:
        self._free = set(range(len(self.devices)))

    def take(self, every_device: bool = False) -> tuple[str, ...] | None:
        """The devices a cell gets now, or None when it must wait."""
        if every_device:
            if len(self._free) < len(self.devices):
                return None
            self._free.clear()
            return tuple(self.devices)
        if not self._free:
            return None
        index = min(self._free)
        self._free.remove(index)
        return (self.devices[index],)

    def give_back(self, taken: Sequence[str]) -> None:
        busy = [i for i in range(len(self.devices)) if i not in self._free]
        for device in taken:
            index = next(i for i in busy if self.devices[i] == device)
            busy.remove(index)
            self._free.add(index)


def startable(waiting: deque, pool: DevicePool) -> list[tuple[object, tuple[str, ...]]]:
    """Cells to start now, from the front of `waiting` (items of (cell, needs every device)), in sweep
    order: a cell that must wait holds back the ones after it, so a model needing every GPU is not
    starved by the smaller cells behind it."""
    started = []
    while waiting:
        cell, every_device = waiting[0]
        taken = pool.take(every_device)
        if taken is None:
            break
        waiting.popleft()
        started.append((cell, taken))
    return started
