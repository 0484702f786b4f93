"""The one code that changes a run's result while it is measured: every cell's events, from whichever
launcher, applied as they arrive, so the file is the same wherever the cells were measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import shortened
from kvbench.model.events import (
    CellChanged,
    CellEnded,
    CellStarted,
    Done,
    Event,
    Failed,
    GenerationFinished,
    GenerationStarted,
    Observer,
    Output,
    PhaseAlive,
    PhaseStarted,
    PhaseTimed,
    RunsMeasured,
    TokensGenerated,
    Unmeasured,
    UserError,
)
from kvbench.model.records import BenchmarkResult, CellResult, CellState, RunRecord

# A failure's reason is its error's message, which a library may make megabytes long: it is recorded cut to
# this, well within the text a results file may hold (kvbench.storage.validation.MOST_TEXT_CHARACTERS).
MOST_REASON_CHARACTERS = 10_000
# CellResult fields combined over a cell's measuring processes rather than taken from the first.
COMBINED_STATE = ("settings", "status", "reason", "ran_on", "outputs_match", "first_divergence", "phases_s")


class Assembly:
    """Applies the events of a run's pending cells (keyed by their place in `cells`) to `result`, tells
    `observer`, and calls `save(final)` after every measured run (`final` at the end of a cell)."""

    def __init__(
        self,
        result: BenchmarkResult,
        cells: Sequence[CellResult],
        observer: Observer,
        save: Callable[[bool], None],
        launcher: str,
    ) -> None:
        self.result, self.cells, self.observer, self._save = result, cells, observer, save
        self.launcher = launcher
        self._order = {cell.id: index for index, cell in enumerate(result.cells)}
        self._assemblies: dict[int, _CellAssembly] = {}
        self._carried: dict[int, dict[str, float]] = {}

    def deliver(self, key: int, event: Event) -> None:
        """One event of the cell `cells[key]`; a cell's first event starts it, whatever its type (a Ray task
        that died before saying anything still fails its cell)."""
        assembly = self._assemblies.get(key)
        if assembly is None:
            slot = event.slot if isinstance(event, CellStarted) else ""
            assembly = self._assemblies[key] = _CellAssembly(self, self.cells[key], slot)
            assembly.begin(key, len(self.cells))
            for phase, seconds in self._carried.pop(key, {}).items():
                assembly.add_phase(phase, seconds)
        if isinstance(event, CellEnded):
            assembly.finish()
        elif not isinstance(event, CellStarted):
            assembly.apply(event)

    def carry(self, key: int, phase: str, seconds: float) -> None:
        """A phase paid for the cell `cells[key]` before any launcher starts it (the device peaks timed
        before the first cell): counted in its phases when it begins."""
        self._carried.setdefault(key, {})[phase] = seconds

    def add_runs(self, runs: list[RunRecord], cell: _CellAssembly) -> None:
        self.result.add_runs(runs)
        # Stable: each cell's runs keep their order, cells measured at once do not interleave.
        self.result.runs.sort(key=lambda run: self._order[run.cell])
        self.save(False, cell)

    def save(self, final: bool, cell: _CellAssembly) -> None:
        """The results file now, its time counted to the cell whose event asked for it."""
        started = time.perf_counter()
        self._save(final)
        cell.add_phase("save", time.perf_counter() - started)


class _CellAssembly:
    """One cell's events from its measuring processes."""

    def __init__(self, run: Assembly, cell_result: CellResult, slot: str) -> None:
        self.run, self.cell_result, self.slot = run, cell_result, slot
        # The runs of the cell's measuring processes that ended normally (--processes N): kept if a later one fails.
        self._finished_runs: list[RunRecord] = []
        self._outputs: list[tuple[bool | None, int | None]] = []

    @property
    def _failed(self) -> bool:
        return CellState(self.cell_result.status).failed

    def begin(self, index: int, count: int) -> None:
        """A cell interrupted before is measured again from its start, so its runs stay interleaved."""
        result, cell_result = self.run.result, self.cell_result
        result.runs = [run for run in result.runs if run.cell != cell_result.id]
        cell_result.status = CellState.INCOMPLETE
        for item in fields(CellResult):
            if item.name not in ("settings", "status"):
                setattr(cell_result, item.name, None)
        self.run.observer.cell_started(cell_result, index, count)

    def _labelled(self, text: str) -> str:
        return f"{self.slot} {text}" if self.slot else text

    def apply(self, event: Event) -> None:
        observer = self.run.observer
        match event:
            case GenerationStarted(label=label, generation=generation):
                observer.generation_started(self._labelled(label), generation)
            case TokensGenerated(count=count):
                for _ in range(count):
                    observer.token()
            case GenerationFinished(latency_s=latency_s, generation=generation):
                observer.generation_finished(latency_s, generation)
            case RunsMeasured(runs=runs):
                if not self._failed:
                    self.run.add_runs(runs, self)
            case CellChanged(cell=cell):
                self._merge(cell)
            case Unmeasured(figures=figures):
                self.run.result.unmeasured.update(figures)
            case Output(line=line):
                observer.output(self._labelled(line))
            case Done():
                if not self._failed:
                    cell_id = self.cell_result.id
                    self._finished_runs = [run for run in self.run.result.runs if run.cell == cell_id]
            case Failed(status=status, reason=reason):
                self.fail(status, reason)
            case PhaseTimed(phase=phase, seconds=seconds):
                self.add_phase(phase, seconds)
                observer.phase_finished(self.cell_result.id, phase, seconds)
            case PhaseStarted(what=what, expected_s=expected_s):
                observer.phase_started(self.cell_result.id, self._labelled(what), expected_s)
            case PhaseAlive():
                observer.phase_alive()
            case UserError(message=message):
                raise KvbenchError(message)

    def add_phase(self, phase: str, seconds: float) -> None:
        phases = self.cell_result.phases_s or {}
        phases[phase] = phases.get(phase, 0.0) + seconds
        self.cell_result.phases_s = phases

    def _merge(self, cell: CellResult) -> None:
        cell_result = self.cell_result
        if self._failed:
            return
        # What the first measuring process found (the model, the prompt, the cache, generated text...);
        # state, place and outputs are combined over processes below.
        for item in fields(CellResult):
            if item.name not in COMBINED_STATE and getattr(cell_result, item.name) is None:
                setattr(cell_result, item.name, getattr(cell, item.name))
        if cell.ran_on:
            self._record_place(cell.ran_on)
        if cell.status == CellState.MEASURED:
            self._outputs.append((cell.outputs_match, cell.first_divergence))
            matches = [match for match, _ in self._outputs]
            if False in matches:
                cell_result.outputs_match = False
                found = [at for match, at in self._outputs if match is False and at is not None]
                cell_result.first_divergence = min(found) if found else None
            elif matches and all(match is True for match in matches):
                cell_result.outputs_match = True

    def _record_place(self, ran_on: dict[str, Any]) -> None:
        """Where the cell ran: the last process's place, with every measuring process's id."""
        before = self.cell_result.ran_on or {}
        pids = list(before.get("pids", []))
        pids += [pid for pid in ran_on.get("pids", []) if pid not in pids]
        self.cell_result.ran_on = {**ran_on, "launcher": self.run.launcher, "pids": pids}

    def fail(self, status: CellState, reason: str) -> None:
        """The cell is recorded as failed with the reason, and the sweep goes on. It keeps only the runs of
        its measuring processes that finished before (--processes N): each of those is whole."""
        if self._failed:
            return
        reason = shortened(reason, MOST_REASON_CHARACTERS)
        kept = {id(run) for run in self._finished_runs}
        if kept:
            reason += f"; the {len(kept)} runs of the processes that finished before are kept"
        self.cell_result.status, self.cell_result.reason = CellState(status), reason
        cell = self.cell_result.id
        result = self.run.result
        result.runs = [run for run in result.runs if run.cell != cell or id(run) in kept]

    def finish(self) -> None:
        if self.cell_result.status == CellState.INCOMPLETE:
            self.cell_result.status = CellState.MEASURED
        self.run.save(True, self)
        self.run.observer.cell_finished(self.cell_result)
