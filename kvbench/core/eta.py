"""How long a run has left, from the generations it plans and the latencies measured so far.

A sweep's generations are far from equal: an uncached generation of n tokens recomputes the whole
sequence at every step, so it costs about n·(P + n/2) positions, while a cached one costs about n steps.
An average over the generations done so far would, after the short cells of a length sweep, promise a
fraction of the time the long ones take. Instead each model's and mode's latency is fitted as

    latency ≈ a·n + b·positions,    positions = n·P + n·(n + 1)/2    (P prompt tokens, n new tokens)

with a, b ≥ 0, and the time left is the predicted latency of every generation left plus, for every cell
not started, the time a finished cell took beyond its generations (starting a process, loading the model,
saving), shared among the cells running at once. A cell that starts a measuring process (or loads another
model) pays a start-up that a cell measured in the process before it does not: the two kinds are averaged
apart, and until a cell of the second kind has finished, its cost is taken as nothing beyond its runs.

With one length measured, a and b cannot be told apart and latency is taken as proportional to n: the
estimate is low until a second length has run. A model not reached yet is guessed from the models measured
so far, which can be far off (a tiny model after GPT-2) until it has run.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Planned:
    """One generation a run plans, by what its time depends on."""

    mode: str
    new_tokens: int
    prompt_tokens: int = 0  # 0 where the prompt is the default text, whose length is known only once loaded
    model: str = ""
    cell: str = ""  # the cell's id: its generations share one start-up

    @property
    def positions(self) -> float:
        n = self.new_tokens
        return n * self.prompt_tokens + n * (n + 1) / 2


@dataclass(frozen=True)
class _LatencyModel:
    per_token_s: float
    per_position_s: float

    def predict_s(self, generation: Planned) -> float:
        return self.per_token_s * generation.new_tokens + self.per_position_s * generation.positions


def fit_latency_model(points: list[tuple[Planned, float]]) -> _LatencyModel | None:
    """Least squares of latency on (n, positions) through the origin, both coefficients kept ≥ 0."""
    if not points:
        return None
    xs = [(float(g.new_tokens), g.positions) for g, _ in points]
    ts = [latency for _, latency in points]
    s11 = sum(x1 * x1 for x1, _ in xs)
    s12 = sum(x1 * x2 for x1, x2 in xs)
    s22 = sum(x2 * x2 for _, x2 in xs)
    t1 = sum(x1 * t for (x1, _), t in zip(xs, ts))
    t2 = sum(x2 * t for (_, x2), t in zip(xs, ts))
    determinant = s11 * s22 - s12 * s12
    # One shape of generation (or nearly): the two columns are proportional and the split is arbitrary.
    if determinant > 1e-9 * s11 * s22:
        a = (t1 * s22 - t2 * s12) / determinant
        b = (t2 * s11 - t1 * s12) / determinant
        if a >= 0 and b >= 0:
            return _LatencyModel(a, b)
        if a < 0:  # the best fit with a = 0 is the best within the constraint
            return _LatencyModel(0.0, max(t2 / s22, 0.0))
    return _LatencyModel(max(t1 / s11, 0.0), 0.0) if s11 else None


class TimeLeft:
    """Planned generations, the cells and generations finished with their latencies, and the estimate of
    the time left."""

    def __init__(
        self,
        planned: Mapping[Planned, int] | Iterable[Planned],
        clock: Callable[[], float] = time.monotonic,
        starting: Collection[str] | None = None,
    ) -> None:
        """`planned`: each generation with how many times it will run (a sweep with --max-runs in the
        millions plans that many, which a list would hold one by one), or the generations one by one.
        `starting`: the cells that start a measuring process or load their model; None: every cell."""
        self._clock = clock
        self.started = clock()
        self._left = Counter(dict(planned) if isinstance(planned, Mapping) else planned)
        self.total = sum(self._left.values())
        self.done = 0
        self._measured: dict[tuple[str, str], list[tuple[Planned, float]]] = defaultdict(list)
        self._cells_started: dict[str, float] = {}  # cell id: when it started
        self._cells_finished: set[str] = set()
        self._generations_of: dict[str, list[tuple[Planned, float | None]]] = defaultdict(list)
        self._starting = None if starting is None else set(starting)
        # Per finished cell, its time beyond its generations, by whether it started a process.
        self._beyond_generations_s: dict[bool, list[float]] = {True: [], False: []}
        # A long one-off phase (a backend building its kernels): while it runs, its guessed length counts in
        # the time left; once it ended, its seconds are not a cost every later cell pays again.
        self._phase: tuple[str, float, float] | None = None  # cell, when it started, how long it is guessed
        self._one_off_s: dict[str, float] = defaultdict(float)

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    @property
    def planned_left(self) -> int:
        return sum(self._left.values())

    def cell_started(self, cell: str) -> None:
        self._cells_started.setdefault(cell, self._clock())

    def cell_finished(self, cell: str) -> None:
        """A cell ended: what it did not run (it stopped early with --target-rse, failed or was skipped)
        is no longer to come, and the time it took beyond its generations is the cost of a cell."""
        for generation in [g for g in self._left if g.cell == cell]:
            del self._left[generation]
        if cell in self._cells_started and cell not in self._cells_finished:
            self._cells_finished.add(cell)
            if self._generations_of[cell]:
                self._beyond_generations_s[self._starts(cell)].append(max(self._beyond_so_far_s(cell, {}), 0.0))

    def phase_started(self, cell: str, expected_s: float) -> None:
        """A one-off phase of `cell` began, guessed to take `expected_s`."""
        self._phase = (cell, self._clock(), expected_s)

    def phase_finished(self, cell: str, seconds: float) -> None:
        """The one-off phase begun in `cell` ended after `seconds` (other phases: nothing to do)."""
        if self._phase is not None and self._phase[0] == cell:
            self._phase = None
            self._one_off_s[cell] += seconds

    def _phase_left_s(self) -> float:
        if self._phase is None:
            return 0.0
        _, started, expected_s = self._phase
        return max(expected_s - (self._clock() - started), 0.0)

    def _phase_so_far_s(self, cell: str) -> float:
        ongoing = self._clock() - self._phase[1] if self._phase is not None and self._phase[0] == cell else 0.0
        return self._one_off_s.get(cell, 0.0) + ongoing

    def finished(self, generation: Planned | None, latency_s: float | None) -> None:
        """A generation ended (latency None for a warmup)."""
        self.done += 1
        if generation is None:
            return
        if self._left[generation] > 0:
            self._left[generation] -= 1
        self._generations_of[generation.cell].append((generation, latency_s))
        if latency_s is not None and latency_s > 0:
            self._measured[generation.model, generation.mode].append((generation, latency_s))

    def _model_for(self, generation: Planned) -> _LatencyModel | None:
        """The model's own fit for the mode; for a model not reached yet, the mode's over the models so far
        (a guess: models differ); for a mode not reached yet, every generation's."""
        own = self._measured.get((generation.model, generation.mode))
        if own:
            return fit_latency_model(own)
        same_mode = [p for (_, mode), points in self._measured.items() if mode == generation.mode for p in points]
        return fit_latency_model(same_mode or [p for points in self._measured.values() for p in points])

    def _predicted_s(self, generation: Planned, models: dict) -> float:
        """What the fit predicts for a generation; `models` keeps each fit for the rest of one estimate."""
        key = (generation.model, generation.mode)
        if key not in models:
            models[key] = self._model_for(generation)
        return models[key].predict_s(generation) if models[key] is not None else 0.0

    def _spent_s(self, generation: Planned, latency_s: float | None, models: dict) -> float:
        """A generation's latency; for a warmup, which is not timed, what its fit predicts."""
        return latency_s if latency_s is not None else self._predicted_s(generation, models)

    def seconds_left(self) -> float | None:
        if not self.done:
            return None
        if not self.planned_left:
            # Every planned generation has run: what is left (the last save) is not worth a second.
            return 0.0
        if not self._measured:
            # Nothing timed yet (warmups only): the average generation so far.
            one_off = sum(self._phase_so_far_s(cell) for cell in self._cells_started)
            return max(self.elapsed_s() - one_off, 0.0) / self.done * self.planned_left + self._phase_left_s()
        models: dict[tuple[str, str], _LatencyModel | None] = {}
        generations_left = sum(count * self._predicted_s(g, models) for g, count in self._left.items())
        per_cell_s = {kind: self._per_cell_s(kind, models) for kind in (True, False)}
        cells_to_start = {g.cell for g, count in self._left.items() if count} - set(self._cells_started)
        running = set(self._cells_started) - self._cells_finished
        # A running cell still has the rest of a cell's cost beyond its generations to pay: with
        # --processes N, the start-up of its later processes.
        still_to_pay = sum(max(per_cell_s[self._starts(cell)] - self._beyond_so_far_s(cell, models), 0.0) for cell in running)
        cells_s = sum(per_cell_s[self._starts(cell)] for cell in cells_to_start)
        # Cells measured at once (one per GPU, or on Ray) share the time left.
        return (generations_left + cells_s + still_to_pay) / max(len(running), 1) + self._phase_left_s()

    def _starts(self, cell: str) -> bool:
        return self._starting is None or cell in self._starting

    def _per_cell_s(self, starting: bool, models: dict) -> float:
        """What a cell of one kind costs beyond its generations: the mean over the finished cells of that
        kind; for cells that start a process, before any finished, what the ones running have cost so far;
        for cells measured in a process already started, nothing until one has finished."""
        finished = self._beyond_generations_s[starting]
        if finished:
            return sum(finished) / len(finished)
        if not starting:
            return 0.0
        first = min(self._cells_started.values(), default=self.started)
        spent = sum(self._spent_s(g, t, models) for runs in self._generations_of.values() for g, t in runs)
        one_off = sum(self._phase_so_far_s(cell) for cell in self._cells_started)
        return max(self._clock() - first - spent - one_off, 0.0) / max(len(self._cells_started), 1)

    def _beyond_so_far_s(self, cell: str, models: dict) -> float:
        """The time a started cell has taken beyond its generations: starting, loading, saving."""
        spent = sum(self._spent_s(g, latency, models) for g, latency in self._generations_of[cell])
        return self._clock() - self._cells_started[cell] - spent - self._phase_so_far_s(cell)

    def text(self) -> str:
        seconds = self.seconds_left()
        if seconds is None:
            return "time left unknown"
        return f"about {clock_text(seconds)} left"


def clock_text(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def predicted_s(planned: Mapping[Planned, int], measured: Iterable[tuple[Planned, float]]) -> float | None:
    """How long the planned generations would take, each predicted by the fit of earlier latencies of its
    model and mode (another run of them on the same machine); None where a model or mode planned has no
    such latency. Loading and saving are not counted."""
    points: dict[tuple[str, str], list[tuple[Planned, float]]] = defaultdict(list)
    for generation, latency_s in measured:
        points[generation.model, generation.mode].append((generation, latency_s))
    total = 0.0
    for generation, count in planned.items():
        fit = fit_latency_model(points.get((generation.model, generation.mode), []))
        if fit is None:
            return None
        total += count * fit.predict_s(generation)
    return total
