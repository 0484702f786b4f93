"""Pure statistics on latency samples: summaries, a mode's aggregation over its runs, per-token gaps,
Welch's t-test, and a confidence interval for a ratio."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from kvbench.results import ModeSummary, RunRecord


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


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_mode(cell: str, mode: str, runs: Sequence[RunRecord]) -> ModeSummary:
    """One mode of one cell over its runs: latency statistics, throughput, token gaps, memory, outliers."""
    from kvbench.memory import MemoryFigures
    from kvbench.results import ModeSummary

    latencies = [run.latency_s for run in runs]
    latency = summarize(latencies)
    ttft = [run.time_to_first_token_s for run in runs if run.time_to_first_token_s is not None]
    memory = MemoryFigures.over_runs(runs)
    return ModeSummary(
        cell=cell,
        mode=mode,
        n=latency.n,
        mean_s=latency.mean,
        std_s=latency.std,
        min_s=latency.min,
        median_s=latency.median,
        max_s=latency.max,
        tokens_per_s=sum(r.new_tokens * r.batch_size for r in runs) / sum(latencies),
        time_to_first_token_s=statistics.fmean(ttft) if ttft else None,
        early_token_ms=_median_or_none([median_gap_ms(r.token_times_s, 0.0, 0.1) for r in runs]),
        late_token_ms=_median_or_none([median_gap_ms(r.token_times_s, 0.9, 1.0) for r in runs]),
        outlier_runs=[runs[i].run for i in outlier_indices(latencies)],
        **{name: getattr(memory, name) for name in MemoryFigures.names()},
    )


# Iglewicz and Hoaglin's cut-off for the modified z-score: beyond it a value is an outlier.
OUTLIER_Z = 3.5


def outlier_indices(values: Sequence[float], threshold: float = OUTLIER_Z) -> list[int]:
    """Indices of values whose modified z-score, 0.6745 (x - median) / MAD, exceeds the threshold.
    Median-based, so one wild value (a first-run compile, a stall) cannot hide itself by inflating
    the spread. Needs five values (with fewer, the MAD is one of two gaps and flags too eagerly), and
    none are flagged when most values are equal (MAD = 0)."""
    if len(values) < 5:
        return []
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    if mad == 0:
        return []
    return [i for i, v in enumerate(values) if 0.6745 * abs(v - median) / mad > threshold]


@dataclass(frozen=True)
class RatioTest:
    """mean(a) / mean(b), its confidence interval, and Welch's t-test of the difference."""

    ratio: float
    low: float | None
    high: float | None
    p_value: float | None
    confidence: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value is not None and self.p_value < alpha


def _welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    se_a, se_b = var_a / n_a, var_b / n_b
    denominator = se_a**2 / (n_a - 1) + se_b**2 / (n_b - 1)
    return (se_a + se_b) ** 2 / denominator if denominator > 0 else float("inf")


def compare_means(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> RatioTest:
    """Welch's t-test (unequal variances) on the means, and the ratio's interval by the delta method on
    log(mean): var(log mean) ~ s^2 / (n mean^2), with the Welch-Satterthwaite degrees of freedom."""
    # scipy.special's t distribution, not scipy.stats: the latter takes most of a second to import,
    # which `kvbench compare` would pay on every call.
    from scipy.special import stdtr, stdtrit

    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    ratio = mean_a / mean_b
    if len(a) < 2 or len(b) < 2:
        return RatioTest(ratio, None, None, None, confidence)
    var_a, var_b = statistics.variance(a), statistics.variance(b)
    if var_a == 0 and var_b == 0:
        p_value = 1.0 if mean_a == mean_b else 0.0
        return RatioTest(ratio, ratio, ratio, p_value, confidence)
    t = (mean_a - mean_b) / math.sqrt(var_a / len(a) + var_b / len(b))
    p_value = float(2 * stdtr(_welch_df(var_a, len(a), var_b, len(b)), -abs(t)))
    log_var_a = var_a / (len(a) * mean_a**2)
    log_var_b = var_b / (len(b) * mean_b**2)
    df = _welch_df(log_var_a * len(a), len(a), log_var_b * len(b), len(b))
    t_crit = float(stdtrit(df, 0.5 + confidence / 2))
    half_width = t_crit * math.sqrt(log_var_a + log_var_b)
    return RatioTest(
        ratio, ratio * math.exp(-half_width), ratio * math.exp(half_width), p_value, confidence
    )


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
