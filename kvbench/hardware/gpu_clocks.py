"""The GPU's SM clock while a run is timed, and why it was held below its maximum: read by the sampling
process beside the VRAM readings, since a clock read before the runs is the idle one (345 MHz on an H200
at rest, against 1980 MHz under load) and says nothing of the clock the runs ran at."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

# NVML's clock event (formerly throttle) reason bits, by their nvidia-ml-py names without the prefix.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def reason_names(mask: int) -> list[str]:
    """The reasons a bit mask holds, by name; an unknown bit by its value."""
    named = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    return named + ([f"0x{unknown:x}"] if unknown else [])


def _attempt(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - a reading NVML cannot give is left out, never the sampler's end
        return None


@dataclass
class ClockSamples:
    """The SM clock of every GPU a model spans at each sample of one run, and the reasons seen."""

    sm_mhz: list[int] = field(default_factory=list)
    reasons: int | None = None  # every reason seen during the run, or-ed; None where NVML cannot say
    max_sm_mhz: int | None = None  # the GPU's highest SM clock (the smallest over its GPUs)
    application_sm_mhz: int | None = None  # the SM clock applications are set to run at

    def begin(self, nvml: Any, handles: dict[str, Any]) -> None:
        self.sm_mhz, self.reasons = [], None
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        maxima = [_attempt(nvml.nvmlDeviceGetMaxClockInfo, handle, sm) for handle in handles.values()]
        applications = [_attempt(nvml.nvmlDeviceGetApplicationsClock, handle, sm) for handle in handles.values()]
        self.max_sm_mhz = min(maxima) if maxima and None not in maxima else None
        self.application_sm_mhz = min(applications) if applications and None not in applications else None

    def sample(self, nvml: Any, handles: dict[str, Any]) -> None:
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        reasons_call = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        for handle in handles.values():
            clock = _attempt(nvml.nvmlDeviceGetClockInfo, handle, sm)
            if isinstance(clock, int):
                self.sm_mhz.append(clock)
            mask = _attempt(reasons_call, handle) if reasons_call is not None else None
            if isinstance(mask, int):
                self.reasons = (self.reasons or 0) | mask

    def summary(self) -> dict[str, Any] | None:
        """What a run record keeps; None when no clock could be read."""
        if not self.sm_mhz:
            return None
        return {
            "sm_min_mhz": min(self.sm_mhz),
            "sm_median_mhz": statistics.median(self.sm_mhz),
            "sm_max_mhz": self.max_sm_mhz,
            "sm_application_mhz": self.application_sm_mhz,
            "reasons": reason_names(self.reasons) if self.reasons is not None else None,
            "samples": len(self.sm_mhz),
        }
