"""A measuring process as the process that started it sees it: spawned fresh, told its jobs one at a time,
its events and what it prints read back, its death or a cell's timeout turned into the cell's failure."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import IO

from kvbench.core.child import child_environment
from kvbench.model.events import Done, Event, Failed, Output, PhaseTimed, Ready, UserError
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellState


class OutputTail:
    """What a measuring process prints (stdout and stderr, in one pipe), read line by line on a thread.
    Its lines are passed on to be printed above the progress display: written straight to the terminal
    they would tear the display, and on stdout they would corrupt `--json` output. The last of them say
    why a process that died did."""

    LONGEST_LINE = 1000  # characters shown of a line; a process may write anything
    READ_AT_MOST = 64 * 1024  # bytes read for one line, so a line with no end cannot exhaust memory

    def __init__(self, stream: IO[bytes]) -> None:
        self._new: queue.Queue[str] = queue.Queue()
        self._last: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
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


class WorkerProcess:
    """A fresh Python process (`python -m kvbench.launch.worker`) that imports what it measures with, says it
    is ready, then measures each job it is given, one after another, until it is closed.

    A new interpreter, never a fork: a fork of a process that has touched CUDA is unusable, and
    multiprocessing's spawn would run the caller's own script again in the child."""

    def __init__(self) -> None:
        job_read, job_write = os.pipe()
        events_read, events_write = os.pipe()
        self.spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvbench.launch.worker", str(job_read), str(events_write)],
            pass_fds=(job_read, events_write),
            env=child_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # The child holds the only other ends: its death is an end of file here.
        os.close(job_read)
        os.close(events_write)
        self._jobs = Connection(job_write, readable=False)
        self._events = Connection(events_read, writable=False)
        assert self.process.stdout is not None
        self.output = OutputTail(self.process.stdout)
        self.ready_at: float | None = None
        self.imports_s = 0.0
        # Why it could not start, read while waiting for it to be ready: its first job ends with it.
        self._start_failure: Failed | UserError | None = None
        # Whether it may measure another job: a job that failed, timed out or killed it leaves it unusable.
        self.usable = True
        self.model: str | None = None  # the model of the last job it was given

    @property
    def pid(self) -> int:
        return self.process.pid

    def measure(self, job: CellJob, timeout_s: float | None = None, deadline: float | None = None) -> Iterator[Event]:
        """Give the process `job` and yield the job's events, its printed lines among them, until the job
        ends: measured (the process stays, for another job), or failed, timed out or dead (the process is
        unusable, and a failure event says why). A start-up the job waited for comes first, as phases.
        The job times out `timeout_s` after it is given, or at `deadline` (time.monotonic()) where the
        cell's timeout started earlier."""
        sent_at = time.monotonic()
        if deadline is None and timeout_s:
            deadline = sent_at + timeout_s
        self.model = job.cell.model
        try:
            self._jobs.send(job)
        except OSError:  # the process is already gone: what it said on the way out is read below
            pass
        ending: Failed | UserError | None = self._start_failure
        finished = False
        while ending is None and not finished:
            wait_s = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            ready = self._events.poll(wait_s)
            for line in self.output.new_lines():
                yield Output(line)
            if ready:
                try:
                    event = self._events.recv()
                except EOFError:
                    ending = self._death()
                    continue
                if isinstance(event, Ready):
                    yield from self._start_up_waited_for(event, sent_at)
                elif isinstance(event, (Failed, UserError)):
                    ending = event
                else:
                    yield event
                    finished = isinstance(event, Done)
            elif deadline is not None and time.monotonic() >= deadline:
                ending = Failed(
                    CellState.TIMEOUT, f"not finished within --cell-timeout {timeout_s:g} s; its process was stopped"
                )
        if ending is not None:
            # A cell its process could not measure (skipped) leaves the process as good as it was.
            self.usable = isinstance(ending, Failed) and ending.status == CellState.SKIPPED
            if not self.usable:
                self.close(grace_s=0)
            for line in self.output.new_lines():
                yield Output(line)
            yield ending

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Until the process has imported what it measures with (or could not, or died: its first job says
        which)."""
        deadline = time.monotonic() + timeout_s
        while self.ready_at is None and self.usable and time.monotonic() < deadline:
            if not self._events.poll(min(1.0, max(deadline - time.monotonic(), 0.0))):
                continue
            try:
                event = self._events.recv()
            except EOFError:
                return
            if isinstance(event, Ready):
                self.ready_at, self.imports_s = time.monotonic(), event.imports_s
            elif isinstance(event, (Failed, UserError)):
                self._start_failure = event
                return

    def _start_up_waited_for(self, ready: Ready, job_sent_at: float) -> Iterator[Event]:
        """The part of the process's start-up the job waited for (none where the process was started ahead of
        it, while the cell before it finished): its imports last, the interpreter's start before them."""
        self.ready_at, self.imports_s = time.monotonic(), ready.imports_s
        waited = self.ready_at - max(job_sent_at, self.spawned_at)
        if waited > 0:
            imports = min(ready.imports_s, waited)
            yield PhaseTimed("process_start", waited - imports)
            yield PhaseTimed("imports", imports)

    def _death(self) -> Failed:
        why = _describe_death(self.process)
        last = self.output.last_words()
        return Failed(CellState.ERROR, f"{why}; the last line it printed: {last}" if last else why)

    def finish(self) -> None:
        """No more jobs: the process finishes what it holds (its memory sampler) and exits, on its own time;
        close() waits for it."""
        self.usable = False
        for connection in (self._jobs, self._events):
            try:
                connection.close()
            except OSError:
                pass

    def close(self, grace_s: float = 10.0) -> None:
        """No more jobs, and the process gone: one that does not exit within `grace_s` is killed."""
        self.finish()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # What the process printed last (its pipe closes as it ends).
        self.output.last_words(wait_s=0.5)

    def kill(self) -> None:
        """From another thread (Ctrl-C in the parent): the process must not outlive the run."""
        self.process.kill()


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


def jobs_in_fresh_processes(jobs: list[CellJob], timeout_s: float | None, live: set[WorkerProcess]) -> Iterator[Event]:
    """Each job in a fresh process of its own, one after another (--processes N, a Ray task); yields their
    events, up to the first failure. `live` holds the processes running, so a caller can kill them from
    another thread."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for job in jobs:
        worker = WorkerProcess()
        live.add(worker)
        failed = False
        try:
            for event in worker.measure(job, timeout_s, deadline):
                failed = failed or isinstance(event, (Failed, UserError))
                yield event
        finally:
            worker.close(grace_s=10.0 if worker.usable else 0.0)
            live.discard(worker)
        # What the process printed last (its pipe closes as it ends) comes after its events.
        for line in worker.output.new_lines():
            yield Output(line)
        if failed:
            return
