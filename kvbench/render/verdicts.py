"""Which KV cache, on the terminal: each group's verdict table against the dynamic cache, and what fits in
each GPU memory size; and the fits of latency against length."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

from rich.console import Group, RenderableType
from rich.table import Table

from kvbench.analysis.cache_choice import (
    DEFAULT_GPU_MEMORY_BYTES,
    DEFAULT_MIN_TOP1_AGREEMENT,
    CacheVerdict,
    Missing,
    Recommendation,
    VerdictGroup,
    WhatFits,
    cache_verdicts,
    recommend,
    what_fits_notes,
)
from kvbench.core.stats import outward
from kvbench.core.units import format_bytes
from kvbench.model.records import BenchmarkResult, CellState
from kvbench.render.tables import Column, FittedTable
from kvbench.render.text import add_row, plain


def fit_table(result: BenchmarkResult, explanation=None) -> Group | None:
    """Latency fitted against new tokens per group: the exponents, the crossover and predicted speedups."""
    from kvbench.analysis.explain import explain_result

    explanation = explanation or explain_result(result)
    if not explanation.fits:
        return None
    table = Table(
        title="beyond the lengths run: latency ≈ a + b·n^k fitted per mode (k ± standard error)",
        title_justify="left",
    )
    for header in ("group", "cached k", "uncached k", "crossover", "speedup at 2× / 10× longest"):
        table.add_column(header, justify="left" if header == "group" else "right")
    notes = []
    for fit in explanation.fits:
        fitted = fit.extrapolation
        if fitted is None:
            add_row(table, [fit.group, "—", "—", "—", "—"])
            notes.append(f"{fit.group}: {fit.reason}")
            continue

        def exponent(power) -> str:
            error = f" ± {power.exponent_stderr:.2f}" if power.exponent_stderr is not None else ""
            return f"{power.exponent:.2f}{error}"

        crossing = f"{fitted.crossover_new_tokens:.1f} tokens" if fitted.crossover_new_tokens is not None else "none"
        longest = fitted.longest_new_tokens
        at_2x, at_10x = fitted.speedup_at_2x, fitted.speedup_at_10x
        speedups = (
            f"{at_2x:.2f}× at {2 * longest} / {at_10x:.2f}× at {10 * longest}"
            if at_2x is not None and at_10x is not None
            else "not extrapolated"
        )
        add_row(table, [fit.group, exponent(fitted.cached), exponent(fitted.uncached), crossing, speedups])
        why_not = f"; {fitted.speedup_reason}" if fitted.speedup_reason else ""
        notes.append(f"{fit.group}: {fitted.exponent_gap_reason}{why_not}; {fitted.crossover_reason}")
    return Group(table, *(plain(note) for note in notes))


def _measured_reference(verdict: CacheVerdict) -> bool:
    return verdict.is_reference and not CellState(verdict.cell.status).failed


def latency_ratio_text(verdict: CacheVerdict) -> str:
    """This cache's mean latency over the dynamic cache's, with its 95% interval: "0.80× [0.75, 0.85]"."""
    if _measured_reference(verdict):
        return "reference"
    test = verdict.latency_ratio
    if isinstance(test, Missing):
        return "—"
    if test.low is None or test.high is None or test.without_spread:
        return f"{test.ratio:.2f}× (no interval)"
    low, high = outward(test.low, test.high)
    return f"{test.ratio:.2f}× [{low}, {high}]"


def memory_saved_texts(verdict: CacheVerdict) -> tuple[str, str]:
    """The measured cache bytes saved against the dynamic cache's, as a share and in bytes: "75.0%", "3.5 MiB"."""
    share, saved = verdict.memory_saved_share, verdict.memory_saved_bytes
    if _measured_reference(verdict):
        return "", ""
    if isinstance(share, Missing) or isinstance(saved, Missing):
        return "—", "—"
    return f"{share:.1%}", format_bytes(saved)


