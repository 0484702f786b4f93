"""A measuring process: measures one job with the same code as an in-process run (kvbench.measure), and
streams every event back to the process that holds the results file (picklable, so they cross a pipe or a
Ray stream unchanged)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvbench.core.devices import resolve_device
from kvbench.core.errors import KvbenchError
from kvbench.core.limits import out_of_memory
from kvbench.model.events import Event, Failed, GenerationFinished, Ready, TokensGenerated, UserError
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellState

if TYPE_CHECKING:
    from kvbench.measure.measurer import Measurer

Send = Callable[[Event], None]


class _Sender:
    """Events to the parent as they happen, but tokens counted and sent at most once a second: a message per
    token, sent from inside the timed generate(), would cost it more than the display is worth."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._tokens = 0
        self._last_sent = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, TokensGenerated):
            self._tokens += event.count
            now = time.monotonic()
            if now - self._last_sent >= 1.0:
                self._flush()
                self._last_sent = now
            return
        if isinstance(event, GenerationFinished):
            self._flush()
        self._send(event)

    def _flush(self) -> None:
        if self._tokens:
            self._send(TokensGenerated(self._tokens))
            self._tokens = 0


class Worker:
    """This process's measuring: one Measurer for consecutive jobs of one sweep on one device, so that the
    model they share is loaded once. A failure escaping a job is sent as the cell's; the parent then ends
    this process and starts a fresh one for the next cell."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._measurer: Measurer | None = None

    def measure(self, job: CellJob) -> None:
        from kvbench.measure.generation import is_out_of_memory
        from kvbench.measure.measurer import Measurer

        try:
            device = resolve_device(job.device or job.config.device)
            if self._measurer is None or self._measurer.config != job.config or self._measurer.device != device:
                self.close()
                self._measurer = Measurer(job.config, device)
            self._measurer.measure(job, _Sender(self._send))
        except KvbenchError as error:
            self._send(UserError(str(error)))
        except Exception as error:  # noqa: BLE001 - the parent records the cell's failure and goes on
            # torch's OutOfMemoryError is a RuntimeError: what the measuring loop calls out of memory, so is it here.
            status = CellState.OOM if is_out_of_memory(error) else CellState.ERROR
            self._send(Failed(status, f"{type(error).__name__}: {error}"))

    def close(self) -> None:
        if self._measurer is not None:
            self._measurer.close()
            self._measurer = None


def measure(job: CellJob, send: Send) -> None:
    """Measure one job in this process, sending its events as they happen."""
    from kvbench.measure.models import quiet_transformers

    quiet_transformers()
    worker = Worker(send)
    try:
        worker.measure(job)
    finally:
        worker.close()


def _import_what_measuring_needs() -> float:
    """torch, transformers and the measuring code, imported now, before any job arrives: a process started
    ahead of its job (while the cell before it finishes) has paid for them by the time it is needed.
    Returns the seconds it took."""
    started = time.perf_counter()
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401 - what every model class imports: two of the three seconds
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from kvbench.measure import generation, loading, measurer  # noqa: F401
    from kvbench.measure.models import quiet_transformers

    quiet_transformers()
    return time.perf_counter() - started


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
    """The measuring process: says it is ready once it has imported what it measures with, then measures
    each job it is sent down one pipe, sending their events up another, until the pipe ends."""
    from multiprocessing.connection import Connection

    # Ctrl-C at a terminal reaches the whole process group: the parent alone decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    with Connection(events_fd, readable=False) as events, Connection(job_fd, writable=False) as jobs:
        try:
            imports_s = _import_what_measuring_needs()
        except (MemoryError, ImportError) as error:
            # An address space too small for torch (ulimit -v) is the run's one line, not this traceback.
            reason = out_of_memory(error)
            if reason is None:
                raise
            events.send(UserError(str(reason)))
            return
        events.send(Ready(imports_s))
        worker = Worker(events.send)
        try:
            while True:
                try:
                    job = jobs.recv()
                except EOFError:
                    break
                if job is None:
                    break
                worker.measure(job)
        finally:
            worker.close()


# Started as `python -m kvbench.launch.worker JOB_FD EVENTS_FD`: a fresh interpreter that imports only kvbench,
# never the caller's script (multiprocessing's spawn would run that script again in every process).
if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
