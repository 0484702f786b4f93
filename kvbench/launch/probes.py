"""A capacity probe's generation in a measuring process: one cell measured once, its peak memory read back, and a
fresh process after one that failed (a CUDA out-of-memory can leave the allocator fragmented, so the next probe
would not start from what a fresh process has)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvbench.core.errors import KvbenchError
from kvbench.hardware.memory import resident_bytes
from kvbench.launch.workers import WorkerProcess
from kvbench.model.events import CellChanged, Failed, Output, RunsMeasured, UserError
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellResult, CellState

# How a measuring process the kernel killed (for want of memory, most likely) is described (launch.workers).
_KILLED = "died from SIGKILL"


@dataclass
class Measured:
    """What one probe's generation left: its peak memory, or how it failed."""

    peak_bytes: int | None
    peak_source: str | None
    out_of_memory: bool = False
    failure: str | None = None  # why it did not finish: out of memory in the process's words, or another failure
    pid: int | None = None
    cell: CellResult | None = None  # what the process knew of the cell: its model, its cache's measured bytes
    seconds: float | None = None


class ProcessProber:
    """Measures capacity probes, one after another, in a measuring process that loads the model once and serves
    every probe while they succeed; a probe that runs out of memory, fails or kills its process is followed by a
    fresh one. `started` counts the processes it started; `baseline_bytes` is the least resident memory one
    of them held once it had imported torch and transformers, before it loaded a model: what a peak RSS holds
    besides the model and its generation."""

    def __init__(self) -> None:
        self._worker: WorkerProcess | None = None
        self.started = 0
        self.baseline_bytes: int | None = None

    def __call__(self, job: CellJob) -> Measured:
        began = time.monotonic()
        if self._worker is None or not self._worker.usable:
            if self._worker is not None:
                self._worker.close(grace_s=0)
            self._worker = WorkerProcess()
            self.started += 1
            self._worker.wait_ready()
            resident = resident_bytes(self._worker.pid) if self._worker.ready_at is not None else None
            if resident is not None:
                self.baseline_bytes = min(resident, self.baseline_bytes or resident)
        worker = self._worker
        cell: CellResult | None = None
        record = None
        ending: Failed | None = None
        for event in worker.measure(job):
            if isinstance(event, CellChanged):
                cell = event.cell
            elif isinstance(event, RunsMeasured) and event.runs:
                record = event.runs[-1]
            elif isinstance(event, Failed):
                ending = event
            elif isinstance(event, UserError):
                raise KvbenchError(event.message)
            elif isinstance(event, Output):
                pass  # a measuring process's warnings; its last words reach a failure's reason
        seconds = time.monotonic() - began
        if ending is not None:
            killed = ending.status == CellState.ERROR and _KILLED in ending.reason
            out_of_memory = ending.status == CellState.OOM or killed
            reason = f"{ending.status}: {ending.reason}" if ending.status == CellState.SKIPPED else ending.reason
            return Measured(None, None, out_of_memory, reason, worker.pid, cell, seconds)
        peak, source = record.peak_memory() if record is not None else (None, "")
        return Measured(peak, source or None, pid=worker.pid, cell=cell, seconds=seconds)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def kill(self) -> None:
        """Ctrl-C: the measuring process must not outlive the command."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
