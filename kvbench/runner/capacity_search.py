"""The search for the largest value that fits, by measurement: doubling from a small start until a probe does
not fit (or the most allowed is reached), then bisection between the last value that fit and the first that
did not, down to a resolution. Pure: a probe is whatever the caller measures."""

from __future__ import annotations

from collections.abc import Callable

from kvbench.model.capacity import Probe, Search

# Bisection stops once the last fit and the first failure are this share of the last fit apart (or 1 apart).
DEFAULT_RESOLUTION = 1 / 64


def step_of(value: int, resolution: float) -> int:
    """The gap between a fit and a failure that ends the bisection at `value`: `resolution` of it, at least 1."""
    return max(1, int(value * resolution))


def search(
    run: Search,
    probe: Callable[[int], Probe],
    resolution: float = DEFAULT_RESOLUTION,
    on_probe: Callable[[Probe], None] | None = None,
) -> Search:
    """Fill `run` with its probes, from run.start up to run.most: `largest`, `first_failure` and why it
    stopped. A probe that fails for a reason other than memory (`failure` without `out_of_memory`) ends the
    search there: nothing after it would be a measurement of memory. `on_probe` hears of each probe once it
    is in `run` (to save it: a Ctrl-C during the next keeps it)."""

    def measured(value: int) -> Probe | None:
        result = probe(value)
        run.probes.append(result)
        if on_probe is not None:
            on_probe(result)
        if result.failure is not None and not result.out_of_memory:
            run.stopped = f"stopped at {value:,}: {result.failure}"
            return None
        return result

    last_fit, first_failure = 0, None
    value = min(run.start, run.most)
    # Doubling: until a probe does not fit, or the most allowed fits.
    while True:
        result = measured(value)
        if result is None:
            return _ended(run, last_fit, first_failure)
        if not result.fits:
            first_failure = value
            break
        last_fit = value
        if value >= run.most:
            run.stopped = f"fits at the most allowed, {run.most:,} ({run.most_reason})"
            return _ended(run, last_fit, None)
        value = min(value * 2, run.most)
    # Bisection: last_fit fits (0: nothing is known to), first_failure does not.
    while first_failure - last_fit > step_of(last_fit, resolution):
        middle = (last_fit + first_failure) // 2
        result = measured(middle)
        if result is None:
            return _ended(run, last_fit, first_failure)
        if result.fits:
            last_fit = middle
        else:
            first_failure = middle
    gap = first_failure - last_fit
    if last_fit == 0:
        run.stopped = f"not even {first_failure:,} fits"
    else:
        run.stopped = f"bisected to within {gap:,} ({gap / last_fit:.1%} of {last_fit:,})"
    return _ended(run, last_fit, first_failure)


def _ended(run: Search, last_fit: int, first_failure: int | None) -> Search:
    run.largest = last_fit or None
    run.first_failure = first_failure
    return run
