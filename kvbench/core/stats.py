"""Pure statistics on latency samples: summaries, per-token gaps, outliers, noise, and the one log-ratio
test behind every interval and verdict that compare prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from kvbench.core.distributions import normal_quantile, t_cdf, t_quantile


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for a single value
    min: float
    median: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("cannot summarize no values")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Summary(
        n=len(values),
        mean=statistics.fmean(values),
        std=std,
        min=min(values),
        median=statistics.median(values),
        max=max(values),
    )


def relative_standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean over the mean; None until there are two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / math.sqrt(len(values)) / mean if mean else None


def rse_upper_bound(values: Sequence[float], confidence: float) -> float | None:
    """A one-sided upper confidence bound on the relative standard error of the mean: the sample standard
    deviation scaled by sqrt((n - 1) / q), q the chi-squared (n - 1 df) quantile at 1 - confidence, as
    for normal runs. None until there are two values."""
    from scipy.special import chdtri

    rse = relative_standard_error(values)
    if rse is None:
        return None
    df = len(values) - 1
    return rse * math.sqrt(df / float(chdtri(df, confidence)))


def precise_enough(samples: Mapping[str, Sequence[float]], target: float, confidence: float) -> tuple[bool, float | None]:
    """Whether every mode's mean is known within `target` RSE (its upper bound at `confidence`), and the
    worst bound."""
    bounds = [rse_upper_bound(values, confidence) for values in samples.values()]
    known = [bound for bound in bounds if bound is not None]
    if not bounds or len(known) < len(bounds):
        return False, None
    worst = max(known)
    return worst <= target, worst


def token_gaps_s(token_times_s: Sequence[float]) -> list[float]:
    """The time each new token took: the first from the call's start (the prefill), then each decode step."""
    return [b - a for a, b in zip([0.0, *token_times_s], token_times_s)]


def median_gap_ms(token_times_s: Sequence[float], first: float, last: float) -> float | None:
    """Median gap between consecutive tokens (the prefill excluded) over a fraction [first, last) of the
    generation."""
    gaps = token_gaps_s(token_times_s)[1:]
    if len(gaps) < 2:
        return None
    start, stop = int(len(gaps) * first), max(int(len(gaps) * last), int(len(gaps) * first) + 1)
    return statistics.median(gaps[start:stop]) * 1000


def per_token_curve_ms(token_times: Sequence[Sequence[float]]) -> list[float]:
    """Median, across runs, of the time each new token took (ms), by position; position 0 is the prefill."""
    gaps_by_run = [token_gaps_s(times) for times in token_times if times]
    if not gaps_by_run:
        return []
    length = min(len(gaps) for gaps in gaps_by_run)
    return [statistics.median(gaps[i] for gaps in gaps_by_run) * 1000 for i in range(length)]


# Outliers: a modified z-score, 0.6745 (x - median) / MAD, above OUTLIER_Z, from OUTLIER_MIN_N runs on.
# Iglewicz and Hoaglin's usual cut-off of 3.5 is meant for one value; here every run of a cell is tested
# and the MAD of a handful of runs is itself noisy, so 3.5 flagged clean normal data in 21% of cells at
# n=5 and 13% at n=10. Simulated on 400,000 clean normal cells, a cut-off of 6 flags 4.1% of cells at n=6,
# 4.7% at n=7, 2.6% at n=8, 1.8% at n=10 (lognormal with a CV of 20%: 4.8%, 5.6%, 3.5%, 2.8%); at n=5 it
# would still flag 8%, so five runs or fewer are not judged at all.
OUTLIER_Z = 6.0
OUTLIER_MIN_N = 6
# The least spread the runs other than one are taken to have, as a share of the median, when they are all
# equal (MAD = 0): a clock tick is not a stall.
TICK_FLOOR = 0.01
# The finest step the values' own digits are taken to show, at most this share of the median: a clock
# whose tick is a tenth of a run or more could not have timed these runs at all.
COARSEST_TICK = 0.1


