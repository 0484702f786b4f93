"""Both progress displays on a real run of a tiny model: the live one a terminal gets, the lines a log gets."""

import io
import re

from rich.console import Console

from kvbench.progress import LineProgress, LiveProgress, progress_for
from kvbench.runner import run_benchmark
from tests.conftest import tiny_config


def test_the_live_display_draws_every_generation_and_the_time_left(tiny_gpt2_dir):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    display = progress_for(console)
    assert isinstance(display, LiveProgress)
    with display:
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 8], runs=2), observer=display)
    drawn = screen.getvalue()
    assert "cell 2/2:" in drawn
    last = drawn.rsplit("all generations", 1)[1]
    assert re.search(r"8/8 .*about 0:00 left", last.splitlines()[0])


def test_a_log_gets_one_line_per_generation_with_the_time_left(tiny_gpt2_dir):
    log = io.StringIO()
    display = progress_for(Console(file=log, force_terminal=False, width=200))
    assert isinstance(display, LineProgress)
    with display:
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 8], runs=2), observer=display)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("[")]
    assert len(lines) == 8 and lines[-1].startswith("[8/8] uncached 2/2: ")
    assert all(re.search(r"about \d+:\d\d left$", line) for line in lines)
    assert lines[-1].endswith("about 0:00 left")
