"""A measuring process: measures one cell, or its share of a cell's runs, with the same code as an
in-process run, and streams every record back to the process that holds the results file, as the events
of kvbench.events (picklable, so they cross a pipe or a Ray stream unchanged)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from kvbench.config import BenchConfig, Cell, expand
from kvbench.devices import resolve_device
from kvbench.errors import KvbenchError
from kvbench.eta import Planned
from kvbench.events import CellChanged, Done, Event, Failed, Progress, RunsMeasured, Unmeasured, UserError
from kvbench.measure import Measurement, Observer, is_out_of_memory
from kvbench.records import BenchmarkResult, CellResult

Send = Callable[[Event], None]

# A process measuring on a GPU holds it: the settings below are the parent's, not the measuring process's.
_PARENT_ONLY = {"isolation": "none", "processes": 1, "cell_timeout": None, "launcher": "local", "output": None}


@dataclass(frozen=True)
class CellJob:
    """What one measuring process does: `runs` runs per mode of `cell`, numbered from `first_run`, on
    `device` (None: the configured device)."""

    config: BenchConfig
    cell: Cell
    runs: int
    first_run: int = 0
    device: str | None = None

    def measuring_config(self) -> BenchConfig:
        """The sweep's settings narrowed to this job: one cell, its share of the runs, in this process."""
        # An axis left unset (prompt_tokens: the prompt text's own length) stays unset, and one that does not
        # apply to the cell (the bits of a cache other than the quantized one) keeps the sweep's values.
        values = {f.name: getattr(self.cell, f.name) for f in fields(Cell)}
        axes = {name: [value] for name, value in values.items() if value is not None}
        ray_only = {"ray_address": None, "accelerator_type": None, "gpus_per_cell": None}
        narrowed = replace(self.config, **axes, **_PARENT_ONLY, **ray_only, runs=self.runs)
        if self.device is not None:
            narrowed.device = self.device
        return narrowed


def cell_state(cell_result: CellResult) -> dict[str, Any]:
    return {f.name: getattr(cell_result, f.name) for f in fields(CellResult) if f.name != "settings"}


class _ForwardingObserver(Observer):
    """Progress for the parent's display. Tokens are counted and sent at most once a second: a message
    per token, sent from inside the timed generate(), would cost it more than the display is worth."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._tokens = 0
        self._last_sent = 0.0

    def generation_started(self, label: str, generation: Planned) -> None:
        self._send(Progress("generation_started", (label, generation)))

    def token(self) -> None:
        self._tokens += 1
        now = time.monotonic()
        if now - self._last_sent >= 1.0:
            self._send(Progress("token", (self._tokens,)))
            self._tokens, self._last_sent = 0, now

    def generation_finished(self, latency_s: float | None, generation: Planned | None = None) -> None:
        if self._tokens:
            self._send(Progress("token", (self._tokens,)))
            self._tokens = 0
        self._send(Progress("generation_finished", (latency_s, generation)))


class _Streamer:
    """A measurement's saves, sent to the parent as what is new since the last instead of written."""

    def __init__(self, job: CellJob, send: Send) -> None:
        self._job, self._send, self._runs_sent = job, send, 0
        self.result: BenchmarkResult | None = None

    def __call__(self, final: bool, closing: bool) -> None:
        assert self.result is not None
        runs = self.result.runs
        if len(runs) < self._runs_sent:  # the cell's runs were dropped (it failed): nothing new to send
            self._runs_sent = len(runs)
        new = runs[self._runs_sent :]
        if new:
            self._runs_sent = len(runs)
            self._send(RunsMeasured([replace(run, run=run.run + self._job.first_run) for run in new]))
        self._send(CellChanged(cell_state(self.result.cells[0])))
        if self.result.unmeasured:
            self._send(Unmeasured(dict(self.result.unmeasured)))


def measure(job: CellJob, send: Send) -> None:
    """Measure a job in this process, sending its events as they happen."""
    from transformers.utils import logging as transformers_logging

    # The parent's display shows progress; transformers' warnings from every process would bury it.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    streamer = _Streamer(job, send)
    config = job.measuring_config()
    try:
        measurement = Measurement(
            config, resolve_device(config.device), observer=_ForwardingObserver(send), on_save=streamer
        )
        streamer.result = measurement.result
        # As in the parent: a cell of a sweep records its failure and the sweep goes on; the one cell of a
        # run is the run, and a model it cannot load is the user's error (one line), not a failed cell.
        measurement.part_of_sweep = len(expand(job.config)) > 1
        measurement.prepare_models()
        measurement.save()
        try:
            measurement.measure_here(measurement.result.cells[0], 0, 1, "in-process")
        finally:
            measurement.close()
    except KvbenchError as error:
        send(UserError(str(error)))
        return
    except Exception as error:  # noqa: BLE001 - the parent records the cell's failure and goes on
        # torch's OutOfMemoryError is a RuntimeError: what the measuring loop calls out of memory, so is it here.
        send(Failed("oom" if is_out_of_memory(error) else "error", f"{type(error).__name__}: {error}"))
        return
    send(CellChanged(cell_state(measurement.result.cells[0])))
    send(Done())


def _exit_with_parent() -> None:
    """A measuring process whose parent is gone (killed, or a cancelled Ray task) must not go on holding
    a GPU: a thread checks once a second, which costs the measurement nothing it can see."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="kvbench-parent-watch", daemon=True).start()


def main(job_fd: int, events_fd: int) -> None:
    """The measuring process: reads its job from one pipe and sends its events down another."""
    from multiprocessing.connection import Connection

    # Ctrl-C at a terminal reaches the whole process group: the parent alone decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    with Connection(job_fd, writable=False) as jobs:
        job = jobs.recv()
    with Connection(events_fd, readable=False) as events:
        measure(job, events.send)


# Started as `python -m kvbench.worker JOB_FD EVENTS_FD`: a fresh interpreter that imports only kvbench,
# never the caller's script (multiprocessing's spawn would run that script again in every process).
if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
