"""The memory figures of one generate(), or of a mode over its runs: declared once, read by records,
summaries, the probes that measure them and every table that shows them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any


def _figure(across_runs: str = "max") -> Any:
    """A memory figure, and how a mode's summary combines it over runs (max, min or sum)."""
    return field(default=None, metadata={"across_runs": across_runs})


@dataclass(kw_only=True)
class MemoryFigures:
    """Memory figures of one generate(), or of a mode over its runs; None where the source was
    unavailable. GPU figures are totals over the devices a model spans. The one declaration of
    kvbench's memory figures: the run record and the mode summary both extend it, and the results
    file keeps them flat."""

    peak_rss_bytes: int | None = _figure()
    torch_peak_allocated_bytes: int | None = _figure()
    torch_peak_reserved_bytes: int | None = _figure()
    # What was in use before the run: over several runs the smallest is the fairest "before".
    vram_device_baseline_bytes: int | None = _figure("min")
    vram_device_peak_bytes: int | None = _figure()
    vram_process_peak_bytes: int | None = _figure()
    vram_samples: int | None = _figure("sum")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(MemoryFigures))

    def figures(self) -> MemoryFigures:
        return MemoryFigures(**{name: getattr(self, name) for name in self.names()})

    @classmethod
    def over_runs(cls, readings: Iterable[MemoryFigures]) -> MemoryFigures:
        """A mode's figures: each combined over its runs as its declaration says, ignoring gaps."""
        readings = list(readings)
        combine: dict[str, Callable[[list[Any]], Any]] = {"max": max, "min": min, "sum": sum}
        values = {}
        for item in fields(MemoryFigures):
            present = [getattr(r, item.name) for r in readings if getattr(r, item.name) is not None]
            values[item.name] = combine[item.metadata["across_runs"]](present) if present else None
        return MemoryFigures(**values)

    def peak_memory(self) -> tuple[int | None, str]:
        """The most specific peak memory figure and its source: this process's VRAM (NVML), the whole
        device's VRAM (NVML), torch's CUDA allocator, or, on a CPU, the process's resident memory."""
        for value, source in (
            (self.vram_process_peak_bytes, "process VRAM"),
            (self.vram_device_peak_bytes, "device VRAM"),
            (self.torch_peak_reserved_bytes, "torch reserved"),
            (self.peak_rss_bytes, "RSS"),
        ):
            if value is not None:
                return value, source
        return None, ""
