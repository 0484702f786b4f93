"""What every launcher is: a transport that measures cells somewhere and delivers their events here. It knows
jobs and events, never the run they belong to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from kvbench.core.devices import resolve_device
from kvbench.model.cells import Cell
from kvbench.model.events import Event
from kvbench.model.jobs import CellJob
from kvbench.model.settings import BenchConfig

if TYPE_CHECKING:
    from kvbench.measure.measurer import Measurer


class MeasuredIn(str, Enum):
    """Where a launcher measures a run's cells, which is where what describes their device belongs."""

    THIS_PROCESS = "this process"
    FRESH_PROCESSES = "fresh processes on this machine"
    OTHER_MACHINES = "other machines"


@dataclass(frozen=True)
class CellWork:
    """One cell to measure: `key` names it in every delivery, `jobs` are its measuring processes' shares of
    its runs, measured one after another."""

    key: int
    jobs: list[CellJob]


# Each event of a cell, with the key of its CellWork, in the order the cell's measuring processes sent them.
Deliver = Callable[[int, Event], None]


def model_changes(cells: Sequence[Cell]) -> set[str]:
    """The cells whose model is not the one before them (the first among them): where a process that serves
    one model's consecutive cells starts, or one process loads another model."""
    return {cell.id for before, cell in zip([None, *cells], cells) if before is None or before.model != cell.model}


def cell_jobs(
    config: BenchConfig, cell: Cell, *, sweep: bool, device: str | None = None, keep_reference: bool = False
) -> list[CellJob]:
    """A cell's measuring processes: with --processes N, its runs split over N of them."""
    from kvbench.launch.scheduling import split_runs

    return [
        CellJob(config, cell, runs=count, first_run=first, device=device, sweep=sweep, keep_reference=keep_reference)
        for first, count in split_runs(config.runs, config.processes)
    ]


class Launcher(ABC):
    """How a run's cells reach the code that measures them. A launcher is made for a run's settings, the
    device it resolved (`resolve_device`) and the measurer of this process (used only where cells are
    measured here); `measure` delivers every event of every cell, CellStarted first and CellEnded last."""

    name: str
    measures_in: MeasuredIn

    def __init__(self, config: BenchConfig, device: str, here: Measurer | None = None) -> None:
        self.config, self.device, self.here = config, device, here

    @classmethod
    def resolve_device(cls, requested: str) -> str:
        """The device `requested` ("auto", "cuda") names on the machine that measures."""
        return resolve_device(requested)

    @abstractmethod
    def measure(self, work: Sequence[CellWork], deliver: Deliver) -> None: ...

    def starting(self, cells: Sequence[Cell]) -> set[str]:
        """The cells, of `cells` in the order they are measured, that will start a measuring process or load
        their model: the others pay no start-up. By default, every cell."""
        return {cell.id for cell in cells}

    def begin(self) -> None:
        """Start what measuring will need (a measuring process, importing torch) while the run is still
        checking its cells: the run's start-up and the process's overlap. By default, nothing to start."""
        return None

    def quiet(self) -> None:
        """Wait until what begin() started has finished starting, so that the device's peaks are timed on a
        quiet machine."""
        return None

    def close(self) -> None:
        """End whatever was started and not used (a run that failed its checks, or ended early)."""
        return None
