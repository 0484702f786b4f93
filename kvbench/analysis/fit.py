"""Latency against generated length per mode, fitted and extrapolated: exponents, the crossover, future speedups.

The model is latency(n) = a + b * n**k for n new tokens, fitted to every run (not only the means, so that
repeats give the fit its residual degrees of freedom):

- a is the fixed cost of a call (prefill, set-up). A pure power law on log-log axes (a = 0) would push that
  cost into the exponent and report a cached generation as sub-linear at short lengths.
- k is the number to read: the per-token work of a cached step is nearly constant, so k is near 1; an
  uncached step recomputes the whole sequence, so k is near 2 (higher still where attention's n**2 term per
  step dominates). One exponent reads more plainly than the coefficients of a polynomial, whose n and n**2
  terms trade off against each other when lengths are few.
- Residuals are relative (each point weighted by 1 / its latency): run-to-run noise grows with the latency,
  and unweighted least squares would let the longest length alone decide the fit.
- The exponent's uncertainty is its standard error from the fit's covariance (scaled by the residual
  variance) and a 95% interval from Student's t with points - 3 degrees of freedom.

Fitting three parameters needs at least three distinct lengths and four points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvbench.core.errors import KvbenchError
from kvbench.core.stats import welch_df

MIN_LENGTHS = 3
MIN_POINTS = 4
MAX_EXPONENT = 5.0
EXTRAPOLATION_FACTORS = (2, 10)


@dataclass(frozen=True)
class PowerFit:
    """latency_s(n) = intercept_s + scale_s * n ** exponent, fitted to one mode's runs."""

    mode: str
    intercept_s: float
    scale_s: float
    exponent: float
    exponent_stderr: float | None  # None when the covariance cannot be estimated (a degenerate fit)
    exponent_ci95_low: float | None
    exponent_ci95_high: float | None
    points: int
    lengths: int
    min_new_tokens: int
    max_new_tokens: int
    rms_relative_residual: float  # root mean square of (measured - fitted) / measured

    def predict_s(self, new_tokens: float) -> float:
        return self.intercept_s + self.scale_s * new_tokens**self.exponent


def _model(n, a, b, k):
    return a + b * n**k


def _start(lengths, latencies):
    """For a fixed k the model is linear in a and b: solve those by least squares over a grid of k and
    start the non-linear fit from the best, so it cannot wander off from a poor guess."""
    import numpy as np

    best = None
    weights = 1 / latencies
    for k in np.linspace(0.25, MAX_EXPONENT - 0.25, 39):
        design = np.column_stack([np.ones_like(lengths), lengths**k]) * weights[:, None]
        (a, b), *_ = np.linalg.lstsq(design, latencies * weights, rcond=None)
        if b <= 0:
            continue
        error = float(np.sum(((a + b * lengths**k - latencies) * weights) ** 2))
        if best is None or error < best[0]:
            best = (error, a, b, k)
    if best is None:
        return 0.0, float(latencies.max() / lengths.max()), 1.0
    return best[1:]


def fit_latency(points: Sequence[tuple[float, float]], mode: str = "") -> PowerFit:
    """Fit a + b n**k to (new tokens, latency in seconds) points, one per run."""
    import numpy as np
    from scipy.optimize import curve_fit
    from scipy.special import stdtrit

    if any(latency <= 0 or not math.isfinite(latency) for _, latency in points):
        raise ValueError("latencies must be positive and finite")
    lengths = np.array([float(n) for n, _ in points])
    latencies = np.array([float(latency) for _, latency in points])
    distinct = len(set(lengths.tolist()))
    if distinct < MIN_LENGTHS or len(points) < MIN_POINTS:
        raise KvbenchError(
            f"fitting latency against length{f' ({mode})' if mode else ''} needs at least {MIN_LENGTHS} lengths"
            f" and {MIN_POINTS} runs, not {distinct} and {len(points)}; sweep more max_new_tokens values"
        )
    start = _start(lengths, latencies)
    try:
        (a, b, k), covariance = curve_fit(
            _model,
            lengths,
            latencies,
            p0=start,
            sigma=latencies,
            bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, MAX_EXPONENT]),
            maxfev=20_000,
        )
    except RuntimeError:  # did not converge: keep the grid's answer, say nothing of its uncertainty
        (a, b, k), covariance = start, None
    stderr = low = high = None
    # A variance of exactly 0 is not certainty: the fit could not estimate the exponent at all (latency that
    # does not depend on length leaves k free), and the pseudo-inverse gives such a direction no variance.
    if covariance is not None and np.isfinite(covariance[2, 2]) and covariance[2, 2] > 0:
        stderr = float(math.sqrt(covariance[2, 2]))
        t = float(stdtrit(len(points) - 3, 0.975))
        low, high = float(k) - t * stderr, float(k) + t * stderr
    residuals = (latencies - _model(lengths, a, b, k)) / latencies
    return PowerFit(
        mode=mode,
        intercept_s=float(a),
        scale_s=float(b),
        exponent=float(k),
        exponent_stderr=stderr,
        exponent_ci95_low=low,
        exponent_ci95_high=high,
        points=len(points),
        lengths=distinct,
        min_new_tokens=int(lengths.min()),
        max_new_tokens=int(lengths.max()),
        rms_relative_residual=float(np.sqrt(np.mean(residuals**2))),
    )


