"""A scripted clock for whole runs: the real runner and a real tiny model generate, but every latency is a
number the test chose, so stopping rules, displays and verdicts are decided by the code, never by how busy
the machine is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from kvbench.core.eta import Planned
from kvbench.model.events import Observer

# Seconds per generated token for the n-th measured generation (from 0) of a mode.
TokenCost = Callable[[str, int], float]


def steady(cached_s: float = 0.01, uncached_s: float = 0.03) -> TokenCost:
    """The same cost per token for every generation of a mode."""
    return lambda mode, index: cached_s if mode == "cached" else uncached_s


def jittered(cost: TokenCost, factors: list[float]) -> TokenCost:
    """`cost`, scaled in turn by each factor (cycling): a chosen spread between runs."""
    return lambda mode, index: cost(mode, index) * factors[index % len(factors)]


class ScriptedClock(Observer):
    """A clock that stands still except when generate() streams a token, which advances it by the token's
    scripted cost. Passed to the runner as its clock and as its observer (or beside another observer,
    through `Both`), every latency the runner measures is exactly new tokens x cost, and every display
    reading the same clock sees time pass as if those were real seconds."""

    def __init__(self, cost: TokenCost, start: float = 1000.0) -> None:
        self.now = start
        self._cost = cost
        self._step = 0.0
        self._generations: Counter[str] = Counter()

    def __call__(self) -> float:
        return self.now

    def generation_started(self, label: str, generation: Planned) -> None:
        # Warmups are scripted like the first measured run: they are not timed, but a display sees them.
        index = -1 if label.startswith("warmup") else self._generations[generation.mode]
        self._step = self._cost(generation.mode, max(index, 0))
        if index >= 0:
            self._generations[generation.mode] += 1

    def token(self) -> None:
        self.now += self._step

    def advance(self, seconds: float) -> None:
        """Time spent outside generate() (loading a model, a process starting), as the test says."""
        self.now += seconds


class Both(Observer):
    """Two observers of one run, in order: the scripted clock first, so a display reads the time after it."""

    def __init__(self, first: Observer, second: Observer) -> None:
        self._observers = (first, second)

    def planned(self, generations, starting=None):
        for observer in self._observers:
            observer.planned(generations, starting)

    def cell_started(self, cell, index, count):
        for observer in self._observers:
            observer.cell_started(cell, index, count)

    def generation_started(self, label, generation):
        for observer in self._observers:
            observer.generation_started(label, generation)

    def token(self):
        for observer in self._observers:
            observer.token()

    def generation_finished(self, latency_s, generation=None):
        for observer in self._observers:
            observer.generation_finished(latency_s, generation)

    def cell_finished(self, cell):
        for observer in self._observers:
            observer.cell_finished(cell)

    def phase_started(self, cell, what, expected_s):
        for observer in self._observers:
            observer.phase_started(cell, what, expected_s)

    def phase_alive(self):
        for observer in self._observers:
            observer.phase_alive()

    def phase_finished(self, cell, phase, seconds):
        for observer in self._observers:
            observer.phase_finished(cell, phase, seconds)

    def output(self, line):
        self._observers[-1].output(line)
