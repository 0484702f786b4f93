"""Every cell in this process, one after another (--isolation none): no process starts, no isolation."""

from __future__ import annotations

from collections.abc import Sequence

from kvbench.launch.base import CellWork, Deliver, Launcher, MeasuredIn, model_changes
from kvbench.model.cells import Cell
from kvbench.model.events import CellEnded, CellStarted, Event


class InProcess(Launcher):
    name = "in-process"
    measures_in = MeasuredIn.THIS_PROCESS

    def starting(self, cells: Sequence[Cell]) -> set[str]:
        return model_changes(cells)

    def measure(self, work: Sequence[CellWork], deliver: Deliver) -> None:
        here = self.here
        assert here is not None, "measuring in this process needs this process's measurer"
        for item in work:

            def emit(event: Event, key: int = item.key) -> None:
                deliver(key, event)

            deliver(item.key, CellStarted())
            for job in item.jobs:
                here.measure(job, emit)
            deliver(item.key, CellEnded())