@dataclass(frozen=True)
class LengthExtrapolation:
    """Both modes' fits, where the cache starts to pay, and the speedup predicted beyond the lengths run."""

    cached: PowerFit
    uncached: PowerFit
    longest_new_tokens: int
    crossover_new_tokens: float | None  # below this length the cached mode is not faster
    crossover_reason: str  # what the crossover means, or why there is none
    speedup_at_2x: float  # predicted uncached / cached latency at 2 x longest_new_tokens
    speedup_at_10x: float  # ... and at 10 x
    # Uncached exponent minus cached, with its 95% interval (None where a fit has no uncertainty), and
    # what it says: whether uncached latency grows faster with length, or that these lengths cannot tell.
    exponent_gap: float = math.nan
    exponent_gap_ci95_low: float | None = None
    exponent_gap_ci95_high: float | None = None
    exponent_gap_reason: str = ""


def exponent_gap(cached: PowerFit, uncached: PowerFit) -> tuple[float, float | None, float | None, str]:
    """How much faster uncached latency grows with length than cached: the difference of the fitted
    exponents, with a 95% interval from their standard errors (Welch–Satterthwaite degrees of freedom,
    each fit having points - 3), and the verdict that interval supports."""
    from scipy.special import stdtrit

    gap = uncached.exponent - cached.exponent
    if cached.exponent_stderr is None or uncached.exponent_stderr is None:
        return gap, None, None, f"exponents differ by {gap:+.2f}; a fit's uncertainty could not be estimated"
    se2_cached, se2_uncached = cached.exponent_stderr**2, uncached.exponent_stderr**2
    if se2_cached + se2_uncached == 0:
        low = high = gap
    else:
        df = welch_df(se2_cached, max(cached.points - 3, 1), se2_uncached, max(uncached.points - 3, 1))
        half = float(stdtrit(df, 0.975)) * math.sqrt(se2_cached + se2_uncached)
        low, high = gap - half, gap + half
    shown = f"{gap:+.2f} [{low:+.2f}, {high:+.2f}]"
    if low > 0:
        reason = f"uncached latency grows faster with length than cached: exponents differ by {shown}"
    elif high < 0:
        reason = (
            f"cached latency grows faster with length than uncached ({shown}), which the cost of the two modes"
            " does not explain: check the sweep for noisy lengths"
        )
    else:
        reason = (
            f"these lengths cannot tell the exponents apart ({shown}): sweep longer generations, where an"
            " uncached step's recomputation outweighs the fixed cost of a step (reading the weights, launching"
            " kernels)"
        )
    return gap, low, high, reason


def crossover(cached: PowerFit, uncached: PowerFit, up_to: float) -> tuple[float | None, str]:
    """The length where the fitted curves cross, searched from 1 token to `up_to`: below it the cache
    does not pay. Beyond 10x the lengths run the fits say nothing worth reporting."""
    import numpy as np
    from scipy.optimize import brentq

    def gain(n: float) -> float:  # positive where the cache pays
        return uncached.predict_s(n) - cached.predict_s(n)

    grid = np.unique(np.geomspace(1, up_to, 512))
    gains = np.array([gain(n) for n in grid])
    if np.all(gains > 0):
        return None, f"the cache pays at every length from 1 to {up_to:g} new tokens (the fits never cross)"
    if np.all(gains <= 0):
        return None, f"the cache does not pay at any length from 1 to {up_to:g} new tokens"
    # The last change from "does not pay" to "pays": beyond it the cache pays up to `up_to`.
    last = int(np.nonzero(gains <= 0)[0][-1])
    if last == len(grid) - 1:
        return None, (
            f"the fitted cached curve overtakes the uncached one again by {up_to:g} new tokens, which the cost"
            " of the two modes does not explain: check the sweep for noisy lengths"
        )
    root = float(brentq(gain, grid[last], grid[last + 1]))
    measured = cached.min_new_tokens <= root <= cached.max_new_tokens
    where = "inside" if measured else "outside (extrapolated)"
    return root, f"below {root:.1f} new tokens the cache does not pay; {where} the lengths run"


def extrapolate(
    cached_points: Sequence[tuple[float, float]], uncached_points: Sequence[tuple[float, float]]
) -> LengthExtrapolation:
    """Fit each mode's (new tokens, latency s) runs, find the crossover, predict speedups at 2x and 10x."""
    cached = fit_latency(cached_points, "cached")
    uncached = fit_latency(uncached_points, "uncached")
    longest = max(cached.max_new_tokens, uncached.max_new_tokens)
    at_2x, at_10x = (uncached.predict_s(f * longest) / cached.predict_s(f * longest) for f in EXTRAPOLATION_FACTORS)
    point, reason = crossover(cached, uncached, up_to=EXTRAPOLATION_FACTORS[-1] * longest)
    gap, gap_low, gap_high, gap_reason = exponent_gap(cached, uncached)
    return LengthExtrapolation(
        cached=cached,
        uncached=uncached,
        longest_new_tokens=longest,
        crossover_new_tokens=point,
        crossover_reason=reason,
        speedup_at_2x=at_2x,
        speedup_at_10x=at_10x,
        exponent_gap=gap,
        exponent_gap_ci95_low=gap_low,
        exponent_gap_ci95_high=gap_high,
        exponent_gap_reason=gap_reason,
    )
