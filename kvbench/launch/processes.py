"""Cells measured in fresh processes on this machine, one after another, or at once, one per GPU, where
there are several. Measuring processes stream their events back; this process alone holds the results file."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from kvbench.core.child import child_environment
from kvbench.core.devices import is_gpu
from kvbench.launch.base import CellWork, Deliver, Launcher, MeasuredIn
from kvbench.launch.scheduling import DevicePool, device_slots, startable
from kvbench.model.events import CellChanged, CellEnded, CellStarted, Done, Event, Failed, Output, UserError
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellState
from kvbench.model.settings import BenchConfig

if TYPE_CHECKING:
    from kvbench.measure.measurer import Measurer


def _describe_death(process: subprocess.Popen) -> str:
    try:
        code = process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""
        return f"the measuring process (pid {process.pid}) died from {name}{hint}"
    return f"the measuring process (pid {process.pid}) ended with exit code {code} before finishing"


class OutputTail:
    """What a measuring process prints (stdout and stderr, in one pipe), read line by line on a thread.
    Its lines are passed on to be printed above the progress display: written straight to the terminal
    they would tear the display, and on stdout they would corrupt `--json` output. The last of them say
    why a process that died did."""

    LONGEST_LINE = 1000  # characters shown of a line; a process may write anything
    READ_AT_MOST = 64 * 1024  # bytes read for one line, so a line with no end cannot exhaust memory

    def __init__(self, stream) -> None:
        self._new: queue.Queue[str] = queue.Queue()
        self._last: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        with stream:
            for raw in iter(lambda: stream.readline(self.READ_AT_MOST), b""):
                # A progress bar redraws with carriage returns: what shows is the part after the last.
                line = raw.decode("utf-8", errors="replace").rstrip().rsplit("\r", 1)[-1][: self.LONGEST_LINE]
                if line.strip():
                    self._last.append(line)
                    self._new.put(line)

    def new_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._new.get_nowait())
            except queue.Empty:
                return lines

    def last_words(self, wait_s: float = 2.0) -> str:
        """The process's last line of output, once it has all been read (a dead process's pipe ends)."""
        self._thread.join(timeout=wait_s)
        return self._last[-1] if self._last else ""


def start_worker(job: CellJob) -> tuple[subprocess.Popen, Connection]:
    """A fresh Python process measuring `job`, and the end of the pipe its events arrive on.

    A new interpreter (`python -m kvbench.launch.worker`), never a fork: a fork of a process that has touched
    CUDA is unusable, and multiprocessing's spawn would run the caller's own script again in the child."""
    job_read, job_write = os.pipe()
    events_read, events_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvbench.launch.worker", str(job_read), str(events_write)],
        pass_fds=(job_read, events_write),
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # The child holds the only other ends: its death is an end of file here.
    os.close(job_read)
    os.close(events_write)
    with Connection(job_write, readable=False) as jobs:
        jobs.send(job)
    return process, Connection(events_read, writable=False)


def cell_events(jobs: Iterable[CellJob], timeout_s: float | None, live: set) -> Iterator[Event]:
    """Each job in its own fresh process, one after another; yields their events, then a failure event
    for a process that dies or outlives the cell's timeout. `live` holds the processes running, so a
    caller can end them from another thread."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for job in jobs:
        process, receiver = start_worker(job)
        output = OutputTail(process.stdout)
        live.add(process)
        status, finished = None, False
        ending: Failed | UserError | None = None
        try:
            while ending is None and not finished:
                wait_s = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                ready = receiver.poll(wait_s)
                for line in output.new_lines():
                    yield Output(line)
                if ready:
                    try:
                        event = receiver.recv()
                    except EOFError:
                        why = _describe_death(process)
                        last = output.last_words()
                        ending = Failed(CellState.ERROR, f"{why}; the last line it printed: {last}" if last else why)
                        continue
                    if isinstance(event, CellChanged):
                        status = event.cell.status
                    if isinstance(event, (Failed, UserError)):
                        ending = event
                        continue
                    yield event
                    finished = isinstance(event, Done)
                elif deadline is not None and time.monotonic() >= deadline:
                    reason = f"not finished within --cell-timeout {timeout_s:g} s; its process was stopped"
                    ending = Failed(CellState.TIMEOUT, reason)
        finally:
            _end(process, grace_s=10 if finished else 0)
            live.discard(process)
            receiver.close()
        # What the process printed last (its pipe closes as it ends) comes before how it ended.
        output.last_words(wait_s=0.5 if finished else 2.0)
        for line in output.new_lines():
            yield Output(line)
        if ending is not None:
            yield ending
            return
        if status is not None and CellState(status).failed:
            return


def _end(process: subprocess.Popen, grace_s: float) -> None:
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pump(events: Iterator[Event], key: int, inbox: queue.Queue) -> None:
    try:
        for event in events:
            inbox.put((key, event))
    except Exception as error:  # noqa: BLE001 - a launcher bug still ends the cell, and says why
        inbox.put((key, Failed(CellState.ERROR, f"launcher: {type(error).__name__}: {error}")))
    finally:
        inbox.put((key, None))


class LocalProcesses(Launcher):
    """Each cell in fresh processes on this machine (--isolation process, --processes N). With several
    GPUs and --device auto, cells run at once, one per GPU; a model spread with --device-map takes every
    GPU. The cells' events stream back and are delivered here, in the order each cell's arrive."""

    name = "process"
    measures_in = MeasuredIn.FRESH_PROCESSES

    def __init__(self, config: BenchConfig, device: str, here: Measurer | None = None, slots: list[str] | None = None) -> None:
        super().__init__(config, device, here)
        self._slots = slots

    def slots(self) -> list[str]:
        if self._slots is not None:
            return self._slots
        gpus = 0
        if is_gpu(self.device):
            import torch

            gpus = torch.cuda.device_count()
        return device_slots(self.config.device, self.device, gpus, self.config.device_map)

    def measure(self, work: Sequence[CellWork], deliver: Deliver) -> None:
        slots = self.slots()
        pool, concurrent = DevicePool(slots), len(slots) > 1
        every_device = self.config.device_map is not None
        waiting = deque((item, every_device) for item in work)
        inbox: queue.Queue = queue.Queue()
        live: set = set()
        running: dict[int, tuple[str, ...]] = {}
        try:
            while waiting or running:
                for item, taken in startable(waiting, pool):
                    assert isinstance(item, CellWork)
                    # Spread over every GPU: the configured device; else the one slot taken.
                    device = None if every_device else taken[0]
                    deliver(item.key, CellStarted(taken[0] if concurrent else ""))
                    jobs = [replace(job, device=device) for job in item.jobs]
                    events = cell_events(jobs, self.config.cell_timeout, live)
                    threading.Thread(target=_pump, args=(events, item.key, inbox), daemon=True).start()
                    running[item.key] = taken
                try:
                    # A timeout, so Ctrl-C is seen promptly.
                    key, event = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if event is None:
                    deliver(key, CellEnded())
                    pool.give_back(running.pop(key))
                else:
                    deliver(key, event)
        finally:
            for process in list(live):
                process.kill()
