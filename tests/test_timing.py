"""The timer and the token clock read a scripted clock here, so what they compute is checked exactly."""

from kvbench.core.devices import Devices
from kvbench.hardware.timing import make_timer
from kvbench.measure.generation import TokenClock


def scripted(*readings: float):
    values = iter(readings)
    return lambda: next(values)


def test_timer_returns_the_result_and_the_span_between_two_readings():
    timed = make_timer(Devices(("cpu",)), clock=scripted(10.0, 12.5))
    result, seconds = timed(lambda: "done")
    assert (result, seconds) == ("done", 2.5)


def test_token_clock_skips_the_prompt_and_times_each_new_token_from_the_start():
    ticks = []
    clock = TokenClock(lambda: ticks.append(1), clock=scripted(100.0, 100.2, 100.5, 100.6, 101.0))
    clock.begin()  # 100.0
    clock.put("prompt ids")  # 100.2: generate() hands over the prompt first; not a new token
    clock.put("token 1")  # 100.5
    clock.put("token 2")  # 100.6
    clock.put("token 3")  # 101.0
    clock.end()
    assert [round(t, 9) for t in clock.times_s] == [0.5, 0.6, 1.0]
    assert len(ticks) == 3


def test_token_clock_starts_afresh_for_each_generation():
    clock = TokenClock(lambda: None, clock=scripted(0.0, 0.1, 0.3, 5.0, 5.1, 5.2))
    clock.begin()
    clock.put("prompt")
    clock.put("token")
    clock.begin()
    clock.put("prompt")
    clock.put("token")
    assert [round(t, 9) for t in clock.times_s] == [0.2]