def written_step(values: Sequence[float]) -> float:
    """The coarsest power of ten every value is a whole multiple of (to a float's precision): the step
    the values were written or timed to, 1 for [10, 11], 0.001 for [0.010, 0.011]; 0 when there is none
    down to 1e-12 of the largest value (a float's own rounding would hide a finer one)."""
    largest = max((abs(v) for v in values), default=0.0)
    if largest == 0:
        return 0.0
    exponent = math.floor(math.log10(largest))
    for power in range(exponent, exponent - 13, -1):
        step = 10.0**power
        if all(math.isclose(v / step, round(v / step), rel_tol=1e-13, abs_tol=1e-9) for v in values):
            return step
    return 0.0


def outlier_indices(values: Sequence[float], threshold: float = OUTLIER_Z) -> list[int]:
    """Indices of values whose modified z-score, 0.6745 |x - median| / MAD, exceeds the threshold.
    Median-based, so one wild value (a first-run compile, a stall) cannot hide itself by inflating the
    spread. None below OUTLIER_MIN_N values. When more than half the values are equal (MAD = 0, a coarse
    clock), each value is measured against the standard deviation of the others instead, at least
    TICK_FLOOR of the median and at least the spread of rounding to the step the values are written to
    (written_step, up to COARSEST_TICK of the median): [1, 1, 1, 1, 1, 1, 9] flags the 9,
    [1, 1, 1, 1, 2, 2, 2] flags nothing, and neither does one run a clock tick off,
    [1, 1, 1, 1, 1, 1, 1.001] or [10, 10, 10, 10, 10, 10, 11]."""
    values = list(values)
    if len(values) < OUTLIER_MIN_N:
        return []
    median = statistics.median(values)
    deviations = [abs(v - median) for v in values]
    mad = statistics.median(deviations)
    if mad > 0:
        return [i for i, d in enumerate(deviations) if 0.6745 * d / mad > threshold]
    flagged = []
    # Runs that are all equal but one show a coarse clock, and the odd one out is as often one tick
    # away as a stall: the spread of the others is floored at TICK_FLOOR of the median and at the spread
    # that rounding to the values' step gives (a step q: off by up to q/2, a standard deviation of
    # q/sqrt(12)), so one step is 3.5 of those and never flagged; two steps (6.9) are.
    step = min(written_step(values), COARSEST_TICK * abs(median))
    floor = max(TICK_FLOOR * abs(median), step / math.sqrt(12))
    for i, deviation in enumerate(deviations):
        if deviation == 0:
            continue
        spread = max(statistics.stdev(values[:i] + values[i + 1 :]), floor)
        if spread == 0 or deviation / spread > threshold:
            flagged.append(i)
    return flagged


# Above this coefficient of variation a mode's runs are too noisy to trust. On an idle machine kvbench's
# runs vary by 1-5% (the reference T4 run: 2.3% cached, 3.3% uncached); at 10% the 95% interval of a
# mean of 10 runs is already about ±7%, so smaller differences cannot be seen, and spreads beyond that
# come from a busy machine (a CV of 43% was seen with other jobs running), not from generate().
NOISY_CV = 0.10


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation over the mean; None for fewer than two values or a zero mean."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else None


def noise_warning(values: Sequence[float], limit: float = NOISY_CV) -> str | None:
    """Why these runs are too noisy to trust, or None when they are not (or too few to tell)."""
    cv = coefficient_of_variation(values)
    if cv is None or cv <= limit:
        return None
    return (
        f"runs vary by {cv:.0%} of their mean (above {limit:.0%}): too noisy to trust;"
        " stop other work on the machine or add runs"
    )


@dataclass(frozen=True)
class RatioTest:
    """mean(a) / mean(b) with a confidence interval and a two-sided p-value, both from one t statistic:
    t = log(mean a / mean b) / se, with se from the delta method, var(log mean) ~ s^2 / (n mean^2), and
    Welch-Satterthwaite degrees of freedom on the log scale. The interval excludes 1 exactly when
    p < 1 - confidence, and the verdict is read from the interval, so the two cannot disagree."""

    ratio: float
    low: float | None  # None when either side has fewer than two values
    high: float | None
    p_value: float | None
    confidence: float
    log_se: float | None = None
    df: float | None = None
    # Every run on both sides took the same time: a coarse clock, or copied runs. The clock's tick still
    # gives such a test an interval, but a comparison of two sides without spread is not judged.
    without_spread: bool = False

    @property
    def judged(self) -> bool:
        return self.low is not None

    def significant(self) -> bool:
        """The interval lies wholly above or wholly below 1."""
        return self.low is not None and self.high is not None and (self.low > 1 or self.high < 1)

    def direction(self) -> str:
        """ "slower" or "faster" (a above or below b) when significant, else "no significant change"."""
        if not self.significant():
            return "no significant change"
        return "slower" if self.low is not None and self.low > 1 else "faster"

    def at(self, confidence: float) -> RatioTest:
        """The same test with its interval at another confidence (a wider one for a family of tests)."""
        if self.log_se is None or self.df is None:
            return replace(self, confidence=confidence)
        low, high = _interval(self.ratio, self.log_se, self.df, confidence)
        return replace(self, low=low, high=high, confidence=confidence)


