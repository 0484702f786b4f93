"""Both progress displays on a real run of a tiny model, on a scripted clock: the live one a terminal gets,
the lines a log gets. What they say of time (elapsed, time left) is decided by the scripted latencies."""

import io
import re

from rich.console import Console

from kvbench.render.progress import LineProgress, LiveProgress, progress_for
from kvbench.runner.benchmark import run_benchmark
from tests.clocks import Both, ScriptedClock, steady
from tests.conftest import tiny_config

# 1 s a token cached, 3 s uncached.
SECONDS_PER_TOKEN = steady(cached_s=1.0, uncached_s=3.0)


def test_the_live_display_draws_every_generation_and_the_time_left(tiny_gpt2_dir):
    screen = io.StringIO()
    clock = ScriptedClock(SECONDS_PER_TOKEN)
    display = progress_for(Console(file=screen, force_terminal=True, width=120, color_system=None), clock)
    assert isinstance(display, LiveProgress)
    with display:
        config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 8], runs=2)
        run_benchmark(config, observer=Both(clock, display), clock=clock)
    drawn = screen.getvalue()
    assert "cell 2/2:" in drawn
    last = drawn.rsplit("all generations", 1)[1]
    assert re.search(r"8/8 .*about 0:00 left", last.splitlines()[0])


def test_the_time_left_counts_down_during_a_long_generation(tiny_gpt2_dir):
    """Between the estimates made as generations end, the live display counts down from the last one:
    a generation of minutes does not show a frozen number."""
    screen = io.StringIO()
    clock = ScriptedClock(steady(cached_s=1.0, uncached_s=5.0))  # 40 s an uncached generation: many redraws
    display = progress_for(Console(file=screen, force_terminal=True, width=120, color_system=None), clock)
    with display:
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[8], runs=2), observer=Both(clock, display), clock=clock)
    frames = re.findall(r"all generations.*?(\d+)/\d+ .*?about (\d+):(\d\d) left", screen.getvalue())
    shown = [(int(done), int(minutes) * 60 + int(seconds)) for done, minutes, seconds in frames]
    within_a_generation = [
        (before, after) for (done, before), (same, after) in zip(shown, shown[1:]) if done == same and after != before
    ]
    assert within_a_generation and all(after < before for before, after in within_a_generation)


def test_a_generation_shorter_than_the_redraw_interval_is_never_drawn_while_timed(tiny_gpt2_dir):
    """The display draws before each generation starts; a redraw from the token hook, inside the timed
    generate(), waits REDRAW_EVERY_S from that drawing, so short generations pay for no drawing at all."""
    clock = ScriptedClock(steady(cached_s=0.1, uncached_s=0.2))  # at most 1.6 s a generation
    display = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None), clock)
    drawn_while_timed = []
    inside_token = False
    refresh, token = display.progress.refresh, display.token

    def counting_refresh():
        drawn_while_timed.append(inside_token)
        refresh()

    def flagged_token():
        nonlocal inside_token
        inside_token = True
        token()
        inside_token = False

    display.progress.refresh, display.token = counting_refresh, flagged_token
    with display:
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[8], runs=3), observer=Both(clock, display), clock=clock)
    assert drawn_while_timed and not any(drawn_while_timed)


def test_a_log_gets_one_line_per_generation_with_the_time_left(tiny_gpt2_dir):
    log = io.StringIO()
    clock = ScriptedClock(SECONDS_PER_TOKEN)
    display = progress_for(Console(file=log, force_terminal=False, width=200), clock)
    assert isinstance(display, LineProgress)
    with display:
        config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 8], runs=2)
        run_benchmark(config, observer=Both(clock, display), clock=clock)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("[")]
    # The whole run takes 96 scripted seconds. Once each mode has been seen, the time left is exact: the
    # latencies grow with length as the estimate assumes. Before that, uncached is guessed from cached.
    assert lines == [
        "[1/8] cached 1/2: 4.000 s · elapsed 0:04 · about 0:44 left",
        "[2/8] uncached 1/2: 12.000 s · elapsed 0:16 · about 1:20 left",
        "[3/8] cached 2/2: 4.000 s · elapsed 0:20 · about 1:16 left",
        "[4/8] uncached 2/2: 12.000 s · elapsed 0:32 · about 1:04 left",
        "[5/8] cached 1/2: 8.000 s · elapsed 0:40 · about 0:56 left",
        "[6/8] uncached 1/2: 24.000 s · elapsed 1:04 · about 0:32 left",
        "[7/8] cached 2/2: 8.000 s · elapsed 1:12 · about 0:24 left",
        "[8/8] uncached 2/2: 24.000 s · elapsed 1:36 · about 0:00 left",
    ]


