"""Serving metrics from per-token arrival times: TTFT, TPOT, ITL, prefill and decode rates, and their percentiles.

Definitions follow vLLM's benchmarks (see REFERENCE.md): TTFT is the time from the call to the first new
token (prefill plus one step); TPOT = (end-to-end - TTFT) / (new tokens - 1), the mean time per token after
the first; ITL is each gap between consecutive tokens. With a batch, every step yields one token per
sequence, so rates count batch x tokens.

Percentiles use linear interpolation between closest ranks (Hyndman and Fan's type 7, numpy's default):
for sorted x_0..x_{n-1} and q in [0, 1], h = (n - 1) q and the value is x_floor(h) + (h - floor(h)) *
(x_floor(h)+1 - x_floor(h)). ITL percentiles pool every gap of every run of a mode.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values to take a percentile of")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


@dataclass(frozen=True)
class Distribution:
    """A sample summarised the way serving benchmarks report it."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one value
    p50: float
    p90: float
    p99: float


def distribution(values: Sequence[float]) -> Distribution:
    return Distribution(
        n=len(values),
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
    )


def time_per_output_token_s(latency_s: float, first_token_s: float, new_tokens: int) -> float | None:
    """TPOT: (end-to-end - first token) / (new tokens - 1); None with one new token, no decode step to time."""
    return (latency_s - first_token_s) / (new_tokens - 1) if new_tokens > 1 else None


@dataclass(frozen=True)
class RunMetrics:
    """One generate() call's latency metrics, in seconds and tokens per second."""

    ttft_s: float
    tpot_s: float | None  # None with a single new token: there is no decode step to time
    itl_s: tuple[float, ...]  # new tokens - 1 gaps
    e2e_s: float
    # Prompt tokens x batch (the real ones, those not read from a reused prefix's cache) / TTFT; TTFT also
    # holds the first decode step.
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None  # (new tokens - 1) x batch / (e2e - TTFT), = batch / TPOT


def run_metrics(
    token_times_s: Sequence[float],
    latency_s: float,
    prompt_tokens: int,
    batch_size: int,
    prefill_tokens: int | None = None,
) -> RunMetrics:
    """From each new token's arrival time since generate() began, and the call's end-to-end latency.
    `prefill_tokens`: the prompt tokens the first step computed over the whole batch, where that is not
    prompt tokens x batch (padding, which is not counted; a prefix whose cache was reused)."""
    if not token_times_s:
        raise ValueError("no token times: the run streamed no new tokens")
    if any(later < earlier for earlier, later in zip(token_times_s, token_times_s[1:])):
        raise ValueError("token times must not decrease")
    ttft_s = token_times_s[0]
    if ttft_s <= 0 or latency_s < token_times_s[-1]:
        raise ValueError(f"token times must be positive and end by the end-to-end latency ({token_times_s[-1]} > {latency_s})")
    tokens = len(token_times_s)
    itl_s = tuple(later - earlier for earlier, later in zip(token_times_s, token_times_s[1:]))
    decode_s = latency_s - ttft_s
    tpot_s = time_per_output_token_s(latency_s, ttft_s, tokens)
    return RunMetrics(
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        itl_s=itl_s,
        e2e_s=latency_s,
        prefill_tokens_per_s=(prompt_tokens * batch_size if prefill_tokens is None else prefill_tokens) / ttft_s,
        decode_tokens_per_s=(tokens - 1) * batch_size / decode_s if tokens > 1 and decode_s > 0 else None,
    )


@dataclass(frozen=True)
class ModeMetrics:
    """One mode's metrics over its runs."""

    runs: int
    ttft_s: Distribution
    e2e_s: Distribution
    itl_s: Distribution | None  # every gap of every run pooled; None when no run had two tokens
    tpot_s: Distribution | None  # over runs
    prefill_tokens_per_s: Distribution  # over runs
    decode_tokens_per_s: Distribution | None  # over runs; None when no run had a decode step


def mode_metrics(runs: Sequence[RunMetrics]) -> ModeMetrics:
    if not runs:
        raise ValueError("no runs to summarise")
    gaps = [gap for run in runs for gap in run.itl_s]
    tpots = [run.tpot_s for run in runs if run.tpot_s is not None]
    decode_rates = [run.decode_tokens_per_s for run in runs if run.decode_tokens_per_s is not None]
    return ModeMetrics(
        runs=len(runs),
        ttft_s=distribution([run.ttft_s for run in runs]),
        e2e_s=distribution([run.e2e_s for run in runs]),
        itl_s=distribution(gaps) if gaps else None,
        tpot_s=distribution(tpots) if tpots else None,
        prefill_tokens_per_s=distribution([run.prefill_tokens_per_s for run in runs]),
        decode_tokens_per_s=distribution(decode_rates) if decode_rates else None,
    )


@dataclass(frozen=True)
class JudgedMetric:
    """A figure compare tests across files and the gate can judge (--gate-metric): one value per run, in
    seconds, read from a stored run."""

    name: str
    label: str  # how tables and verdicts name it
    help: str  # how --gate-metric's help describes it
    mean_field: str  # the export column of its mean over runs (the summary's field of that name, where it has one)
    per_run: Callable[[Any], float | None]  # a RunRecord's value; None where the run did not record it
    unit: str = "s"


def _tpot_of(run: Any) -> float | None:
    first = run.time_to_first_token_s
    return None if first is None else time_per_output_token_s(run.latency_s, first, run.new_tokens)


# The one list of judged metrics, in the order tables show them; latency first, always there.
JUDGED_METRICS = {
    metric.name: metric
    for metric in (
        JudgedMetric("latency", "latency", "per generate()", "mean_s", lambda run: run.latency_s),
        JudgedMetric(
            "ttft", "time to first token", "time to first token", "ttft_mean_s", lambda run: run.time_to_first_token_s
        ),
        JudgedMetric("tpot", "decode time per token", "decode time per token", "tpot_mean_s", _tpot_of),
    )
}


def joules_per_token(joules: float | None, new_tokens: int, batch_size: int) -> float | None:
    """Energy per generated token, the prompt's prefill included (the whole generate() is counted): a
    batch of B sequences makes B tokens a step."""
    if joules is None or new_tokens * batch_size <= 0:
        return None
    return joules / (new_tokens * batch_size)