def agreement_texts(verdict: CacheVerdict) -> tuple[str, str, str, str]:
    """The output agreement's figures as text: greedy tokens that agree, the first new token that differs
    ("none": token-identical), the share of positions whose top-1 agrees, the mean KL in nats."""
    if _measured_reference(verdict):
        return "", "", "", ""
    cell = verdict.agreement
    if isinstance(cell, Missing):
        return "—", "—", "—", "—"
    share, top1, kl = cell.agreement_token_share, cell.agreement_top1_share, cell.agreement_kl_mean_nats
    return (
        f"{share:.1%}" if share is not None else "—",
        str(cell.agreement_first_divergence) if cell.agreement_first_divergence is not None else "none",
        f"{top1:.1%}" if top1 is not None else "—",
        f"{kl:.3g}" if kl is not None else "—",
    )


# The verdict's columns: (header, its short form on a narrow terminal, the drop level: highest goes first).
VERDICT_COLUMNS = (
    ("cache", None, 0),
    ("latency vs dynamic", "latency ×dyn", 0),
    ("KV cache saved", "KV saved", 0),
    ("bytes saved", None, 2),
    ("tokens agree", "tokens", 0),
    ("first differs", "1st diff", 2),
    ("top-1 agrees", "top-1", 1),
    ("KL (nats)", "KL", 1),
)


def verdict_row(verdict: CacheVerdict) -> list[str]:
    """One cache implementation's verdict as the columns every rendering shows (VERDICT_COLUMNS), "—" where a
    figure is missing (verdict.missing() says why); the measured dynamic cell, the reference, blank."""
    return [verdict.cache, latency_ratio_text(verdict), *memory_saved_texts(verdict), *agreement_texts(verdict)]


def verdict_table(group: VerdictGroup) -> FittedTable:
    """The group's caches side by side against the dynamic cache; a narrow terminal loses the bytes saved and
    the first difference first, then the top-1 share and the KL."""
    columns = [
        Column(header, itemgetter(i), justify="left" if i == 0 else "right", drop=drop, short=short)
        for i, (header, short, drop) in enumerate(VERDICT_COLUMNS)
    ]
    rows = [verdict_row(verdict) for verdict in group.verdicts]
    return FittedTable(f"which KV cache: {group.title()}, against the dynamic cache", columns, rows)


def count_text(count: int) -> str:
    """A count for a narrow column: 4,096; 524k; 1.2M; "none" for 0."""
    if count == 0:
        return "none"
    if count < 10_000:
        return f"{count:,}"
    if count < 1_000_000:
        return f"{count / 1000:.0f}k"
    return f"{count / 1_000_000:.1f}M" if count < 1_000_000_000 else f"{count / 1_000_000_000:.1f}G"


def gpu_size_text(size: int) -> str:
    """A GPU memory size as it is usually named: "80 GiB" for a whole number of GiB."""
    return f"{size // 2**30} GiB" if size % 2**30 == 0 else format_bytes(size)


def _fit_count(index: int, figure: str) -> Callable[[WhatFits], str]:
    """A what-fits column's text: one figure of the index-th GPU memory size."""
    return lambda fit: count_text(getattr(fit.fits[index], figure))


def what_fits_tables(group: VerdictGroup, gpu_memory_bytes: tuple[int, ...]) -> list[RenderableType]:
    """Per cache implementation, the longest context at batch 1 and the largest batch at the group's context
    that fit beside the weights in each GPU memory size, then what those figures count and leave out."""
    fitted = [(verdict.cache, group.what_fits(verdict, gpu_memory_bytes)) for verdict in group.verdicts]
    measured = [fit for _, fit in fitted if not isinstance(fit, Missing)]
    lines: list[RenderableType] = []
    if measured:
        sizes = [Column("cache", lambda fit: fit.cache, justify="left")]
        context = FittedTable(
            "longest context (positions) at batch 1",
            [*sizes, Column("KV/position", lambda fit: format_bytes(round(fit.bytes_per_position)))]
            + [Column(gpu_size_text(size), _fit_count(i, "longest_context")) for i, size in enumerate(gpu_memory_bytes)],
            measured,
        )
        batch = FittedTable(
            f"largest batch at {measured[0].positions:,} positions",
            sizes + [Column(gpu_size_text(size), _fit_count(i, "largest_batch")) for i, size in enumerate(gpu_memory_bytes)],
            measured,
        )
        weights = format_bytes(measured[0].weight_bytes)
        lines += [plain(f"what fits beside {weights} of weights in each GPU memory size:", style="bold"), context, batch]
    for cache, fit in fitted:
        if isinstance(fit, Missing):
            lines.append(plain(f"{cache}: what fits —: {fit.reason}", style="dim"))
    lines += [plain(note, style="dim") for note in what_fits_notes(group, gpu_memory_bytes)]
    return lines


