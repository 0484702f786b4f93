"""The time left in a length sweep, on a scripted clock: generations whose latency follows the costs the
estimate assumes (and one that does not), run in the order the runner runs them."""

import pytest

from kvbench.eta import Planned, TimeLeft, fit_latency_model


def sweep(lengths, prompt_tokens=8, runs=3, warmup=1):
    """The runner's order: per cell, warmups of each mode, then the modes interleaved run by run."""
    order = []
    for n in lengths:
        for index in range(warmup + runs):
            for mode in ("cached", "uncached"):
                order.append((Planned(mode, n, prompt_tokens, cell=f"new={n}"), index < warmup))
    return order


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


def play(order, stop_after, cell_overhead_s=20.0):
    """Run the first stop_after generations on a scripted clock; return the estimate and the true time left."""
    clock = Clock()
    left = TimeLeft([generation for generation, _ in order], clock=clock)
    spent = []
    previous = None
    for generation, warmup in order:
        step = latency_of(generation) + (cell_overhead_s if generation.new_tokens != previous else 0)
        previous = generation.new_tokens
        spent.append(step)
    for (generation, warmup), step in zip(order[:stop_after], spent):
        clock.now += step
        left.finished(generation, None if warmup else latency_of(generation))
    return left, sum(spent[stop_after:])


def test_after_two_lengths_the_estimate_sees_the_long_cells_coming():
    order = sweep([16, 32, 64, 128, 256])
    after_two_cells = 2 * 8
    left, truth = play(order, after_two_cells)
    naive = left.elapsed_s() / left.done * (left.total - left.done)  # the average generation so far
    assert naive < truth / 4  # what an average would promise: the estimate must do better than this
    assert left.seconds_left() == pytest.approx(truth, rel=0.1)
    assert left.text().startswith("about ") and left.text().endswith(" left")


def test_the_estimate_converges_as_the_sweep_goes_on():
    order = sweep([16, 32, 64, 128, 256], prompt_tokens=64)
    errors = []
    for stop in range(16, len(order) - 1, 8):
        left, truth = play(order, stop)
        errors.append(abs(left.seconds_left() / truth - 1))
    assert max(errors) < 0.1


def test_warmups_alone_give_the_average_and_nothing_done_gives_no_estimate():
    order = sweep([16, 32])
    clock = Clock()
    left = TimeLeft([g for g, _ in order], clock=clock)
    assert left.seconds_left() is None and left.text() == "time left unknown"
    clock.now += 10
    left.finished(order[0][0], None)
    assert left.seconds_left() == pytest.approx(10 * (len(order) - 1))


def test_the_fit_recovers_both_costs_and_falls_back_with_one_length():
    points = [(g, latency_of(g)) for g, _ in sweep([16, 64, 256]) if g.mode == "uncached"]
    model = fit_latency_model(points)
    assert model.per_token_s == pytest.approx(0.075) and model.per_position_s == pytest.approx(0.003)
    one_length = [(g, latency_of(g)) for g, _ in sweep([32]) if g.mode == "uncached"]
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


def test_generations_of_cells_that_stopped_early_stay_planned():
    """--target-rse may stop a cell before its last runs: their share stays in the estimate (it errs long)."""
    order = sweep([16, 32])
    clock = Clock()
    left = TimeLeft([g for g, _ in order], clock=clock)
    clock.now += 1
    left.finished(Planned("cached", 999), 1.0)  # a generation that was never planned: counted, not removed
    assert left.done == 1 and left.planned_left == len(order)


def test_each_model_is_predicted_from_its_own_runs_once_it_has_some():
    """A sweep of a large and a small model: while only the large one has run, the small one is guessed
    from it (too long); once the small one has run two lengths, from its own runs."""
    lengths = (16, 64, 256)
    plan = [Planned(mode, n, 8, model) for model in ("big", "small") for n in lengths for mode in ("cached", "uncached")]
    clock = Clock()
    left = TimeLeft(plan, clock=clock)

    def finish(generation, scale):
        latency = latency_of(generation) * scale
        clock.now += latency
        left.finished(generation, latency)

    for generation in plan[:6]:
        finish(generation, scale=1.0)
    truth_small = sum(latency_of(g) * 0.01 for g in plan[6:])
    assert left.seconds_left() > 50 * truth_small
    for generation in plan[6:11]:
        finish(generation, scale=0.01)
    assert left.seconds_left() == pytest.approx(latency_of(plan[11]) * 0.01, rel=0.01)


def test_cells_not_started_carry_the_start_up_a_cell_has_cost():
    """Cells of a tiny model, each in a fresh process: 30 s to start and load, well under a second to
    generate. After one cell the estimate counts four more start-ups, not just their generations."""
    plan = [Planned(mode, 8, 8, "tiny", cell=f"cell{c}") for c in range(5) for mode in ("cached", "uncached")]
    clock = Clock()
    left = TimeLeft(plan, clock=clock)
    clock.now += 30  # the first cell's process starts and loads its model
    for generation in plan[:2]:
        clock.now += 0.2
        left.finished(generation, 0.2)
    assert left.seconds_left() == pytest.approx(4 * (30 + 0.4), rel=0.01)
