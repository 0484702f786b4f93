"""Where cells are measured: in this process, or each in fresh spawned processes (at once, one per GPU,
where there are several). Measuring processes stream their records back; this process alone holds the
results file and writes it."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from kvbench.config import BenchConfig, Cell
from kvbench.devices import is_gpu, resolve_device
from kvbench.errors import KvbenchError
from kvbench.events import CellChanged, Done, Event, Failed, Output, Progress, RunsMeasured, Unmeasured, UserError
from kvbench.measure import MeasuredIn, Measurement
from kvbench.records import CellResult, CellState, RunRecord
from kvbench.scheduling import DevicePool, device_slots, split_runs, startable
from kvbench.worker import CellJob


class Launcher(Protocol):
    """How a run's cells reach the code that measures them: this process, fresh processes, Ray. A launcher
    resolves the device the run measures on, then measures the pending cells into the run's result,
    saving after every generation."""

    name: str
    measures_in: MeasuredIn

    def resolve_device(self, requested: str) -> str: ...

    def measure(self, benchmark: Measurement, pending: list[CellResult]) -> None: ...


def cell_jobs(config: BenchConfig, cell: Cell, device: str | None = None) -> list[CellJob]:
    """A cell's measuring processes: with --processes N, its runs split over N of them."""
    return [
        CellJob(config, cell, runs=count, first_run=first, device=device)
        for first, count in split_runs(config.runs, config.processes)
    ]


class InProcess:
    """Every cell in this process, one after another (--isolation none)."""

    name = "in-process"
    measures_in = MeasuredIn.THIS_PROCESS

    def resolve_device(self, requested: str) -> str:
        return resolve_device(requested)

    def measure(self, benchmark: Measurement, pending: list[CellResult]) -> None:
        for index, cell_result in enumerate(pending):
            benchmark.measure_here(cell_result, index, len(pending), self.name)


# CellResult fields combined over a cell's measuring processes rather than taken from the first.
COMBINED_STATE = ("settings", "status", "reason", "ran_on", "outputs_match", "first_divergence")


class CellAssembly:
    """One cell's events from its measuring processes, applied to the benchmark's result as they arrive,
    so the file is the one an in-process run would write: the same cells, runs in sweep order."""

    def __init__(self, benchmark: Measurement, cell_result: CellResult, launcher: str, label_prefix: str = "") -> None:
        self.benchmark, self.cell_result = benchmark, cell_result
        self.launcher, self.label_prefix = launcher, label_prefix
        self.started = False
        # The runs of the cell's measuring processes that ended normally (--processes N): kept if a later one fails.
        self._finished_runs: list[RunRecord] = []
        self._outputs: dict[int, tuple[bool | None, int | None]] = {}
        self._order = {cell.id: index for index, cell in enumerate(benchmark.result.cells)}

    def begin(self, index: int, count: int) -> None:
        """A cell interrupted before is measured again from its start, so its runs stay interleaved."""
        result, cell_result = self.benchmark.result, self.cell_result
        result.runs = [run for run in result.runs if run.cell != cell_result.id]
        cell_result.status = CellState.INCOMPLETE
        for item in fields(CellResult):
            if item.name not in ("settings", "status"):
                setattr(cell_result, item.name, None)
        self.started = True
        self.benchmark.observer.cell_started(cell_result, index, count)

    def apply(self, event: Event) -> None:
        if isinstance(event, Progress):
            hook, arguments = event.hook, event.arguments
            if hook == "generation_started" and self.label_prefix:
                arguments = (f"{self.label_prefix} {arguments[0]}", *arguments[1:])
            if hook == "token":
                for _ in range(arguments[0]):
                    self.benchmark.observer.token()
            else:
                getattr(self.benchmark.observer, hook)(*arguments)
        elif isinstance(event, RunsMeasured):
            if not CellState(self.cell_result.status).failed:
                self.benchmark.result.add_runs(event.runs)
                # Stable: each cell's runs keep their order, cells measured at once do not interleave.
                self.benchmark.result.runs.sort(key=lambda run: self._order[run.cell])
                self.benchmark.save()
        elif isinstance(event, CellChanged):
            self._merge(event.state)
        elif isinstance(event, Unmeasured):
            self.benchmark.result.unmeasured.update(event.figures)
        elif isinstance(event, Output):
            prefix = f"{self.label_prefix} " if self.label_prefix else ""
            self.benchmark.observer.output(f"{prefix}{event.line}")
        elif isinstance(event, Done):
            if not CellState(self.cell_result.status).failed:
                cell = self.cell_result.id
                self._finished_runs = [run for run in self.benchmark.result.runs if run.cell == cell]
        elif isinstance(event, Failed):
            self.fail(event.status, event.reason)
        elif isinstance(event, UserError):
            raise KvbenchError(event.message)

    def _merge(self, state: dict[str, Any]) -> None:
        cell_result = self.cell_result
        if CellState(cell_result.status).failed:
            return
        if CellState(state["status"]).failed:
            self.fail(state["status"], state["reason"])
            return
        # What the first measuring process found (the model, the prompt, the cache, generated text...);
        # state, place and outputs are combined over processes below.
        for item in fields(CellResult):
            if item.name not in COMBINED_STATE and getattr(cell_result, item.name) is None:
                setattr(cell_result, item.name, state.get(item.name))
        ran_on = state.get("ran_on")
        if ran_on:
            self._record_place(ran_on)
        if state["status"] == CellState.MEASURED:
            self._outputs[len(self._outputs)] = (state["outputs_match"], state["first_divergence"])
            matches = [match for match, _ in self._outputs.values()]
            if False in matches:
                cell_result.outputs_match = False
                found = [at for match, at in self._outputs.values() if match is False and at is not None]
                cell_result.first_divergence = min(found) if found else None
            elif matches and all(match is True for match in matches):
                cell_result.outputs_match = True

    def _record_place(self, ran_on: dict[str, Any]) -> None:
        """Where the cell ran: the last process's place, with every measuring process's id."""
        before = self.cell_result.ran_on or {}
        pids = list(before.get("pids", []))
        pids += [pid for pid in ran_on.get("pids", []) if pid not in pids]
        self.cell_result.ran_on = {**ran_on, "launcher": self.launcher, "pids": pids}

    def fail(self, status: str, reason: str) -> None:
        """The cell is recorded as failed with the reason, and the sweep goes on. It keeps only the runs of
        its measuring processes that finished before (--processes N): each of those is whole."""
        if CellState(self.cell_result.status).failed:
            return
        kept = {id(run) for run in self._finished_runs}
        if kept:
            reason += f"; the {len(kept)} runs of the processes that finished before are kept"
        self.cell_result.status, self.cell_result.reason = CellState(status), reason
        cell = self.cell_result.id
        self.benchmark.result.runs = [run for run in self.benchmark.result.runs if run.cell != cell or id(run) in kept]

    def finish(self) -> None:
        if self.cell_result.status == CellState.INCOMPLETE:
            self.cell_result.status = CellState.MEASURED
        self.benchmark.save(final=True)
        self.benchmark.observer.cell_finished(self.cell_result)


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

    A new interpreter (`python -m kvbench.worker`), never a fork: a fork of a process that has touched
    CUDA is unusable, and multiprocessing's spawn would run the caller's own script again in the child."""
    job_read, job_write = os.pipe()
    events_read, events_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvbench.worker", str(job_read), str(events_write)],
        pass_fds=(job_read, events_write),
        env=_child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # The child holds the only other ends: its death is an end of file here.
    os.close(job_read)
    os.close(events_write)
    with Connection(job_write, readable=False) as jobs:
        jobs.send(job)
    return process, Connection(events_read, writable=False)


def _child_environment() -> dict[str, str]:
    """This environment, with the directory this kvbench is imported from first on the path, so a child
    measures with the same kvbench (a checkout that is not installed included)."""
    here = str(Path(__file__).resolve().parent.parent)
    path = [here] + [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != here]
    # Unbuffered, so what a process prints reaches the display in order and is not lost if it dies.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


def cell_events(jobs: Iterable[CellJob], timeout_s: float | None, live: set) -> Iterator[Event]:
    """Each job in its own fresh process, one after another; yields their events, then a failure event
    for a process that dies or outlives the cell's timeout. `live` holds the processes running, so a
    caller can end them from another thread."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for job in jobs:
        process, receiver = start_worker(job)
        output = OutputTail(process.stdout)
        live.add(process)
        status, finished, ending = None, False, None
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
                        ending = Failed("error", f"{why}; the last line it printed: {last}" if last else why)
                        continue
                    if isinstance(event, CellChanged):
                        status = event.state["status"]
                    if isinstance(event, (Failed, UserError)):
                        ending = event
                        continue
                    yield event
                    finished = isinstance(event, Done)
                elif deadline is not None and time.monotonic() >= deadline:
                    reason = f"not finished within --cell-timeout {timeout_s:g} s; its process was stopped"
                    ending = Failed("timeout", reason)
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
        inbox.put((key, Failed("error", f"launcher: {type(error).__name__}: {error}")))
    finally:
        inbox.put((key, None))


