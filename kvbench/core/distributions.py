"""Student's t distribution and the normal quantile, in pure Python: what `compare`, `show` and the gate need
of them, without the half second scipy.special takes to import on every call of a command that must start
fast. tests/test_distributions.py holds them to scipy's values over the range kvbench uses.

Up to LARGE_DF degrees of freedom, the t distribution's tail is the regularized incomplete beta function,
evaluated by its continued fraction (Lentz's method, as in Numerical Recipes §6.4), and its quantile is found
by Newton's method on the tail, kept inside a bracket that bisection narrows whenever a step would leave it.
Beyond, where the continued fraction would need thousands of steps, the quantile is the normal one corrected
by the Cornish-Fisher expansion in 1 / df to its fourth term (Abramowitz and Stegun 26.7.5: its next term is
below 1e-18 there), and the distribution function inverts that expansion.
"""

from __future__ import annotations

import math

LARGE_DF = 1e5
_EPSILON = 1e-16
_TINY = 1e-300
_SQRT2 = math.sqrt(2.0)


def normal_cdf(z: float) -> float:
    # erfc keeps a tail's precision where 1 + erf would round it away.
    return 0.5 * math.erfc(-z / _SQRT2)


def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p for the standard normal."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def _stirling_tail(x: float) -> float:
    """lgamma(x) - ((x - 1/2) log x - x + log(2 pi) / 2), for x >= 100, where four terms reach 1e-17."""
    x2 = x * x
    return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x


def _lgamma_ratio(a: float, b: float) -> float:
    """lgamma(a + b) - lgamma(a) for a >= b > 0, without the cancellation of two large lgammas."""
    if a < 100.0:
        return math.lgamma(a + b) - math.lgamma(a)
    return (a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b + _stirling_tail(a + b) - _stirling_tail(a)


def _log_beta(a: float, b: float) -> float:
    small, large = min(a, b), max(a, b)
    return math.lgamma(small) - _lgamma_ratio(large, small)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function at x < (a + 1) / (a + b + 2), where it
    converges quickly."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPSILON:
            break
    return result


def _regularized_beta(a: float, b: float, x: float, y: float, log_x: float, log_y: float) -> float:
    """I_x(a, b) with y = 1 - x and both logarithms given as precisely as the caller knows them."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(a * log_x + b * log_y - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, y) / b


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    y = 1.0 - x
    return _regularized_beta(a, b, x, y, math.log(x) if x > 0 else -math.inf, math.log(y) if y > 0 else -math.inf)


def _cornish_fisher(z: float, df: float) -> float:
    """The t quantile at the normal quantile z, df >= LARGE_DF (Abramowitz and Stegun 26.7.5)."""
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df


def _upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: I_x(df / 2, 1 / 2) / 2 with x = df / (df + t^2) = 1 / (1 + r), r = t^2 / df,
    whose logarithms are written with log1p so that they keep their precision where r is tiny."""
    if df >= LARGE_DF:
        # The z whose Cornish-Fisher quantile is t, by Newton's method (the expansion rises steeply in z).
        z = t
        for _ in range(50):
            step = (_cornish_fisher(z, df) - t) / ((_cornish_fisher(z + 1e-6, df) - _cornish_fisher(z - 1e-6, df)) / 2e-6)
            z -= step
            if abs(step) <= _EPSILON * max(abs(z), 1.0):
                break
        return normal_cdf(-z)
    r = t * t / df
    log_x = -math.log1p(r)
    log_y = math.log(r) + log_x if r > 0 else -math.inf
    return 0.5 * _regularized_beta(0.5 * df, 0.5, 1.0 / (1.0 + r), r / (1.0 + r), log_x, log_y)


def _check(df: float) -> None:
    if math.isnan(df) or df <= 0:
        raise ValueError(f"the t distribution needs positive degrees of freedom, not {df}")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (any positive real; infinite: the normal)."""
    _check(df)
    if math.isnan(t):
        raise ValueError("t_cdf of NaN")
    if math.isinf(df):
        return normal_cdf(t)
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = _upper_tail(abs(t), df)
    return 1.0 - tail if t > 0 else tail


def _t_pdf(t: float, df: float) -> float:
    half = 0.5 * df
    log_density = _lgamma_ratio(half, 0.5) - 0.5 * math.log(df * math.pi) - (half + 0.5) * math.log1p(t * t / df)
    return math.exp(log_density)


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 and positive `df` (infinite: the normal quantile)."""
    _check(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, not {p}")
    if p == 0.5:
        return 0.0
    # Solved on the tail beyond |t|, P(T > |t|) = q, given exactly for p below one half (1 - (1 - p) would
    # lose digits of a tiny p) and as 1 - p above it.
    sign, q = (-1.0, p) if p < 0.5 else (1.0, 1.0 - p)
    z = abs(normal_quantile(p))
    if math.isinf(df):
        return sign * z
    if df >= LARGE_DF:
        return sign * _cornish_fisher(z, df)
    # From the expansion's guess (a start, however poor at few degrees of freedom), the bracket widens until
    # it holds the answer.
    t = max(_cornish_fisher(z, df), z, 1e-3)
    low, high = 0.0, t
    while _upper_tail(high, df) > q:
        low, high = high, high * 2.0
        if high > 1e300:
            return sign * math.inf
    for _ in range(300):
        error = _upper_tail(t, df) - q  # above 0: t is too small
        if error == 0.0:
            return sign * t
        low, high = (t, high) if error > 0 else (low, t)
        density = _t_pdf(t, df)
        step = t + error / density if density > 0 else math.nan
        # Newton where it stays inside the bracket, bisection where it would leave it.
        following = step if low < step < high else 0.5 * (low + high)
        if abs(following - t) <= 4 * _EPSILON * abs(t) or high - low <= 4 * _EPSILON * high:
            return sign * following
        t = following
    return sign * t
