"""Energy used during one generate(), from cumulative hardware counters: NVML on a GPU, RAPL on a CPU.

Both read a counter before and after the run and take the difference, so the figure is the whole device's
(or CPU package's) energy over the run, other processes included, as with NVML's device-wide memory.
Each reader that cannot be used says why, so a run still completes and reports what it did not measure.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kvbench.core.devices import is_gpu

RAPL_ROOT = "/sys/class/powercap"
# Top-level package zones only: sub-zones (intel-rapl:0:0, cores) are already inside their package, and
# "psys" (the whole platform) would count the package twice. DRAM zones are left out: not every CPU has one.
_RAPL_ZONE = re.compile(r"^intel-rapl:\d+$")


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one run; joules is None with the reason when the source could not be read."""

    source: str  # "nvml" or "rapl"
    joules: float | None
    per_domain_joules: dict[str, float] = field(default_factory=dict)  # per GPU or per CPU package
    unavailable: str | None = None


class CounterReader:
    """start() then stop() around a run; subclasses read their counters in joules and may wrap around."""

    source = ""

    def __init__(self) -> None:
        self.unavailable: str | None = None
        self.run_problem: str | None = None  # why the last run has no reading, for the results file
        self._before: dict[str, float] | None = None
        self._read_errors: tuple[type[BaseException], ...] = (OSError, ValueError)

    def counters_j(self) -> dict[str, float]:
        raise NotImplementedError

    def wrap_j(self, domain: str) -> float | None:
        """The counter's range, after which it starts again from zero; None if it does not wrap."""
        return None

    def start(self) -> None:
        if self.unavailable is None:
            try:
                self._before = self.counters_j()
            except self._read_errors as error:
                self.unavailable = f"{self.source} counters could not be read ({error})"

    def stop(self) -> EnergyReading:
        reading = self._reading()
        self.run_problem = reading.unavailable
        return reading

    def _reading(self) -> EnergyReading:
        if self.unavailable is not None or self._before is None:
            return EnergyReading(self.source, None, unavailable=self.unavailable or "stop() without start()")
        try:
            after = self.counters_j()
        except self._read_errors as error:
            return EnergyReading(self.source, None, unavailable=f"{self.source} counters could not be read ({error})")
        per_domain = {}
        for domain, before in self._before.items():
            delta = after[domain] - before
            if delta < 0:
                # Assumes at most one wrap per run: RAPL's range is hundreds of kJ, minutes at full power.
                span = self.wrap_j(domain)
                if span is None:
                    return EnergyReading(self.source, None, unavailable=f"the {domain} energy counter went backwards")
                delta += span
            per_domain[domain] = delta
        self._before = None
        # 0 J stays a reading: NVML's counter advances every few milliseconds (coarser on some GPUs), so
        # of runs shorter than that some read a tick and some none, and only their mean is unbiased.
        return EnergyReading(self.source, sum(per_domain.values()), per_domain)


class NvmlEnergy(CounterReader):
    """nvmlDeviceGetTotalEnergyConsumption: millijoules since the driver loaded (Volta and newer GPUs)."""

    source = "nvml"

    def __init__(self, pynvml: Any, handles: dict[str, Any]) -> None:
        super().__init__()
        self._nvml = pynvml
        self._handles = handles
        self._read_errors = (pynvml.NVMLError,)
        try:
            self.counters_j()
        except pynvml.NVMLError as error:
            self.unavailable = f"NVML has no energy counter for this GPU ({error}; it needs Volta or newer)"

    def counters_j(self) -> dict[str, float]:
        return {
            device: self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000 for device, handle in self._handles.items()
        }


