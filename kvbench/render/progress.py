"""Progress of a run on stderr: a live display in a terminal, plain lines in a log (a CI job, a file).

Both are runner observers. Neither draws while generate() is timed: the token hook only counts, and the
terminal display redraws between generations (and, for a long generation, at most once per
REDRAW_EVERY_S from the token hook), so what the display costs stays outside the measurement
(benchmarks/overhead.py's "kvbench + display" way measures it, with the cells in the display's process;
under process isolation the display draws in the parent, beside the measuring process, never inside it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from rich.console import Console
from rich.text import Text

from kvbench.core.eta import Planned, TimeLeft, clock_text
from kvbench.core.untrusted import printable
from kvbench.model.events import Observer
from kvbench.model.records import CellState

# A long uncached generation (minutes) should still show it is alive.
REDRAW_EVERY_S = 2.0
# In a log, a long phase (a backend building its kernels) says it goes on this often.
PHASE_LINE_EVERY_S = 30.0


class LineProgress(Observer):
    """One plain line per finished generation and per cell, for logs that are not terminals."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self._clock = clock
        self.time_left = TimeLeft([], clock)
        self._label = ""
        self._phase: tuple[str, float] | None = None  # a long phase going on: what, since when
        self._last_alive_line = 0.0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _print(self, text: str) -> None:
        # Cell ids hold model names, and worker output is whatever the model's code printed.
        self.console.print(printable(text, one_line=True), highlight=False, markup=False, soft_wrap=True)

    def planned(self, generations: dict[Planned, int], starting: Collection[str] | None = None) -> None:
        self.time_left = TimeLeft(generations, self._clock, starting)

    def cell_started(self, cell: Any, index: int, count: int) -> None:
        self.time_left.cell_started(cell.id)
        if count > 1:
            # Said again here: the cell before has just ended, and what it cost after its last run (the
            # untimed agreement passes, its process exiting) is now part of every cell still to come.
            left = f" · {self.time_left.text()}" if self.time_left.done else ""
            self._print(f"cell {index + 1}/{count}: {cell.id}{left}")

    def generation_started(self, label: str, generation: Planned) -> None:
        self._label = label

    def token(self) -> None:
        pass

    def generation_finished(self, latency_s: float | None, generation: Planned | None = None) -> None:
        left = self.time_left
        left.finished(generation, latency_s)
        took = f"{latency_s:.3f} s" if latency_s is not None else "unmeasured"
        elapsed = clock_text(left.elapsed_s())
        self._print(f"[{left.done}/{left.total}] {self._label}: {took} · elapsed {elapsed} · {left.text()}")

    def cell_finished(self, cell: Any) -> None:
        self.time_left.cell_finished(cell.id)
        if CellState(cell.status).failed:
            self._print(f"cell {cell.id}: {cell.status} ({cell.reason})")

    def phase_started(self, cell: str, what: str, expected_s: float) -> None:
        self.time_left.phase_started(cell, expected_s)
        self._phase = (what, self._clock())
        self._last_alive_line = self._clock()
        elapsed = clock_text(self.time_left.elapsed_s())
        self._print(f"{what}: guessed at {clock_text(expected_s)} · elapsed {elapsed} · {self.time_left.text()}")

    def phase_alive(self) -> None:
        # A log gets a line now and then, not one a second.
        if self._phase is not None and self._clock() - self._last_alive_line >= PHASE_LINE_EVERY_S:
            self._last_alive_line = self._clock()
            what, started = self._phase
            self._print(f"{what}: {clock_text(self._clock() - started)} so far · {self.time_left.text()}")

    def phase_finished(self, cell: str, phase: str, seconds: float) -> None:
        self.time_left.phase_finished(cell, seconds)
        if self._phase is not None:
            self._print(f"{self._phase[0]}: done in {clock_text(seconds)}")
            self._phase = None

    def output(self, line: str) -> None:
        self._print(f"  | {line}")


