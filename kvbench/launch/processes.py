"""Cells measured in measuring processes on this machine, one after another, or at once, one per GPU, where
there are several. By default (--isolation model) a process serves the consecutive cells of one model on one
device, loading the model once; a cell that fails, times out or runs out of memory is followed by a fresh
process, as is every cell with --isolation cell. The process a cell will need is started ahead of it, while
the cell before it finishes. Measuring processes stream their events back; this process alone holds the
results file."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from kvbench.core.devices import is_gpu
from kvbench.launch import workers
from kvbench.launch.base import CellWork, Deliver, Launcher, MeasuredIn, model_changes
from kvbench.launch.scheduling import DevicePool, device_slots, host_cpu_cores, startable
from kvbench.launch.workers import WorkerProcess
from kvbench.model.cells import Cell
from kvbench.model.events import CellEnded, CellStarted, Event, Failed, PhaseTimed
from kvbench.model.phases import TIMED_RUNS
from kvbench.model.records import CellState
from kvbench.model.settings import BenchConfig

if TYPE_CHECKING:
    from kvbench.measure.measurer import Measurer

# A process started ahead of its cell holds torch and transformers (about half a GiB on a CPU): started only
# while this much memory is free beside it.
AHEAD_NEEDS_BYTES = 2 * 2**30


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo; None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pump(events: Iterator[Event], key: int, inbox: queue.Queue) -> None:
    try:
        for event in events:
            inbox.put((key, event))
    except Exception as error:  # noqa: BLE001 - a launcher bug still ends the cell, and says why
        inbox.put((key, Failed(CellState.ERROR, f"launcher: {type(error).__name__}: {error}")))
    finally:
        inbox.put((key, None))


class LocalProcesses(Launcher):
    """Each cell in measuring processes on this machine (--isolation model or cell, --processes N). With
    several GPUs and --device auto, cells run at once, one per GPU; a model spread with --device-map takes
    every GPU. The cells' events stream back and are delivered here, each cell's in the order they arrive."""

    name = "process"
    measures_in = MeasuredIn.FRESH_PROCESSES

    def __init__(self, config: BenchConfig, device: str, here: Measurer | None = None, slots: list[str] | None = None) -> None:
        super().__init__(config, device, here)
        self._slots = slots
        # --processes N spreads a cell's runs over fresh processes, so the spread between them is measured:
        # those are never reused.
        self.reuse = config.isolation == "model" and config.processes == 1
        # Per slot: a process started ahead of the cell that will need it.
        self._ahead: dict[str, WorkerProcess] = {}

    def starting(self, cells: Sequence[Cell]) -> set[str]:
        return model_changes(cells) if self.reuse else super().starting(cells)

    def begin(self) -> None:
        if self.reuse:
            slot = self.slots()[0]
            self._ahead.setdefault(slot, workers.WorkerProcess())

    def quiet(self) -> None:
        for worker in self._ahead.values():
            worker.wait_ready()

    def close(self) -> None:
        for worker in self._ahead.values():
            worker.close()
        self._ahead.clear()

    def slots(self) -> list[str]:
        if self._slots is not None:
            return self._slots
        gpus = 0
        if is_gpu(self.device):
            import torch

            gpus = torch.cuda.device_count()
        return device_slots(self.config.device, self.device, gpus, self.config.device_map, host_cpu_cores())

    def measure(self, work: Sequence[CellWork], deliver: Deliver) -> None:
        slots = self.slots()
        pool, concurrent = DevicePool(slots), len(slots) > 1
        every_device = self.config.device_map is not None
        waiting = deque((item, every_device) for item in work)
        inbox: queue.Queue = queue.Queue()
        live: set[WorkerProcess] = set()
        # Per slot: the process that measured its last cell and may measure the next; one started ahead.
        idle: dict[str, WorkerProcess] = {}
        # Told to finish, not waited for: a cell of the next model need not wait for the last one's exit.
        finishing: list[WorkerProcess] = []
        ahead = self._ahead
        live.update(ahead.values())
        running: dict[int, tuple[tuple[str, ...], CellWork, WorkerProcess | None]] = {}
        try:
            while waiting or running:
                for item, taken in startable(waiting, pool):
                    assert isinstance(item, CellWork)
                    # Spread over every GPU: the configured device; else the one slot taken.
                    device = None if every_device else taken[0]
                    deliver(item.key, CellStarted(taken[0] if concurrent else ""))
                    jobs = [replace(job, device=device) for job in item.jobs]
                    if self.reuse:
                        worker = self._worker_for(item, taken[0], idle, finishing, live)
                        events = worker.measure(jobs[0], self.config.cell_timeout)
                    else:
                        worker, events = None, workers.jobs_in_fresh_processes(jobs, self.config.cell_timeout, live)
                    threading.Thread(target=_pump, args=(events, item.key, inbox), daemon=True).start()
                    running[item.key] = (taken, item, worker)
                try:
                    # A timeout, so Ctrl-C is seen promptly.
                    key, event = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if event is None:
                    taken, item, worker = running.pop(key)
                    if worker is not None and worker.usable:
                        idle[taken[0]] = worker
                    elif worker is not None:
                        live.discard(worker)
                    deliver(key, CellEnded())
                    pool.give_back(taken)
                    continue
                deliver(key, event)
                if isinstance(event, PhaseTimed) and event.phase == TIMED_RUNS and not concurrent:
                    self._start_ahead(running[key][1], waiting, ahead, live)
        except BaseException:
            # Ctrl-C, or a user's mistake a process reported: no process outlives the run.
            for worker in list(live):
                worker.kill()
            raise
        # Every cell measured: the processes kept for another cell finish (their samplers with them) and exit.
        for worker in [*finishing, *idle.values()]:
            worker.close()
        self.close()

    def _worker_for(
        self,
        item: CellWork,
        slot: str,
        idle: dict[str, WorkerProcess],
        finishing: list[WorkerProcess],
        live: set[WorkerProcess],
    ) -> WorkerProcess:
        """The process a cell is measured in: the one that measured the last cell on its slot, where it is
        usable and measured the same model; else one started ahead for it; else a fresh one."""
        cell = item.jobs[0].cell
        last = idle.pop(slot, None)
        if last is not None and last.usable and last.model == cell.model:
            return last
        if last is not None:
            last.finish()
            finishing.append(last)
        worker = self._ahead.pop(slot, None) or workers.WorkerProcess()
        live.add(worker)
        return worker

    def _start_ahead(
        self,
        current: CellWork,
        waiting: deque,
        ahead: dict[str, WorkerProcess],
        live: set[WorkerProcess],
    ) -> None:
        """The cell measuring now has finished its timed runs: if the next cell will need a fresh process (it
        measures another model), that process starts now, importing while this cell compares its outputs,
        saves and ends, where memory allows it."""
        if not self.reuse or not waiting:
            return
        following, _ = waiting[0]
        slot = self.slots()[0]
        if following.jobs[0].cell.model == current.jobs[0].cell.model or slot in ahead:
            return
        free = available_memory_bytes()
        if free is not None and free < AHEAD_NEEDS_BYTES:
            return
        ahead[slot] = workers.WorkerProcess()
        live.add(ahead[slot])