class Unavailable(CounterReader):
    """A reader for a source that cannot be used here, carrying the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__()
        self.source = source
        self.unavailable = reason


class RaplEnergy(CounterReader):
    """Linux powercap RAPL package counters: energy_uj, wrapping at max_energy_range_uj."""

    source = "rapl"

    def __init__(self, root: str = RAPL_ROOT) -> None:
        super().__init__()
        self._zones: dict[str, str] = {}
        self._ranges_j: dict[str, float] = {}
        if not os.path.isdir(root):
            self.unavailable = f"RAPL is not exposed by this kernel or machine ({root} does not exist)"
            return
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            name = self._zone_name(path, entry)
            if _RAPL_ZONE.match(entry) and not name.endswith("(psys)"):
                self._zones[name] = path
        if not self._zones:
            self.unavailable = f"RAPL is not exposed: {root} has no intel-rapl package zone"
            return
        try:
            for name, path in self._zones.items():
                self._ranges_j[name] = self._read_uj(path, "max_energy_range_uj") / 1e6
            self.counters_j()
        except PermissionError as error:
            self.unavailable = f"RAPL energy_uj is readable only by root here ({error.filename}); run as root or relax its mode"
        except (OSError, ValueError) as error:
            self.unavailable = f"RAPL counters could not be read ({error})"

    @staticmethod
    def _zone_name(path: str, entry: str) -> str:
        try:
            with open(os.path.join(path, "name")) as handle:
                return f"{entry} ({handle.read().strip()})"
        except OSError:
            return entry

    @staticmethod
    def _read_uj(path: str, name: str) -> int:
        with open(os.path.join(path, name)) as handle:
            return int(handle.read().strip())

    def counters_j(self) -> dict[str, float]:
        return {name: self._read_uj(path, "energy_uj") / 1e6 for name, path in self._zones.items()}

    def wrap_j(self, domain: str) -> float | None:
        return self._ranges_j.get(domain) or None


def energy_reader(devices: list[str], rapl_root: str = RAPL_ROOT) -> CounterReader:
    """NVML for a model on GPUs (every GPU it spans), RAPL for one on the CPU; the reason when neither can be read."""
    if any(is_gpu(device) for device in devices):
        from kvbench.hardware.nvml import gpu_uuids, open_by_uuid

        uuids, reason = gpu_uuids(devices)
        if reason is not None:
            return Unavailable("nvml", reason)
        if any(uuid.startswith("MIG-") for uuid in uuids.values()):
            # The parent GPU's counter would count every other instance's work as this run's.
            reason = "NVML has no energy counter per MIG instance; the whole GPU's would count other instances"
            return Unavailable("nvml", reason)
        pynvml, handles = open_by_uuid(uuids)
        return NvmlEnergy(pynvml, handles)
    return RaplEnergy(rapl_root)


@dataclass(frozen=True)
class CounterResolution:
    """How coarsely an energy counter moves: the median step between distinct readings, and the median
    time between them. A difference of two readings (a run's energy) can be off by up to one step."""

    step_j: float
    period_s: float | None


def counter_resolution(readings: list[tuple[float, float]] | None) -> CounterResolution | None:
    """The resolution seen in (seconds, joules) readings taken much faster than the counter moves (the
    sampler's 10 ms against NVML's ~100 ms on an H200); None with fewer than two changes to go by."""
    changes = [(t, after - before) for (_, before), (t, after) in zip(readings or [], (readings or [])[1:]) if after > before]
    if len(changes) < 2:
        return None
    times = [t for t, _ in changes]
    periods = [later - earlier for earlier, later in zip(times, times[1:])]
    return CounterResolution(statistics.median(step for _, step in changes), statistics.median(periods) if periods else None)


# A run's energy known to within this share is shown as it is; coarser, with its uncertainty; coarser than
# UNRESOLVED, not at all.
RESOLVED = 0.1
UNRESOLVED = 0.5


def energy_uncertainty(runs: Iterable[Any]) -> tuple[float, float, float | None] | None:
    """(the counter's step in joules, the share of a mean run's energy one step is, the counter's update
    period) over runs that recorded both; None where no run did (a CPU's RAPL, an older file)."""
    runs = [run for run in runs if run.energy_j and getattr(run, "energy_counter_step_j", None)]
    if not runs:
        return None
    step = statistics.median(run.energy_counter_step_j for run in runs)
    periods = [run.energy_counter_period_s for run in runs if run.energy_counter_period_s]
    return step, step / statistics.fmean(run.energy_j for run in runs), statistics.median(periods) if periods else None