class LiveProgress(Observer):
    """A rich progress display: all generations, and the current one token by token."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        # No refresh thread: it would redraw while generate() is being timed.
        self.progress = Progress(
            # Not markup: the description holds a model's name, "llama[v2]" say.
            TextColumn("{task.description:<36}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            # Rich's own estimate averages the generations so far; a length sweep's last ones take longest.
            TextColumn("{task.fields[left]}", markup=False),
            console=console,
            auto_refresh=False,
        )
        self._clock = clock
        self.time_left = TimeLeft([], clock)
        self._overall: Any = None
        self._current: Any = None
        self._tokens = 0
        self._last_redraw = 0.0
        # The time left as last estimated, and when: between estimates it counts down, so a generation
        # of many minutes does not show the same number all along.
        self._estimate: tuple[float, float | None] = (clock(), None)

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.refresh()
        self.progress.stop()

    def _estimated(self) -> str:
        self._estimate = (self._clock(), self.time_left.seconds_left())
        return self.time_left.text()

    def _counted_down(self) -> str:
        at, seconds = self._estimate
        if seconds is None:
            return self.time_left.text()
        return f"about {clock_text(max(seconds - (self._clock() - at), 0.0))} left"

    def planned(self, generations: dict[Planned, int], starting: Collection[str] | None = None) -> None:
        self.time_left = TimeLeft(generations, self._clock, starting)
        self._overall = self.progress.add_task("all generations", total=self.time_left.total, left=self.time_left.text())
        self.progress.refresh()

    def cell_started(self, cell: Any, index: int, count: int) -> None:
        self.time_left.cell_started(cell.id)
        if count > 1:
            heading = Text.assemble((f"cell {index + 1}/{count}:", "bold"), " ", printable(cell.id, one_line=True))
            self.progress.console.print(heading, highlight=False)

    def generation_started(self, label: str, generation: Planned) -> None:
        self._tokens = 0
        label = printable(label, one_line=True)
        if self._current is None:
            self._current = self.progress.add_task(label, total=generation.new_tokens, left="")
        else:
            self.progress.reset(self._current, total=generation.new_tokens, description=label)
        self._redraw()

    def token(self) -> None:
        # Called inside the timed generate(): count, and redraw only rarely.
        self._tokens += 1
        now = self._clock()
        if now - self._last_redraw >= REDRAW_EVERY_S:
            self._last_redraw = now
            self.progress.update(self._current, completed=self._tokens)
            self.progress.update(self._overall, left=self._counted_down())
            self.progress.refresh()

    def _redraw(self) -> None:
        # Drawn just before a timed generate(): the token hook's clock starts from here, so a generation
        # shorter than REDRAW_EVERY_S is never drawn while it is timed (by this process: under process
        # isolation the timed generate() runs in another).
        self.progress.refresh()
        self._last_redraw = self._clock()

    def generation_finished(self, latency_s: float | None, generation: Planned | None = None) -> None:
        self.time_left.finished(generation, latency_s)
        self.progress.update(self._current, completed=self._tokens)
        self.progress.update(self._overall, advance=1, left=self._estimated())
        self.progress.refresh()

    def cell_finished(self, cell: Any) -> None:
        self.time_left.cell_finished(cell.id)
        # Estimated again: what the cell cost after its last run (the untimed agreement passes, its process
        # exiting) is now known, and the next cell may take a while to reach its first generation.
        if self._overall is not None:
            self.progress.update(self._overall, left=self._estimated())
            self.progress.refresh()

    def phase_started(self, cell: str, what: str, expected_s: float) -> None:
        # Shown where the current generation is, its own clock running from now; the time left includes it.
        self.time_left.phase_started(cell, expected_s)
        what = printable(what, one_line=True)
        if self._current is None:
            self._current = self.progress.add_task(what, total=None, left="")
        else:
            self.progress.reset(self._current, total=None, description=what)
        if self._overall is not None:
            self.progress.update(self._overall, left=self._estimated())
        self._redraw()

    def phase_alive(self) -> None:
        # Outside any timed generation: redrawing costs the measurement nothing.
        if self._overall is not None:
            self.progress.update(self._overall, left=self._estimated())
        self._redraw()

    def phase_finished(self, cell: str, phase: str, seconds: float) -> None:
        self.time_left.phase_finished(cell, seconds)

    def output(self, line: str) -> None:
        # Printed through the display's console, so it lands above the bars instead of tearing them.
        self.progress.console.print(f"  | {printable(line, one_line=True)}", markup=False, highlight=False, soft_wrap=True)


def progress_for(console: Console, clock: Callable[[], float] = time.monotonic) -> LiveProgress | LineProgress:
    """A live display where stderr is a terminal, plain lines where it is a log. `clock` dates what the
    display says (elapsed, time left): the wall clock, or a test's scripted one."""
    display = LiveProgress if console.is_terminal else LineProgress
    return display(console, clock)
