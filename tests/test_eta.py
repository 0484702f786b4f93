"""The time left in a sweep, on a scripted clock: generations whose latency follows the costs the estimate
assumes, cells that cost a start-up, driven through the hooks in the order the runner calls them."""

import pytest

from kvbench.core.eta import Planned, TimeLeft, fit_latency_model


def latency_of(generation: Planned) -> float:
    """GPT-2 on one CPU core, roughly: 50 ms a cached step; 75 ms an uncached one plus 3 ms per position."""
    if generation.mode == "cached":
        return 0.05 * generation.new_tokens + 0.0002 * generation.positions
    return 0.075 * generation.new_tokens + 0.003 * generation.positions


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def cells(lengths, prompt_tokens=8, runs=3, warmup=1, model="gpt2"):
    """Per cell, its id and its generations in the runner's order: warmups of each mode, then the modes
    interleaved run by run (True marks a warmup)."""
    plan = []
    for n in lengths:
        cell = f"{model} new={n}"
        generations = [
            (Planned(mode, n, prompt_tokens, model, cell), index < warmup)
            for index in range(warmup + runs)
            for mode in ("cached", "uncached")
        ]
        plan.append((cell, generations))
    return plan


def every_generation(plan):
    return [generation for _, generations in plan for generation, _ in generations]


class Sweep:
    """Plays a plan through TimeLeft's hooks; `start_up_s` is what each cell costs before its first
    generation (a fresh process, a model load), `scale` how a model's latencies compare with latency_of."""

    def __init__(self, plan, start_up_s=20.0, scale=None):
        self.plan, self.start_up_s, self.scale = plan, start_up_s, scale or {}
        self.clock = Clock()
        self.left = TimeLeft(every_generation(plan), clock=self.clock)
        self.played = 0  # generations

    def latency(self, generation):
        return latency_of(generation) * self.scale.get(generation.model, 1.0)

    def steps(self):
        """Yield after every generation; the caller reads the estimate there."""
        for cell, generations in self.plan:
            self.left.cell_started(cell)  # as the launcher does, before the cell's process starts
            self.clock.now += self.start_up_s
            for generation, warmup in generations:
                latency = self.latency(generation)
                self.clock.now += latency
                self.left.finished(generation, None if warmup else latency)
                self.played += 1
                last = generation is generations[-1][0]
                if last:
                    self.left.cell_finished(cell)
                yield

    def truth_left(self):
        """The time the rest of the plan will take, played on."""
        total, played = 0.0, 0
        for _cell, generations in self.plan:
            for index, (generation, _) in enumerate(generations):
                if played >= self.played:
                    total += self.latency(generation) + (self.start_up_s if index == 0 else 0)
                played += 1
        return total


def test_after_two_lengths_the_estimate_sees_the_long_cells_coming():
    sweep = Sweep(cells([16, 32, 64, 128, 256]))
    steps = sweep.steps()
    for _ in range(16):  # two cells
        next(steps)
    left, truth = sweep.left, sweep.truth_left()
    naive = left.elapsed_s() / left.done * (left.total - left.done)  # the average generation so far
    assert naive < truth / 4  # what an average would promise: the estimate must do better than this
    assert left.seconds_left() == pytest.approx(truth, rel=0.05)
    assert left.text().startswith("about ") and left.text().endswith(" left")


def test_the_estimate_stays_close_for_the_rest_of_the_sweep():
    sweep = Sweep(cells([16, 32, 64, 128, 256], prompt_tokens=64))
    errors = []
    for _ in sweep.steps():
        if 16 <= sweep.played < 40:
            errors.append(abs(sweep.left.seconds_left() / sweep.truth_left() - 1))
    assert len(errors) == 24 and max(errors) < 0.05


def test_warmups_alone_give_the_average_and_nothing_done_gives_no_estimate():
    plan = cells([16, 32])
    clock = Clock()
    left = TimeLeft(every_generation(plan), clock=clock)
    assert left.seconds_left() is None and left.text() == "time left unknown"
    left.cell_started(plan[0][0])
    clock.now += 10
    left.finished(plan[0][1][0][0], None)
    assert left.seconds_left() == pytest.approx(10 * (left.total - 1))


def test_the_fit_recovers_both_costs_and_falls_back_with_one_length():
    uncached = [g for g in every_generation(cells([16, 64, 256])) if g.mode == "uncached"]
    model = fit_latency_model([(g, latency_of(g)) for g in uncached])
    assert model.per_token_s == pytest.approx(0.075) and model.per_position_s == pytest.approx(0.003)
    one_length = [(g, latency_of(g)) for g in every_generation(cells([32])) if g.mode == "uncached"]
    model = fit_latency_model(one_length)
    assert model.per_position_s == 0
    assert model.predict_s(one_length[0][0]) == pytest.approx(one_length[0][1])
    assert fit_latency_model([]) is None