def welch_df(se2_a: float, df_a: float, se2_b: float, df_b: float) -> float:
    """Welch-Satterthwaite degrees of freedom from each side's squared standard error and its own degrees
    of freedom (n - 1 for a mean, points - parameters for a fit)."""
    denominator = se2_a**2 / df_a + se2_b**2 / df_b
    return (se2_a + se2_b) ** 2 / denominator if denominator > 0 else float("inf")


def _interval(ratio: float, log_se: float, df: float, confidence: float) -> tuple[float, float]:
    if log_se == 0:
        return ratio, ratio
    half_width = t_quantile(0.5 + confidence / 2, df) * log_se
    return ratio * math.exp(-half_width), ratio * math.exp(half_width)


# The least any time is known to, in seconds: token times are stored rounded to the microsecond (and
# with them the time to first token), and perf_counter's own resolution is finer (1 ns on Linux). Runs
# that all took the same time have a spread below one tick, not none: each side's standard deviation is
# taken as at least this, so no side is ever taken as certain.
CLOCK_TICK_S = 1e-6


def compare_means(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, tick: float = CLOCK_TICK_S) -> RatioTest:
    """The ratio of means a / b, its interval and p-value from the log-scale t statistic (see RatioTest),
    each side's standard deviation at least `tick` (the clock's: values in seconds). Values must be finite
    and positive."""
    if any(not math.isfinite(v) or v <= 0 for v in (*a, *b)):
        raise ValueError("compare_means needs finite, positive values")
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    ratio = mean_a / mean_b
    if len(a) < 2 or len(b) < 2:
        return RatioTest(ratio, None, None, None, confidence)
    variance_a, variance_b = statistics.variance(a), statistics.variance(b)
    se2_a = max(variance_a, tick**2) / (len(a) * mean_a**2)
    se2_b = max(variance_b, tick**2) / (len(b) * mean_b**2)
    log_se = math.sqrt(se2_a + se2_b)
    df = welch_df(se2_a, len(a) - 1, se2_b, len(b) - 1)
    if log_se == 0:
        p_value = 1.0 if ratio == 1 else 0.0
    else:
        p_value = 2 * t_cdf(-abs(math.log(ratio)) / log_se, df)
    low, high = _interval(ratio, log_se, df, confidence)
    without_spread = variance_a == 0 and variance_b == 0
    return RatioTest(ratio, low, high, p_value, confidence, log_se, df, without_spread)


def runs_to_settle(test: RatioTest, threshold_ratio: float, power: float = 0.8) -> float | None:
    """How many times the present runs would likely put the interval wholly on one side of
    `threshold_ratio`, at the test's own confidence, if the estimate and the noise stayed as observed:
    the standard error shrinks as 1 / sqrt(runs), so k times the runs on both sides divides it by
    sqrt(k). "Likely" is `power`: the usual sample-size rule, (t + z_power) * se / sqrt(k) = distance,
    with the t quantile at k times the degrees of freedom. None when the test has no spread or the
    estimate sits on the threshold, where no number of runs is likely to settle it."""
    log_se, df = test.log_se, test.df
    if not log_se or df is None:
        return None
    distance = abs(math.log(test.ratio) - math.log(threshold_ratio))
    if distance == 0:
        return None
    z_power = normal_quantile(power)

    def needed(factor: float) -> float:
        t = t_quantile(0.5 + test.confidence / 2, factor * df)
        return ((t + z_power) * log_se / distance) ** 2

    # needed() falls as the factor grows (more degrees of freedom, a smaller t): bisect for the factor
    # that is its own requirement, on a log scale.
    low, high = 1e-6, 1e9
    if needed(high) > high:
        return math.inf
    # 80 halvings shrink the bracket to neighbouring floats; the rest would repeat them.
    for _ in range(80):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if needed(middle) > middle else (low, middle)
    return high


