"""What reusing a shared prefix's cache saved in a cell: the prefix mode against the cached mode, which
computes the same prompt whole, in time to first token and end to end, with what the reuse itself costs (the
copy each generation makes, the bytes held between generations)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from kvbench.core.stats import RatioTest, compare_means
from kvbench.model.modes import CACHED, PREFIX
from kvbench.model.records import BenchmarkResult, CellResult


@dataclass(frozen=True)
class PrefixSaving:
    """The prefix mode against the cached mode in one cell: mean seconds each, and what the first saves."""

    prefix_tokens: int
    prompt_tokens: int | None
    ttft_cached_s: float
    ttft_prefix_s: float
    e2e_cached_s: float
    e2e_prefix_s: float
    copy_s: float | None  # the mean copy of the prefix's cache, within the prefix mode's TTFT
    cache_bytes: int | None  # the prefix's cache, held between generations
    outputs_match: bool | None
    first_divergence: int | None
    # Cached mean TTFT over the prefix mode's, with its 95% interval (above 1: reuse is faster).
    ttft_ratio: RatioTest
    e2e_ratio: RatioTest

    @property
    def ttft_saved_s(self) -> float:
        return self.ttft_cached_s - self.ttft_prefix_s

    @property
    def e2e_saved_s(self) -> float:
        return self.e2e_cached_s - self.e2e_prefix_s

    def to_dict(self) -> dict[str, Any]:
        """The results file's "prefix_reuse" entry for the cell (a derived section: readers recompute it)."""
        return {
            "prefix_tokens": self.prefix_tokens,
            "ttft_cached_s": self.ttft_cached_s,
            "ttft_prefix_s": self.ttft_prefix_s,
            "ttft_saved_s": self.ttft_saved_s,
            "ttft_ratio": self.ttft_ratio.ratio,
            "ttft_ratio_interval": [self.ttft_ratio.low, self.ttft_ratio.high],
            "e2e_cached_s": self.e2e_cached_s,
            "e2e_prefix_s": self.e2e_prefix_s,
            "e2e_saved_s": self.e2e_saved_s,
            "e2e_ratio": self.e2e_ratio.ratio,
            "e2e_ratio_interval": [self.e2e_ratio.low, self.e2e_ratio.high],
            "copy_s": self.copy_s,
            "prefix_cache_bytes": self.cache_bytes,
            "outputs_match": self.outputs_match,
            "first_divergence": self.first_divergence,
        }


def prefix_saving(result: BenchmarkResult, cell: CellResult) -> PrefixSaving | None:
    """The saving in `cell`, or None where it lacks a prefix or either mode's runs with token times."""
    prefix = cell.settings.prefix_tokens
    cached, reused = result.runs_of(cell.id, CACHED.name), result.runs_of(cell.id, PREFIX.name)
    if prefix is None or not cached or not reused:
        return None
    ttft_cached = [run.time_to_first_token_s for run in cached if run.time_to_first_token_s is not None]
    ttft_reused = [run.time_to_first_token_s for run in reused if run.time_to_first_token_s is not None]
    if not ttft_cached or not ttft_reused:
        return None
    copies = [run.prefix_copy_s for run in reused if run.prefix_copy_s is not None]
    e2e_cached, e2e_reused = [run.latency_s for run in cached], [run.latency_s for run in reused]
    return PrefixSaving(
        prefix_tokens=prefix,
        prompt_tokens=cell.prompt_tokens,
        ttft_cached_s=statistics.fmean(ttft_cached),
        ttft_prefix_s=statistics.fmean(ttft_reused),
        e2e_cached_s=statistics.fmean(e2e_cached),
        e2e_prefix_s=statistics.fmean(e2e_reused),
        copy_s=statistics.fmean(copies) if copies else None,
        cache_bytes=cell.prefix_cache_bytes,
        outputs_match=cell.prefix_outputs_match,
        first_divergence=cell.prefix_first_divergence,
        ttft_ratio=compare_means(ttft_cached, ttft_reused),
        e2e_ratio=compare_means(e2e_cached, e2e_reused),
    )


def prefix_reuse_section(result: BenchmarkResult) -> list[dict[str, Any]]:
    """Every cell's saving, for the results file's derived "prefix_reuse" section."""
    return [
        {"cell": cell.id, **saving.to_dict()} for cell in result.cells if (saving := prefix_saving(result, cell)) is not None
    ]