def test_costs_are_never_negative():
    """Latency that falls with length (noise, a cache warming up) must not predict negative time."""
    points = [(Planned("uncached", n), t) for n, t in ((10, 1.0), (20, 1.1), (40, 1.0), (80, 0.9))]
    model = fit_latency_model(points)
    assert model.per_token_s >= 0 and model.per_position_s >= 0
    assert model.predict_s(Planned("uncached", 160)) > 0


def test_a_cell_that_stops_early_takes_its_unrun_generations_out_of_the_plan():
    """--target-rse stops a cell before its last runs; a failed or skipped cell runs none."""
    plan = cells([16, 32])
    left = TimeLeft(every_generation(plan), clock=Clock())
    first, generations = plan[0]
    left.cell_started(first)
    for generation, warmup in generations[:4]:
        left.finished(generation, None if warmup else latency_of(generation))
    left.cell_finished(first)
    assert left.planned_left == 8  # the second cell's
    left.cell_finished(plan[1][0])  # skipped: never started
    assert left.planned_left == 0 and left.seconds_left() == 0


def test_each_model_is_predicted_from_its_own_runs_once_it_has_some():
    """A sweep of a large and a small model: while only the large one has run, the small one is guessed
    from it (too long); once the small one has run two lengths, from its own runs."""
    plan = cells([16, 64, 256], model="big") + cells([16, 64, 256], model="small")
    sweep = Sweep(plan, start_up_s=5.0, scale={"small": 0.01})
    steps = sweep.steps()
    for _ in range(24):  # every cell of the big model
        next(steps)
    assert sweep.left.seconds_left() > 20 * sweep.truth_left()
    for _ in range(16):  # two of the small model's cells
        next(steps)
    assert sweep.left.seconds_left() == pytest.approx(sweep.truth_left(), rel=0.02)


def test_cells_not_started_carry_the_start_up_a_cell_has_cost():
    """Cells of a tiny model, each in a fresh process: 30 s to start and load, well under a second to
    generate. After one cell the estimate counts four more start-ups, not just their generations."""
    plan = [
        (f"cell{c}", [(Planned(mode, 8, 8, "tiny", f"cell{c}"), False) for mode in ("cached", "uncached")]) for c in range(5)
    ]
    sweep = Sweep(plan, start_up_s=30.0, scale={"tiny": 0.2 / latency_of(Planned("cached", 8, 8))})
    steps = sweep.steps()
    for _ in range(2):
        next(steps)
    assert sweep.left.seconds_left() == pytest.approx(sweep.truth_left(), rel=0.02)
    assert sweep.truth_left() > 4 * 30


def test_cells_measured_at_once_share_the_time_left():
    """Two cells running at once (two GPUs): the generations left take half as long."""
    plan = cells([16, 16, 16, 16])
    plan = [
        (f"{cell} #{i}", [(Planned(g.mode, g.new_tokens, g.prompt_tokens, g.model, f"{cell} #{i}"), w) for g, w in generations])
        for i, (cell, generations) in enumerate(plan)
    ]
    clock = Clock()
    left = TimeLeft(every_generation(plan), clock=clock)
    for cell, generations in plan[:1]:
        left.cell_started(cell)
        for generation, warmup in generations:
            clock.now += latency_of(generation)
            left.finished(generation, None if warmup else latency_of(generation))
        left.cell_finished(cell)
    one_at_a_time = left.seconds_left()
    left.cell_started(plan[1][0])
    left.cell_started(plan[2][0])
    assert left.seconds_left() == pytest.approx(one_at_a_time / 2, rel=0.01)


def test_a_plan_of_a_trillion_runs_is_counted_not_listed():
    """--max-runs in the millions with --target-rse: the plan holds each generation with its count (a
    trillion of them listed one by one would not fit in any memory)."""
    left = TimeLeft({Planned("cached", 8, 8, "m", "c"): 10**12, Planned("uncached", 8, 8, "m", "c"): 10**12})
    left.cell_started("c")
    left.finished(Planned("cached", 8, 8, "m", "c"), 0.01)
    assert left.total == 2 * 10**12 and left.planned_left == 2 * 10**12 - 1 and left.seconds_left() > 0


def test_once_every_planned_generation_has_run_nothing_is_left():
    """The first cell paid a model load the second did not (the same model, kept loaded). At the second
    cell's last generation nothing planned is left, so its smaller start-up is no debt still to pay, though
    the cell has not reported its end yet (the runner saves first)."""
    plan = cells([16, 32], runs=2, warmup=0)
    clock = Clock()
    left = TimeLeft(every_generation(plan), clock=clock)
    for (cell, generations), start_up_s in zip(plan, (30.0, 1.0)):
        left.cell_started(cell)
        clock.now += start_up_s
        for generation, _ in generations:
            clock.now += latency_of(generation)
            left.finished(generation, latency_of(generation))
        if cell == plan[0][0]:
            left.cell_finished(cell)
    assert left.planned_left == 0
    assert left.seconds_left() == 0.0 and left.text() == "about 0:00 left"