def _latency_cost_text(verdict: CacheVerdict) -> str:
    """What a cache costs in latency against the dynamic cache, as the end of the recommendation."""
    test = verdict.latency_ratio
    if isinstance(test, Missing):
        return f"its latency not compared ({test.reason})"
    if test.low is None or test.high is None or test.without_spread:
        return f"at {test.ratio:.2f}× the dynamic cache's latency (no interval)"
    low, high = outward(test.low, test.high)
    interval = f"{test.ratio:.2f}× [{low}, {high}]"
    if test.low > 1:
        return f"at {interval} the dynamic cache's latency"
    if test.high < 1:
        return f"and faster: {interval} the dynamic cache's latency"
    return f"with no latency difference these runs can tell ({interval})"


def recommendation_text(recommendation: Recommendation) -> str:
    """The verdict table's conclusion in one sentence: which cache saves most memory within the tolerance for
    agreement, and at what latency; or that none qualifies, and which came closest."""
    least = f"{recommendation.min_top1_share * 100:.4g}%"  # 98%, 99.5%: never rounded up to what it is not
    chosen = recommendation.chosen
    if chosen is not None:
        share, saved = memory_saved_texts(chosen)
        top1 = agreement_texts(chosen)[2]
        return (
            f"recommended: {chosen.cache}, which saves the most KV cache memory ({share}, {saved}) with its most"
            f" likely next token agreeing at {top1} of positions (at least {least}), {_latency_cost_text(chosen)}"
        )
    miss = recommendation.closest_miss
    if miss is None:
        return "recommended: the dynamic cache: no other cache here saves KV cache memory"
    top1 = agreement_texts(miss)[2]
    agrees = f"agrees at {top1} of positions" if top1 != "—" else "has no top-1 agreement measured"
    return (
        f"recommended: the dynamic cache: no cache here saves memory while agreeing at {least} of positions or more"
        f" ({miss.cache} saves {memory_saved_texts(miss)[0]} but {agrees}; --min-agreement sets the tolerance)"
    )


def cache_verdict_parts(result: BenchmarkResult, min_top1_share: float = DEFAULT_MIN_TOP1_AGREEMENT) -> list[RenderableType]:
    """Where cells differ only in their cache implementation: each group's verdict table, the recommendation
    it leads to, and why a figure is missing."""
    parts: list[RenderableType] = []
    groups = cache_verdicts(result)
    for group in groups:
        parts.append(verdict_table(group))
        parts.append(plain(recommendation_text(recommend(group, min_top1_share)), style="bold"))
        for verdict in group.verdicts:
            missing = verdict.missing()
            if len(missing) > 1 and len({reason for _, reason in missing}) == 1:  # a skipped cell: one line
                missing = [(", ".join(figure for figure, _ in missing), missing[0][1])]
            for figure, reason in missing:
                parts.append(plain(f"{verdict.cache}: {figure} —: {reason}", style="yellow"))
    if groups:
        parts.append(
            plain(
                "each cache's cells ran one after another, not interleaved with the dynamic cache's: a change in the"
                " machine's speed between them moves the latency ratio beyond its interval; rerun to check",
                style="dim",
            )
        )
    return parts


def what_fits_parts(result: BenchmarkResult, gpu_memory_bytes: tuple[int, ...] | None = None) -> list[RenderableType]:
    """Where cells differ only in their cache implementation: what fits in each GPU memory size (by default a
    few common ones), per group."""
    return [
        part
        for group in cache_verdicts(result)
        for part in what_fits_tables(group, gpu_memory_bytes or DEFAULT_GPU_MEMORY_BYTES)
    ]


def cache_choice_parts(
    result: BenchmarkResult,
    gpu_memory_bytes: tuple[int, ...] | None = None,
    min_top1_share: float = DEFAULT_MIN_TOP1_AGREEMENT,
) -> list[RenderableType]:
    """Which cache, all of it: the verdicts with their recommendations, then what fits."""
    return cache_verdict_parts(result, min_top1_share) + what_fits_parts(result, gpu_memory_bytes)
