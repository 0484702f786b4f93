"""What one measuring process is asked to do: some runs of one cell, under the sweep's settings."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.core.eta import Planned
from kvbench.model.cells import Cell
from kvbench.model.settings import BenchConfig, run_limits


@dataclass(frozen=True)
class CellJob:
    """`runs` runs per mode of `cell`, numbered from `first_run`, on `device` (None: the configured device).
    `config` gives every setting that is not a sweep axis (warmup, modes, seed, the quantized cache's...):
    the cell's own values come from `cell`. `sweep`: the cell is one of several, so a failure of its own is
    recorded and the sweep goes on; the one cell of a run reports it as the run's error. `keep_reference`: see
    its field."""

    config: BenchConfig
    cell: Cell
    runs: int
    first_run: int = 0
    device: str | None = None
    sweep: bool = True
    # The dynamic cell of a group whose other caches are compared with it: its warmup keeps its greedy tokens
    # and logits for them, in the process that measures them next.
    keep_reference: bool = False
    # Whether a cache other than the dynamic one is compared with it (untimed passes after the timed runs); off
    # for a capacity probe, which asks only whether one generation fits.
    compare_outputs: bool = True

    def run_limits(self) -> tuple[int, int]:
        """(fewest, most) measured runs per mode in this job: its share of the runs, or with --target-rse
        (one process per cell) the configured bounds."""
        if self.config.target_rse is None:
            return self.runs, self.runs
        return run_limits(self.config)


def planned_generation(cell: Cell, mode: str) -> Planned:
    """One generation of a cell, as the estimate of the time left counts it."""
    return Planned(mode, cell.max_new_tokens, cell.prompt_tokens or 0, cell.model, cell.id)
