"""Both progress displays on a real run of a tiny model, on a scripted clock: the live one a terminal gets,
the lines a log gets. What they say of time (elapsed, time left) is decided by the scripted latencies."""

import io
import re

from rich.console import Console

from kvbench.progress import LineProgress, LiveProgress, progress_for
from kvbench.runner import run_benchmark
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
