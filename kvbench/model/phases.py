"""Where a sweep's wall time goes, phase by phase: each phase declared once with what it covers. A cell's
results record the seconds of each phase it paid (kvbench.model.records.CellResult.phases_s); a phase another
cell paid (a process it reused, the device peaks timed before the first cell) is absent from it."""

from __future__ import annotations

from collections.abc import Iterable

# In the order a cell meets them.
PHASES = {
    "device_peaks": "timing the device's copy bandwidth and matrix throughput (once per sweep, cached per machine)",
    "process_start": "starting a measuring process, until it imports",
    "imports": "importing torch, transformers and kvbench's measuring code",
    "model_load": "resolving the model and loading its weights",
    "device_setup": "starting the memory sampler and the energy counters",
    # One phase, two places: on a CPU the measuring process builds quanto's extension before the cell's warmup;
    # on a GPU a process of its own builds the CUDA extension before the first cell using it.
    "kernel_build": "a cache backend building its kernels on first use (optimum-quanto's, once per torch version)",
    "prefix_prefill": "computing the shared prefix's cache the prefix mode copies (once per cell)",
    "warmup": "the warmup generations",
    "timed_runs": "the timed runs and what lies between them (memory freed, each run sent and saved)",
    "output_comparison": "comparing the modes' outputs and the cache's with the dynamic cache's",
    "save": "writing the results file",
}
TIMED_RUNS = "timed_runs"
KERNEL_BUILD = "kernel_build"


def time_spent(phases_of_cells: Iterable[dict[str, float] | None]) -> dict[str, float]:
    """Seconds in each phase over many cells, the phases in PHASES' order (one this version does not know
    last)."""
    total: dict[str, float] = {}
    for phases in phases_of_cells:
        for phase, seconds in (phases or {}).items():
            total[phase] = total.get(phase, 0.0) + seconds
    order = list(PHASES)
    return dict(sorted(total.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