class LocalProcesses:
    """Each cell in fresh processes on this machine (--isolation process, --processes N). With several
    GPUs and --device auto, cells run at once, one per GPU; a model spread with --device-map takes every
    GPU. The cells' records stream back and are saved here, in sweep order."""

    name = "process"
    measures_in = MeasuredIn.FRESH_PROCESSES

    def __init__(self, config: BenchConfig, slots: list[str] | None = None) -> None:
        self.config = config
        self._slots = slots

    def resolve_device(self, requested: str) -> str:
        return resolve_device(requested)

    def slots(self, device: str) -> list[str]:
        if self._slots is not None:
            return self._slots
        gpus = 0
        if is_gpu(device):
            import torch

            gpus = torch.cuda.device_count()
        return device_slots(self.config.device, device, gpus, self.config.device_map)

    def measure(self, benchmark: Measurement, pending: list[CellResult]) -> None:
        slots = self.slots(benchmark.device)
        pool, concurrent = DevicePool(slots), len(slots) > 1
        every_device = self.config.device_map is not None
        waiting = deque((index, every_device) for index in range(len(pending)))
        inbox: queue.Queue = queue.Queue()
        live: set = set()
        running: dict[int, tuple[CellAssembly, tuple[str, ...]]] = {}
        try:
            while waiting or running:
                for index, taken in startable(waiting, pool):
                    cell_result = pending[index]
                    # Spread over every GPU: the configured device; else the one slot taken.
                    device = None if every_device else taken[0]
                    assembly = CellAssembly(benchmark, cell_result, self.name, taken[0] if concurrent else "")
                    assembly.begin(index, len(pending))
                    jobs = cell_jobs(self.config, cell_result.settings, device)
                    events = cell_events(jobs, self.config.cell_timeout, live)
                    threading.Thread(target=_pump, args=(events, index, inbox), daemon=True).start()
                    running[index] = (assembly, taken)
                try:
                    # A timeout, so Ctrl-C is seen promptly.
                    index, event = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                assembly, taken = running[index]
                if event is None:
                    assembly.finish()
                    pool.give_back(taken)
                    del running[index]
                else:
                    assembly.apply(event)
        finally:
            for process in list(live):
                process.kill()