def resolvable_change(test: RatioTest, power: float = 0.8) -> float | None:
    """The smallest change, as a fraction of the baseline, that these runs would likely tell from no change
    at the test's confidence, at the noise seen: (t + z_power) * se on the log scale. A gate whose
    threshold is below it likely ends inconclusive even on unchanged code. None without spread."""
    if not test.log_se or test.df is None:
        return None
    t = t_quantile(0.5 + test.confidence / 2, test.df)
    return math.expm1((t + normal_quantile(power)) * test.log_se)


def cached_speedup(uncached: Sequence[float], cached: Sequence[float], confidence: float = 0.95) -> RatioTest:
    """Uncached mean latency over cached mean latency (above 1: the cache is faster), with its interval."""
    return compare_means(uncached, cached, confidence)


def speedup_words(test: RatioTest) -> str:
    """The speedup in words a reader cannot misread: "cached is 2.77× faster than uncached", and when the
    cache is slower, "cached is 2.22× slower than uncached" (never "0.45× faster"), with the interval in
    the same direction, and a note when the interval includes no difference."""
    faster = test.ratio >= 1
    factor = test.ratio if faster else 1 / test.ratio
    text = f"cached is {factor:.2f}× {'faster' if faster else 'slower'} than uncached"
    if test.low is None or test.high is None:
        return text + " (too few runs for an interval)"
    if test.without_spread:
        return text + " (every run of each mode took the same time: a copied or coarsely timed run, no interval)"
    low, high = (test.low, test.high) if faster else (1 / test.high, 1 / test.low)
    within = "" if test.significant() else ", within noise"
    shown_low, shown_high = outward(low, high)
    return text + f" ({test.confidence:.0%} interval {shown_low}×–{shown_high}×{within})"


def speedup_brief(test: RatioTest) -> str:
    """The speedup as a one-line summary gives it: "cached 4.70× faster [4.51×, 4.91×]", slower as
    speedup_words says it, the interval in the same direction."""
    faster = test.ratio >= 1
    factor = test.ratio if faster else 1 / test.ratio
    text = f"cached {factor:.2f}× {'faster' if faster else 'slower'}"
    if test.low is None or test.high is None or test.without_spread:
        return text + " (no interval)"
    low, high = (test.low, test.high) if faster else (1 / test.high, 1 / test.low)
    shown_low, shown_high = outward(low, high)
    return text + f" [{shown_low}×, {shown_high}×]" + ("" if test.significant() else " within noise")


def outward(low: float, high: float, decimals: int = 2) -> tuple[str, str]:
    """An interval's bounds as printed, rounded outward (the lower down, the upper up) so the printed
    interval holds the computed one: a narrow one around 2.83 is 2.82–2.84, never 2.83–2.83."""
    scale = 10**decimals
    # Rounded to 9 places first, so a float's last bit (2.83 * 100 = 282.99999999999997) is no step.
    floor, ceiling = math.floor(round(low * scale, 9)) / scale, math.ceil(round(high * scale, 9)) / scale
    return f"{floor:.{decimals}f}", f"{ceiling:.{decimals}f}"


def process_aware_samples(latencies: Sequence[float], process_ids: Sequence[object]) -> list[float]:
    """The samples a test of means should use when runs come from several processes: with 3 or more
    processes, each process's mean latency (first-seen order), so the standard error includes the drift
    between processes that the runs within one process cannot show; otherwise the latencies themselves.
    Runs of one process are not independent samples of the next process's behaviour (pyperf averages
    per worker process for the same reason)."""
    if len(latencies) != len(process_ids):
        raise ValueError("one process id per latency is needed")
    by_process: dict[object, list[float]] = {}
    for latency, process in zip(latencies, process_ids):
        by_process.setdefault(process, []).append(latency)
    if len(by_process) < 3:
        return list(latencies)
    return [statistics.fmean(values) for values in by_process.values()]
