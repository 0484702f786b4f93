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
- The fit is pure Python: for a fixed k the best a and b are a weighted least-squares line, so only k is
  searched (a grid, then golden-section search). `show` draws these fits, and scipy's optimiser would cost it
  a fifth of a second to import; tests/test_fit.py holds the result to scipy's curve_fit.

Fitting three parameters needs at least three distinct lengths and four points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvbench.core.distributions import t_quantile
from kvbench.core.errors import KvbenchError
from kvbench.core.stats import welch_df
from kvbench.model.modes import CACHED, UNCACHED

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


def _line(lengths: Sequence[float], latencies: Sequence[float], k: float) -> tuple[float, float, float]:
    """For a fixed k the model is linear in a and b: the a and b >= 0 that minimise the relative residuals
    sum(((a + b n**k - latency) / latency)**2), and that sum, by weighted least squares."""
    weights = [1.0 / latency**2 for latency in latencies]
    powers = [n**k for n in lengths]
    s = math.fsum(weights)
    sx = math.fsum(w * x for w, x in zip(weights, powers))
    sy = math.fsum(w * y for w, y in zip(weights, latencies))
    sxx = math.fsum(w * x * x for w, x in zip(weights, powers))
    sxy = math.fsum(w * x * y for w, x, y in zip(weights, powers, latencies))
    determinant = s * sxx - sx * sx
    b = (s * sxy - sx * sy) / determinant if determinant > 1e-12 * s * sxx else 0.0
    if b < 0:  # bounded at 0: latency does not fall with length
        b = 0.0
    a = (sy - b * sx) / s
    error = math.fsum(((a + b * x - y) / y) ** 2 for x, y in zip(powers, latencies))
    return a, b, error


def _best_exponent(lengths: Sequence[float], latencies: Sequence[float]) -> tuple[float, float, float] | None:
    """(a, b, k) of the least relative residuals, k in [0, MAX_EXPONENT]: a grid of k for the best start, so
    that the search cannot wander off from a poor guess, then golden-section search between its neighbours
    (the residual of the best a and b is smooth in k). None where no k gives latency rising with length."""
    grid = [0.25 + i * (MAX_EXPONENT - 0.5) / 38 for i in range(39)]
    fitted = [(k, *_line(lengths, latencies, k)) for k in grid]
    rising = [(error, index) for index, (_, _, b, error) in enumerate(fitted) if b > 0]
    if not rising:
        return None
    _, best = min(rising)
    low = grid[best - 1] if best > 0 else 0.0
    high = grid[best + 1] if best < len(grid) - 1 else MAX_EXPONENT
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    inner_low, inner_high = high - ratio * (high - low), low + ratio * (high - low)
    error_low, error_high = _line(lengths, latencies, inner_low)[2], _line(lengths, latencies, inner_high)[2]
    while high - low > 1e-12 * max(1.0, high):
        if error_low <= error_high:
            high, inner_high, error_high = inner_high, inner_low, error_low
            inner_low = high - ratio * (high - low)
            error_low = _line(lengths, latencies, inner_low)[2]
        else:
            low, inner_low, error_low = inner_low, inner_high, error_high
            inner_high = low + ratio * (high - low)
            error_high = _line(lengths, latencies, inner_high)[2]
    k = (low + high) / 2
    a, b, _ = _line(lengths, latencies, k)
    return a, b, k


def _exponent_variance(lengths: Sequence[float], latencies: Sequence[float], a: float, b: float, k: float) -> float | None:
    """The variance of k: the residual variance over what the k direction of the relative residuals' Jacobian
    keeps once the a and b directions are taken out of it (the covariance's k diagonal). None where the
    fit cannot estimate k at all: latency that does not depend on length leaves k free."""
    rows = [(1.0 / y, n**k / y, b * n**k * math.log(n) / y) for n, y in zip(lengths, latencies)]
    ja = [row[0] for row in rows]
    jb = [row[1] for row in rows]
    jk = [row[2] for row in rows]

    def dot(u: Sequence[float], v: Sequence[float]) -> float:
        return math.fsum(x * y for x, y in zip(u, v))

    aa, ab, bb, ak, bk, kk = dot(ja, ja), dot(ja, jb), dot(jb, jb), dot(ja, jk), dot(jb, jk), dot(jk, jk)
    determinant = aa * bb - ab * ab
    if determinant > 1e-12 * aa * bb:
        kept = kk - (bb * ak * ak - 2 * ab * ak * bk + aa * bk * bk) / determinant
    else:  # a and b along one direction (k = 0): take out that one
        kept = kk - ak * ak / aa
    if not kept > 1e-12 * kk:
        return None
    residuals = math.fsum(((a + b * n**k - y) / y) ** 2 for n, y in zip(lengths, latencies))
    return residuals / (len(lengths) - 3) / kept


