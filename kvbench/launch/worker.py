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

from kvbench.core.devices import resolve_device
from kvbench.core.errors import KvbenchError
from kvbench.model.events import Event, Failed, GenerationFinished, TokensGenerated, UserError
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellState

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


def measure(job: CellJob, send: Send) -> None:
    """Measure a job in this process, sending its events as they happen."""
    from kvbench.measure.generation import is_out_of_memory
    from kvbench.measure.measurer import Measurer
    from kvbench.measure.models import quiet_transformers

    quiet_transformers()
    try:
        measurer = Measurer(job.config, resolve_device(job.device or job.config.device))
        try:
            measurer.measure(job, _Sender(send))
        finally:
            measurer.close()
    except KvbenchError as error:
        send(UserError(str(error)))
    except Exception as error:  # noqa: BLE001 - the parent records the cell's failure and goes on
        # torch's OutOfMemoryError is a RuntimeError: what the measuring loop calls out of memory, so is it here.
        status = CellState.OOM if is_out_of_memory(error) else CellState.ERROR
        send(Failed(status, f"{type(error).__name__}: {error}"))


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


# Started as `python -m kvbench.launch.worker JOB_FD EVENTS_FD`: a fresh interpreter that imports only kvbench,
# never the caller's script (multiprocessing's spawn would run that script again in every process).
if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
