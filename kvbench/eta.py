"""How long a run has left, from the generations it plans and the latencies measured so far.

A sweep's generations are far from equal: an uncached generation of n tokens recomputes the whole
sequence at every step, so it costs about n·(P + n/2) positions, while a cached one costs about n steps.
An average over the generations done so far would, after the short cells of a length sweep, promise a
fraction of the time the long ones take. Instead each model's and mode's latency is fitted as

    latency ≈ a·n + b·positions,    positions = n·P + n·(n + 1)/2    (P prompt tokens, n new tokens)

with a, b ≥ 0, and the time left is the predicted latency of every generation left plus, for every cell
not started, the time a cell has cost beyond its generations so far (starting a process, loading the
model). With one length measured, a and b cannot be told apart and latency is taken as proportional to n:
the estimate is low until a second length has run. A model not reached yet is guessed from the models
measured so far, which can be far off (a tiny model after GPT-2) until it has run.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable


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
    """Planned generations, those finished with their latencies, and the estimate of the time left."""

    def __init__(self, planned: list[Planned], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.total = len(planned)
        self.done = 0
        self._left = Counter(planned)
        self._finished: list[tuple[Planned, float | None]] = []
        self._measured: dict[tuple[str, str], list[tuple[Planned, float]]] = defaultdict(list)

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    @property
    def planned_left(self) -> int:
        return sum(self._left.values())

    def finished(self, generation: Planned | None, latency_s: float | None) -> None:
        """A generation ended (latency None for a warmup). Cells that stop early (--target-rse) leave their
        unrun generations planned, so the estimate errs long."""
        self.done += 1
        if generation is None:
            return
        if self._left[generation] > 0:
            self._left[generation] -= 1
        self._finished.append((generation, latency_s))
        if latency_s is not None and latency_s > 0:
            self._measured[generation.model, generation.mode].append((generation, latency_s))

    def seconds_left(self) -> float | None:
        if not self.done:
            return None
        measured = self._measured
        # The model's own fit for the mode; for a model not reached yet, the mode's over the models so far
        # (a guess: models differ), and for a mode not reached yet, every generation's.
        by_model = {key: fit_latency_model(points) for key, points in measured.items()}
        by_mode = {
            mode: fit_latency_model([p for (_, m), points in measured.items() if m == mode for p in points])
            for _, mode in measured
        }
        fallback = fit_latency_model([point for points in measured.values() for point in points])
        if fallback is None:
            # Nothing measured yet (warmups only): the average generation so far.
            return self.elapsed_s() / self.done * (self.total - self.done)

        def predicted(generation: Planned) -> float:
            model = by_model.get((generation.model, generation.mode)) or by_mode.get(generation.mode) or fallback
            return model.predict_s(generation)

        spent = sum(latency if latency is not None else predicted(g) for g, latency in self._finished)
        started = {g.cell for g, _ in self._finished}
        per_cell_s = max(self.elapsed_s() - spent, 0.0) / max(len(started), 1)
        left = list(self._left.elements())
        return sum(predicted(g) for g in left) + per_cell_s * len({g.cell for g in left} - started)

    def text(self) -> str:
        seconds = self.seconds_left()
        if seconds is None:
            return "time left unknown"
        return f"about {clock_text(seconds)} left"


def clock_text(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