def fit_latency(points: Sequence[tuple[float, float]], mode: str = "") -> PowerFit:
    """Fit a + b n**k to (new tokens, latency in seconds) points, one per run."""
    if any(latency <= 0 or not math.isfinite(latency) for _, latency in points):
        raise ValueError("latencies must be positive and finite")
    lengths = [float(n) for n, _ in points]
    latencies = [float(latency) for _, latency in points]
    distinct = len(set(lengths))
    if distinct < MIN_LENGTHS or len(points) < MIN_POINTS:
        raise KvbenchError(
            f"fitting latency against length{f' ({mode})' if mode else ''} needs at least {MIN_LENGTHS} lengths"
            f" and {MIN_POINTS} runs, not {distinct} and {len(points)}; sweep more max_new_tokens values"
        )
    best = _best_exponent(lengths, latencies)
    stderr = low = high = None
    if best is None:  # latency falls, or stays, as length grows: no exponent to estimate
        a, b, k = _line(lengths, latencies, 1.0)[0], 0.0, 1.0
    else:
        a, b, k = best
        variance = _exponent_variance(lengths, latencies, a, b, k)
        # A variance of 0 is not certainty: the fit could not estimate the exponent at all.
        if variance is not None and math.isfinite(variance) and variance > 0:
            stderr = math.sqrt(variance)
            t = t_quantile(0.975, len(points) - 3)
            low, high = k - t * stderr, k + t * stderr
    residuals = [(latency - (a + b * n**k)) / latency for n, latency in zip(lengths, latencies)]
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
        min_new_tokens=int(min(lengths)),
        max_new_tokens=int(max(lengths)),
        rms_relative_residual=math.sqrt(math.fsum(r * r for r in residuals) / len(residuals)),
    )


@dataclass(frozen=True)
class LengthExtrapolation:
    """Both modes' fits, where the cache starts to pay, and the speedup predicted beyond the lengths run."""

    cached: PowerFit
    uncached: PowerFit
    longest_new_tokens: int
    crossover_new_tokens: float | None  # below this length the cached mode is not faster
    crossover_reason: str  # what the crossover means, or why there is none
    # Predicted uncached / cached latency at 2 x and 10 x longest_new_tokens; None where the fits cannot
    # support a prediction (the exponents' difference is not known to be positive), and speedup_reason
    # says why. A speedup beyond the lengths run rests on that difference: with an interval reaching
    # below 0 the same data allow a speedup that shrinks as much as one that explodes.
    speedup_at_2x: float | None
    speedup_at_10x: float | None
    # Uncached exponent minus cached, with its 95% interval (None where a fit has no uncertainty), and
    # what it says: whether uncached latency grows faster with length, or that these lengths cannot tell.
    exponent_gap: float = math.nan
    exponent_gap_ci95_low: float | None = None
    exponent_gap_ci95_high: float | None = None
    exponent_gap_reason: str = ""
    speedup_reason: str | None = None


def exponent_gap(cached: PowerFit, uncached: PowerFit) -> tuple[float, float | None, float | None, str]:
    """How much faster uncached latency grows with length than cached: the difference of the fitted
    exponents, with a 95% interval from their standard errors (Welch–Satterthwaite degrees of freedom,
    each fit having points - 3), and the verdict that interval supports."""
    gap = uncached.exponent - cached.exponent
    if cached.exponent_stderr is None or uncached.exponent_stderr is None:
        return gap, None, None, f"exponents differ by {gap:+.2f}; a fit's uncertainty could not be estimated"
    se2_cached, se2_uncached = cached.exponent_stderr**2, uncached.exponent_stderr**2
    if se2_cached + se2_uncached == 0:
        low = high = gap
    else:
        df = welch_df(se2_cached, max(cached.points - 3, 1), se2_uncached, max(uncached.points - 3, 1))
        half = t_quantile(0.975, df) * math.sqrt(se2_cached + se2_uncached)
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

    def gain(n: float) -> float:  # positive where the cache pays
        return uncached.predict_s(n) - cached.predict_s(n)

    # 512 lengths spaced evenly on a log scale (whole duplicates dropped where up_to is small).
    grid = sorted({math.exp(math.log(up_to) * i / 511) for i in range(512)} | {1.0, float(up_to)})
    gains = [gain(n) for n in grid]
    if all(g > 0 for g in gains):
        return None, f"the cache pays at every length from 1 to {up_to:g} new tokens (the fits never cross)"
    if all(g <= 0 for g in gains):
        return None, f"the cache does not pay at any length from 1 to {up_to:g} new tokens"
    # The last change from "does not pay" to "pays": beyond it the cache pays up to `up_to`.
    last = max(index for index, g in enumerate(gains) if g <= 0)
    if last == len(grid) - 1:
        return None, (
            f"the fitted cached curve overtakes the uncached one again by {up_to:g} new tokens, which the cost"
            " of the two modes does not explain: check the sweep for noisy lengths"
        )
    low, high = grid[last], grid[last + 1]  # gain(low) <= 0 < gain(high): bisect to the crossing
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if gain(middle) <= 0 else (low, middle)
    root = (low + high) / 2
    measured = cached.min_new_tokens <= root <= cached.max_new_tokens
    where = "inside" if measured else "outside (extrapolated)"
    return root, f"below {root:.1f} new tokens the cache does not pay; {where} the lengths run"


def extrapolate(
    cached_points: Sequence[tuple[float, float]], uncached_points: Sequence[tuple[float, float]]
) -> LengthExtrapolation:
    """Fit each mode's (new tokens, latency s) runs, find the crossover, predict speedups at 2x and 10x."""
    cached = fit_latency(cached_points, CACHED.name)
    uncached = fit_latency(uncached_points, UNCACHED.name)
    longest = max(cached.max_new_tokens, uncached.max_new_tokens)
    point, reason = crossover(cached, uncached, up_to=EXTRAPOLATION_FACTORS[-1] * longest)
    gap, gap_low, gap_high, gap_reason = exponent_gap(cached, uncached)
    at_2x: float | None = None
    at_10x: float | None = None
    speedup_reason: str | None = None
    if gap_low is not None and gap_low > 0:
        at_2x, at_10x = (uncached.predict_s(f * longest) / cached.predict_s(f * longest) for f in EXTRAPOLATION_FACTORS)
    else:
        speedup_reason = (
            "no speedup is extrapolated beyond the lengths run: it rests on how much faster uncached latency"
            " grows, which these fits do not show"
        )
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
        speedup_reason=speedup_reason,
    )
