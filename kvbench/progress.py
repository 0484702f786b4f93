"""Progress of a run on stderr: a live display in a terminal, plain lines in a log (a CI job, a file).

Both are runner observers. Neither draws while generate() is timed: the token hook only counts, and the
terminal display redraws between generations (and, for a long generation, at most once per
REDRAW_EVERY_S from the token hook), so what the display costs stays outside the measurement
(benchmarks/overhead.py --display measures it).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

# A long uncached generation (minutes) should still show it is alive.
REDRAW_EVERY_S = 2.0


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _Plan:
    """Generations planned and done, and an estimate of the time left from the average so far."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.started = time.monotonic()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> str:
        if not self.done:
            return "time left unknown"
        # Uncached generations take longer than cached ones, and the two alternate: the running
        # average is a fair guess, not a promise.
        remaining = self.elapsed_s() / self.done * (self.total - self.done)
        return f"about {_clock(remaining)} left"


class LineProgress:
    """One plain line per finished generation and per cell, for logs that are not terminals."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.plan = _Plan()
        self._label = ""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def planned(self, generations: int) -> None:
        self.plan.total, self.plan.started = generations, time.monotonic()

    def cell_started(self, cell: Any, index: int, count: int) -> None:
        if count > 1:
            self._print(f"cell {index + 1}/{count}: {cell.id}")

    def generation_started(self, label: str, new_tokens: int) -> None:
        self._label = label

    def token(self) -> None:
        pass

    def generation_finished(self, latency_s: float | None) -> None:
        self.plan.done += 1
        took = f"{latency_s:.3f} s" if latency_s is not None else "unmeasured"
        self._print(
            f"[{self.plan.done}/{self.plan.total}] {self._label}: {took} · elapsed"
            f" {_clock(self.plan.elapsed_s())} · {self.plan.left()}"
        )

    def cell_finished(self, cell: Any) -> None:
        if cell.status not in ("measured", "incomplete"):
            self._print(f"cell {cell.id}: {cell.status} ({cell.reason})")


class LiveProgress:
    """A rich progress display: all generations, and the current one token by token."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # No refresh thread: it would redraw while generate() is being timed.
        self.progress = Progress(
            TextColumn("{task.description:<36}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
        )
        self._overall: Any = None
        self._current: Any = None
        self._tokens = 0
        self._last_redraw = 0.0

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.refresh()
        self.progress.stop()

    def planned(self, generations: int) -> None:
        self._overall = self.progress.add_task("all generations", total=generations)
        self.progress.refresh()

    def cell_started(self, cell: Any, index: int, count: int) -> None:
        if count > 1:
            self.progress.console.print(f"[bold]cell {index + 1}/{count}:[/] {cell.id}", highlight=False)

    def generation_started(self, label: str, new_tokens: int) -> None:
        self._tokens = 0
        if self._current is None:
            self._current = self.progress.add_task(label, total=new_tokens)
        else:
            self.progress.reset(self._current, total=new_tokens, description=label)
        self.progress.refresh()

    def token(self) -> None:
        # Called inside the timed generate(): count, and redraw only rarely.
        self._tokens += 1
        now = time.monotonic()
        if now - self._last_redraw >= REDRAW_EVERY_S:
            self._last_redraw = now
            self.progress.update(self._current, completed=self._tokens)
            self.progress.refresh()

    def generation_finished(self, latency_s: float | None) -> None:
        self.progress.update(self._current, completed=self._tokens)
        self.progress.advance(self._overall)
        self.progress.refresh()

    def cell_finished(self, cell: Any) -> None:
        pass


def progress_for(console: Console) -> LiveProgress | LineProgress:
    """A live display where stderr is a terminal, plain lines where it is a log."""
    return LiveProgress(console) if console.is_terminal else LineProgress(console)
