"""What measuring a cell reports, as typed events, and the observer a display implements.

Wherever a cell is measured (this process, a worker process, a Ray task), the measuring code emits the same
events; launchers carry them (they are picklable, so they cross a pipe or a Ray stream unchanged) and one
assembler (kvbench.runner.assembly) applies them to the run's result and passes progress to its observer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass

from kvbench.core.eta import Planned
from kvbench.model.records import CellResult, CellState, RunRecord

# --- progress: what a display shows ------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationStarted:
    label: str  # "cached 2/10", "warmup uncached 1/1"
    generation: Planned


@dataclass(frozen=True)
class TokensGenerated:
    """New tokens arrived: one per call inside a timed generate(), or a count a worker sends at most once a
    second."""

    count: int = 1


@dataclass(frozen=True)
class GenerationFinished:
    latency_s: float | None  # None for a warmup
    generation: Planned


# --- what was measured ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellStarted:
    """A launcher starts measuring a cell; `slot` names where when cells run at once (a GPU), else ""."""

    slot: str = ""


@dataclass(frozen=True)
class RunsMeasured:
    runs: list[RunRecord]  # numbered within the whole cell


@dataclass(frozen=True)
class CellChanged:
    """What the measuring process knows of the cell so far: the model, the prompt, the cache, its state,
    generated text and where it ran (every CellResult field; its settings are the cell's own)."""

    cell: CellResult


@dataclass(frozen=True)
class Unmeasured:
    figures: dict[str, str]  # figure: why this process could not measure it


@dataclass(frozen=True)
class Output:
    line: str  # a line the measuring process printed


@dataclass(frozen=True)
class Done:
    """One measuring process finished its job."""


@dataclass(frozen=True)
class Failed:
    status: CellState  # OOM, ERROR, TIMEOUT: the cell failed there
    reason: str


@dataclass(frozen=True)
class UserError:
    message: str  # a KvbenchError: the whole run stops, as it would in this process


@dataclass(frozen=True)
class PhaseTimed:
    """A phase of measuring the cell (kvbench.model.phases) took `seconds`; a phase met twice adds up."""

    phase: str
    seconds: float


@dataclass(frozen=True)
class PhaseStarted:
    """A long phase outside any generation has begun (a cache backend building its kernels): `what` it does in
    words, and `expected_s`, how long it is guessed to take, for the time left."""

    phase: str
    what: str
    expected_s: float


@dataclass(frozen=True)
class PhaseAlive:
    """The phase begun is still going: sent about once a second, so a display keeps its clocks moving."""


@dataclass(frozen=True)
class Ready:
    """A measuring process has imported what it measures with and waits for its first job."""

    imports_s: float


@dataclass(frozen=True)
class CellEnded:
    """A launcher has delivered every event of a cell."""


Event = (
    GenerationStarted
    | TokensGenerated
    | GenerationFinished
    | CellStarted
    | RunsMeasured
    | CellChanged
    | Unmeasured
    | Output
    | Done
    | Failed
    | UserError
    | PhaseTimed
    | PhaseStarted
    | PhaseAlive
    | Ready
    | CellEnded
)
# The one token event a timed generate() emits, made once: nothing is allocated per token.
ONE_TOKEN = TokensGenerated(1)

# Where measuring code sends each event as it happens.
Emit = Callable[[Event], None]


class Observer:
    """Progress hooks for a display. Every hook but `output` does nothing by default, so library callers
    need none; `output` passes a measuring process's lines on to stderr, where they would have gone."""

    def planned(self, generations: dict[Planned, int], starting: Collection[str] | None = None) -> None:
        """Each generation the run will do, with how many times; `starting`, the cells that will start a
        measuring process or load their model (None: every cell)."""

    def cell_started(self, cell: CellResult, index: int, count: int) -> None: ...

    def generation_started(self, label: str, generation: Planned) -> None: ...

    def token(self) -> None: ...

    def generation_finished(self, latency_s: float | None, generation: Planned | None = None) -> None:
        """A generation ended: its measured latency, or None for a warmup."""

    def cell_finished(self, cell: CellResult) -> None: ...

    def phase_started(self, cell: str, what: str, expected_s: float) -> None:
        """A long phase outside any generation began in `cell` (kvbench.model.events.PhaseStarted)."""

    def phase_alive(self) -> None:
        """The phase begun is still going: a display redraws its clocks."""

    def phase_finished(self, cell: str, phase: str, seconds: float) -> None:
        """A phase of `cell` ended after `seconds` (every phase, announced or not)."""

    def output(self, line: str) -> None:
        """A line a measuring process printed (stdout or stderr); a display prints it above itself."""
        print(line, file=sys.stderr)