# A sweep on a GPU, as the scripted clock tells it: each cell spends START_UP_S before its first generation
# (a new measuring process, imports, the model) and WRAP_UP_S after its last run (the untimed agreement
# passes of a non-dynamic cache, its process exiting), both outside any generation.
START_UP_S, WRAP_UP_S, CELLS = 10.0, 25.0, 8


def play_sweep(display, clock):
    """Drive a display through the runner's hooks for CELLS cells of one warmup and two runs per mode; return
    the scripted time at which each cell after the first started, and the time the sweep ended."""
    from types import SimpleNamespace

    from kvbench.core.eta import Planned

    plan = {Planned(mode, 4, 8, "gpt2", f"cell {k}"): 3 for k in range(CELLS) for mode in ("cached", "uncached")}
    display.planned(plan)
    started = []
    for k in range(CELLS):
        cell = SimpleNamespace(id=f"cell {k}", status="measured", reason=None)
        started.append(clock())
        display.cell_started(cell, k, CELLS)
        clock.advance(START_UP_S)
        for run in range(3):
            for mode in ("cached", "uncached"):
                generation = Planned(mode, 4, 8, "gpt2", cell.id)
                label = f"warmup {mode}" if run == 0 else f"{mode} {run}/2"
                for observer in (clock, display):
                    observer.generation_started(label, generation)
                for _ in range(generation.new_tokens):
                    clock.token()
                    display.token()
                display.generation_finished(None if run == 0 else generation.new_tokens * 0.5, generation)
        clock.advance(WRAP_UP_S)
        display.cell_finished(cell)
    return started[1:], clock()


def seconds_of(text: str) -> int:
    minutes, seconds = re.search(r"about (\d+):(\d\d) left", text).groups()
    return int(minutes) * 60 + int(seconds)


def test_a_log_says_the_time_left_at_each_new_cell_with_what_a_cell_costs_after_its_runs():
    """What a cell costs after its last run is seen only when it ends: the line that starts the next cell
    carries the time left with it, for every cell still to come."""
    log = io.StringIO()
    clock = ScriptedClock(steady(cached_s=0.5, uncached_s=0.5))
    display = LineProgress(Console(file=log, force_terminal=False, width=200), clock)
    started, ended = play_sweep(display, clock)
    headings = [line for line in log.getvalue().splitlines() if line.startswith("cell ")]
    assert headings[0] == "cell 1/8: cell 0"  # nothing has run: no estimate yet
    assert len(headings[1:]) == len(started) == CELLS - 1
    for heading, at in zip(headings[1:], started):
        assert abs(seconds_of(heading) - (ended - at)) <= 1, heading


def test_the_live_display_estimates_again_when_a_cell_ends():
    screen = io.StringIO()
    clock = ScriptedClock(steady(cached_s=0.5, uncached_s=0.5))
    display = LiveProgress(Console(file=screen, force_terminal=True, width=120, color_system=None), clock)
    shown_at_cell_start = []
    cell_started = display.cell_started

    def noting(cell, index, count):
        shown_at_cell_start.append(display.progress.tasks[0].fields["left"])
        cell_started(cell, index, count)

    display.cell_started = noting  # what the display shows as each cell starts, the one before just ended
    with display:
        started, ended = play_sweep(display, clock)
    for shown, at in zip(shown_at_cell_start[1:], started):
        assert abs(seconds_of(shown) - (ended - at)) <= 1, shown
