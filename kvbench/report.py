"""Terminal rendering of one results file: rich tables, the speedup, and what was not measured."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any, Literal

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderHook, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from kvbench.cache_choice import (
    DEFAULT_GPU_MEMORY_BYTES,
    CacheVerdict,
    Missing,
    VerdictGroup,
    WhatFits,
    cache_verdicts,
    what_fits,
    what_fits_notes,
)
from kvbench.config import MODES
from kvbench.records import BenchmarkResult, CellResult, CellState, ModeSummary
from kvbench.stats import cached_speedup, noise_warning, speedup_words
from kvbench.units import format_bytes, format_ms, seconds_as_ms
from kvbench.untrusted import printable


def plain(text: str, style: str | None = None) -> Text:
    """Text shown as it is: never read as rich markup (a model named "llama[v2]" keeps its brackets), its
    control characters written out. Every line and cell this module renders passes through here: most hold
    something from a results file or a name a user gave."""
    return Text(printable(text), style=style or "")


def labelled(label: str, style: str, message: str) -> Text:
    """One line for the terminal, "Error: ..." or "warning: ...": the label styled, the message as it is,
    on one line (a newline or a tab in it written out)."""
    return Text.assemble((label, style), " ", printable(message, one_line=True))


def _add_row(table: Table, cells: Iterable[str], style: str | None = None) -> None:
    table.add_row(*(plain(cell) for cell in cells), style=style)


def serving_parts(summary: ModeSummary) -> list[str]:
    """A mode's serving metrics as short phrases (ms unless named), as `show` and `compare` print them:
    TTFT, TPOT, ITL and end-to-end latency, with percentiles over runs (ITL over every gap)."""
    if summary.ttft_p50_s is None:
        return []
    percentiles = (summary.e2e_p50_s, summary.e2e_p90_s, summary.e2e_p99_s)
    e2e = "/".join(f"{value:.3f}" if value is not None else "—" for value in percentiles)
    ttft = "/".join(map(seconds_as_ms, (summary.ttft_p50_s, summary.ttft_p90_s, summary.ttft_p99_s)))
    itl = "/".join(map(seconds_as_ms, (summary.itl_p50_s, summary.itl_p90_s, summary.itl_p99_s)))
    return [
        f"TTFT p50/90/99 {ttft}",
        f"TPOT {seconds_as_ms(summary.tpot_mean_s)}",
        f"ITL p50/90/99 {itl}",
        f"e2e p50/90/99 {e2e} s",
    ]


def _s(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "—"


def _mean_std(summary: ModeSummary) -> str:
    std = f" ± {summary.std_s:.3f}" if summary.std_s is not None else ""
    return f"{summary.mean_s:.3f}{std}"


def peak_vram(summary: ModeSummary) -> tuple[int | None, str]:
    """Peak GPU memory from the most specific source there is, or (None, "") on a CPU run."""
    value, source = summary.peak_memory()
    return (value, source) if source != "RSS" else (None, "")


def memory_difference(result: BenchmarkResult, cell_id: str) -> tuple[int, str] | None:
    """Cached minus uncached peak memory in tensors (torch's allocated bytes, on a GPU), with its source.
    None where that figure is missing: reserved and NVML figures include the allocator's cache, the CUDA
    context and other processes, and a CPU's RSS the whole process, so their difference is not the
    cache's cost."""
    cached, uncached = result.summary_of(cell_id, "cached"), result.summary_of(cell_id, "uncached")
    if cached is None or uncached is None:
        return None
    with_cache, without = cached.torch_peak_allocated_bytes, uncached.torch_peak_allocated_bytes
    if with_cache is None or without is None:
        return None
    return with_cache - without, "allocated by torch"


def cell_table(result: BenchmarkResult, cell: CellResult) -> FittedTable:
    settings = cell.settings
    model = cell.model or {}
    weights = model.get("weights", "?")
    title = (
        f"{settings.model} · {weights.upper() if weights == 'random' else weights} weights · "
        f"{model.get('dtype', settings.dtype)} · batch {settings.batch_size} · "
        f"{cell.prompt_tokens} prompt ({cell.prompt_source}) + {settings.max_new_tokens} new tokens"
    )
    if settings.cache_implementation != "dynamic" or settings.attn_implementation != "auto":
        title += f" · cache {settings.cache_name} · attn {model.get('attn_implementation')}"
    summaries = [s for mode in result.modes if (s := result.summary_of(cell.id, mode))]
    columns = [
        _Column("mode", lambda s: s.mode, justify="left"),
        _Column("n", lambda s: str(s.n)),
        _Column("mean ± std (s)", _mean_std),
        _Column("min (s)", lambda s: _s(s.min_s), drop=3),
        _Column("median (s)", lambda s: _s(s.median_s), drop=3),
        _Column("max (s)", lambda s: _s(s.max_s), drop=3),
        _Column("tokens/s", lambda s: f"{s.tokens_per_s:.1f}", drop=2),
        _Column(
            "first token (ms)",
            lambda s: format_ms(s.time_to_first_token_s * 1000 if s.time_to_first_token_s is not None else None),
            drop=1,
            short="TTFT ms",
        ),
        _Column(
            "ms/token early → late",
            lambda s: f"{format_ms(s.early_token_ms)} → {format_ms(s.late_token_ms)}",
            short="ms/tok early→late",
        ),
    ]
    if any(peak_vram(summary)[0] is not None for summary in summaries):
        columns.append(_Column("peak VRAM", _vram))
    columns.append(_Column("peak RSS", lambda s: format_bytes(s.peak_rss_bytes), drop=1))
    return FittedTable(title, columns, summaries)


def _vram(summary: ModeSummary) -> str:
    value, source = peak_vram(summary)
    return f"{format_bytes(value)} ({source})" if value is not None else "—"


@dataclass(frozen=True)
class _Column:
    header: str
    value: Callable[[Any], str]  # the text of one row's cell
    justify: Literal["left", "right"] = "right"
    drop: int = 0  # on a narrow terminal, the columns with the highest number go first; 0 always stays
    short: str | None = None  # the header where the table is narrowed


class FittedTable:
    """A table (one row per mode, or per cache implementation) that fits the width it is drawn at: columns a
    narrow terminal cannot show are left out, least needed first, instead of being squeezed into "…"; a log
    or a file gets them all."""

    def __init__(self, title: str, columns: list[_Column], summaries: list[Any]) -> None:
        self.title, self.columns, self.summaries = title, columns, summaries

    def table(self, most_dropped: int, short: bool) -> Table:
        table = Table(title=plain(self.title), title_justify="left")
        shown = [column for column in self.columns if column.drop <= most_dropped]
        for column in shown:
            header = column.short if short and column.short else column.header
            table.add_column(header, justify=column.justify, no_wrap=True)
        for summary in self.summaries:
            table.add_row(*(plain(column.value(summary)) for column in shown))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        levels = sorted({column.drop for column in self.columns}, reverse=True)
        unbounded = options.update(max_width=10_000)  # a measurement is otherwise capped at the width
        for level, short in itertools.product(levels, (False, True)):
            table = self.table(level, short)
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                break
        yield table


def cell_lines(result: BenchmarkResult, cell: CellResult) -> list[Text]:
    lines: list[Text] = []
    if CellState(cell.status).failed:
        lines.append(plain(f"{cell.status}: {cell.reason}", style="yellow"))
        return lines
    speedup = speedup_of(result, cell)
    if speedup is not None:
        lines.append(plain(f"by mean latency, {speedup}", style="bold"))
    for mode in result.modes:
        noisy = noise_warning([run.latency_s for run in result.runs_of(cell.id, mode)])
        if noisy:
            lines.append(plain(f"{mode}: {noisy}", style="yellow"))
    # The reference experiment printed these two lines; keep them so results read side by side.
    for mode, words in (("cached", "with KV caching"), ("uncached", "without KV caching")):
        summary = result.summary_of(cell.id, mode)
        if summary is not None:
            std = summary.std_s if summary.std_s is not None else 0.0
            lines.append(plain(f"{words}: {round(summary.mean_s, 3)} +- {round(std, 3)} seconds"))
    lines.extend(kv_cache_lines(result, cell))
    lines.extend(metric_lines(result, cell))
    if cell.stop_reason:
        lines.append(plain(f"runs: {cell.stop_reason}", style="dim"))
    for mode in result.modes:
        summary = result.summary_of(cell.id, mode)
        if summary is None or not summary.outlier_runs:
            continue
        runs = {run.run: run.latency_s for run in result.runs_of(cell.id, mode)}
        shown = ", ".join(f"run {i + 1} ({runs[i]:.3f} s)" for i in summary.outlier_runs if i in runs)
        lines.append(
            plain(
                f"outlier{'s' if len(summary.outlier_runs) > 1 else ''} in {mode}: {shown} against a median of"
                f" {summary.median_s:.3f} s — a stall or a first-run compile? more --warmup or --runs may help",
                style="yellow",
            )
        )
    if cell.outputs_match is True:
        lines.append(plain("cached and uncached outputs are token-identical", style="green"))
    elif cell.outputs_match is False:
        lines.append(
            plain(
                f"cached and uncached outputs differ from new token {cell.first_divergence} on",
                style="red",
            )
        )
    agreement = agreement_line(cell)
    if agreement is not None:
        lines.append(agreement)
    if cell.status == CellState.INCOMPLETE:
        lines.append(plain("incomplete: this cell was interrupted", style="yellow"))
    return lines


def agreement_line(cell: CellResult) -> Text | None:
    """What the cell's cache implementation changed in the output, against the dynamic cache."""
    if cell.agreement_note is not None:
        cache = cell.settings.cache_name
        return plain(f"{cache} cache against the dynamic cache: {cell.agreement_note}", style="yellow")
    if cell.agreement_token_share is None:
        return None
    cache = f"{cell.settings.cache_name} cache"
    if cell.agreement_first_divergence is None:
        tokens = f"{cache}: greedy output token-identical to the dynamic cache's"
    else:
        tokens = (
            f"{cache}: {cell.agreement_token_share:.1%} of greedy tokens agree with the dynamic cache's, the"
            f" first difference at new token {cell.agreement_first_divergence}"
        )
    distributions = ""
    if cell.agreement_top1_share is not None and cell.agreement_kl_mean_nats is not None:
        distributions = (
            f"; on the dynamic cache's tokens, the most likely next token agrees at {cell.agreement_top1_share:.1%}"
            f" of positions, mean KL divergence {cell.agreement_kl_mean_nats:.3g} nats"
        )
    lossless = cell.agreement_first_divergence is None and cell.agreement_top1_share == 1.0
    return plain(tokens + distributions, style="green" if lossless else "yellow")


def kv_cache_lines(result: BenchmarkResult, cell: CellResult) -> list[Text]:
    """The cache's size as measured on its object beside the theory, and what memory figures cannot show."""
    lines = []
    if cell.kv_cache_measured_bytes is not None and cell.kv_cache_theory_bytes:
        agrees = cell.kv_cache_agrees
        relation = "=" if agrees else "≠"
        excess = cell.kv_cache_measured_bytes / cell.kv_cache_theory_bytes - 1
        formula = "2 × layers × kv_heads × head_dim × positions × batch × bytes"
        if cell.settings.cache_implementation == "quantized":
            formula = "the quantized layout below"
        text = (
            f"KV cache measured: {format_bytes(cell.kv_cache_measured_bytes)} ({cell.kv_cache_class},"
            f" {cell.kv_cache_positions} positions) {relation} theory {format_bytes(cell.kv_cache_theory_bytes)}"
            f" ({excess:+.2%}; {formula})"
        )
        lines.append(plain(text, style="" if agrees else "yellow"))
    elif cell.kv_cache_bytes is not None:
        lines.append(
            plain(
                f"KV cache at {cell.prompt_tokens} + {cell.settings.max_new_tokens} tokens: "
                f"{format_bytes(cell.kv_cache_bytes)} in theory (its object was not measured in this file)"
            )
        )
    if cell.kv_cache_note:
        lines.append(plain(f"KV cache: {cell.kv_cache_note}", style="yellow"))
    difference = memory_difference(result, cell.id)
    if difference is not None:
        lines.append(plain(f"peak {difference[1]}, cached − uncached: {format_bytes(difference[0])}"))
    elif cell.kv_cache_measured_bytes is not None and not result.environment.get("gpu_name"):
        lines.append(
            plain(
                "peak RSS cannot show the cache's cost: a cache this size is lost beside the model and the"
                " allocator's reuse, so only the cache object's own bytes are reported",
                style="dim",
            )
        )
    return lines


def metric_lines(result: BenchmarkResult, cell: CellResult, explanation=None) -> list[Text]:
    """Per mode, one compact line of serving metrics (ms unless named) and the roofline fraction."""
    from kvbench.explain import explain_result

    explanation = explanation or explain_result(result)
    lines = []
    for mode in result.modes:
        summary = result.summary_of(cell.id, mode)
        if summary is None:
            continue
        parts = serving_parts(summary)
        if parts:
            decode = f"{summary.decode_tokens_per_s:.1f}" if summary.decode_tokens_per_s is not None else "—"
            parts.append(f"prefill {summary.prefill_tokens_per_s:.0f} tok/s, decode {decode} tok/s")
        if summary.energy_j_per_token is not None:
            parts.append(f"{summary.energy_j_per_token:.3g} J/token (prefill included)")
        if parts:
            lines.append(plain(f"{mode}: " + " · ".join(parts)))
    bounds = [b for mode in result.modes if (b := explanation.bound_of(cell.id, mode)) is not None]
    if bounds:
        lines.append(plain("roofline: " + "; ".join(bound.words() for bound in bounds)))
    return lines


def fit_table(result: BenchmarkResult, explanation=None) -> Group | None:
    """Latency fitted against new tokens per group: the exponents, the crossover and predicted speedups."""
    from kvbench.explain import explain_result

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
            _add_row(table, [fit.group, "—", "—", "—", "—"])
            notes.append(f"{fit.group}: {fit.reason}")
            continue

        def exponent(power) -> str:
            error = f" ± {power.exponent_stderr:.2f}" if power.exponent_stderr is not None else ""
            return f"{power.exponent:.2f}{error}"

        crossing = (
            f"{fitted.crossover_new_tokens:.1f} tokens" if fitted.crossover_new_tokens is not None else "none"
        )
        longest = fitted.longest_new_tokens
        _add_row(
            table,
            [
                fit.group,
                exponent(fitted.cached),
                exponent(fitted.uncached),
                crossing,
                f"{fitted.speedup_at_2x:.2f}× at {2 * longest} / {fitted.speedup_at_10x:.2f}× at {10 * longest}",
            ],
        )
        notes.append(f"{fit.group}: {fitted.exponent_gap_reason}; {fitted.crossover_reason}")
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
    if test.low is None or test.high is None:
        return f"{test.ratio:.2f}× (no interval)"
    return f"{test.ratio:.2f}× [{test.low:.2f}, {test.high:.2f}]"


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
        _Column(header, itemgetter(i), justify="left" if i == 0 else "right", drop=drop, short=short)
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
    that fit beside the weights in each GPU memory size, then what those figures leave out."""
    fitted = [(verdict.cache, what_fits(verdict.cell, gpu_memory_bytes)) for verdict in group.verdicts]
    measured = [fit for _, fit in fitted if not isinstance(fit, Missing)]
    lines: list[RenderableType] = []
    if measured:
        sizes = [_Column("cache", lambda fit: fit.cache, justify="left")]
        context = FittedTable(
            "longest context (positions) at batch 1",
            [*sizes, _Column("KV/position", lambda fit: format_bytes(round(fit.bytes_per_position)))]
            + [_Column(gpu_size_text(size), _fit_count(i, "longest_context")) for i, size in enumerate(gpu_memory_bytes)],
            measured,
        )
        batch = FittedTable(
            f"largest batch at {measured[0].positions:,} positions",
            sizes + [_Column(gpu_size_text(size), _fit_count(i, "largest_batch")) for i, size in enumerate(gpu_memory_bytes)],
            measured,
        )
        weights = format_bytes(measured[0].weight_bytes)
        lines += [plain(f"what fits beside {weights} of weights in each GPU memory size:", style="bold"), context, batch]
    for cache, fit in fitted:
        if isinstance(fit, Missing):
            lines.append(plain(f"{cache}: what fits —: {fit.reason}", style="dim"))
    lines += [plain(note, style="dim") for note in what_fits_notes(group, gpu_memory_bytes)]
    return lines


def cache_choice_parts(result: BenchmarkResult, gpu_memory_bytes: tuple[int, ...] | None = None) -> list[RenderableType]:
    """Where cells differ only in their cache implementation: each group's verdict table, why a figure is
    missing, and what fits in each GPU memory size (by default a few common ones)."""
    parts: list[RenderableType] = []
    for group in cache_verdicts(result):
        parts.append(verdict_table(group))
        for verdict in group.verdicts:
            missing = verdict.missing()
            if len(missing) > 1 and len({reason for _, reason in missing}) == 1:  # a skipped cell: one line
                missing = [(", ".join(figure for figure, _ in missing), missing[0][1])]
            for figure, reason in missing:
                parts.append(plain(f"{verdict.cache}: {figure} —: {reason}", style="yellow"))
        parts.append(
            plain(
                "each cache's cells ran one after another, not interleaved with the dynamic cache's: a change in the"
                " machine's speed between them moves the latency ratio beyond its interval; rerun to check",
                style="dim",
            )
        )
        parts += what_fits_tables(group, gpu_memory_bytes or DEFAULT_GPU_MEMORY_BYTES)
    return parts


def render_result(result: BenchmarkResult, gpu_memory_bytes: tuple[int, ...] | None = None) -> Group:
    environment = result.environment
    parts: list = [
        plain(
            f"{environment.get('device_name') or environment.get('device')} ({environment.get('device')}) · "
            f"torch {environment.get('torch')} · transformers {environment.get('transformers')} · "
            f"kvbench {result.kvbench_version}",
            style="dim",
        )
    ]
    if not result.complete:
        parts.append(plain("INCOMPLETE: the run was interrupted; these are the runs it finished", style="bold yellow"))
    for cell in result.cells:
        if cell.status == CellState.PENDING:
            continue
        if result.runs_of(cell.id, "cached") or result.runs_of(cell.id, "uncached"):
            parts.append(cell_table(result, cell))
        else:
            parts.append(plain(cell.id, style="bold"))
        parts.extend(cell_lines(result, cell))
    parts.extend(cache_choice_parts(result, gpu_memory_bytes))
    fits = fit_table(result)
    if fits is not None:
        parts.append(fits)
    from kvbench.explain import peaks_of

    peaks = peaks_of(result.environment)
    if peaks is not None:
        parts.append(plain(f"roofline peaks: {peaks.source}", style="dim"))
    pending = [cell.id for cell in result.cells if cell.status == CellState.PENDING]
    if pending:
        parts.append(plain(f"not run: {len(pending)} cell(s)", style="yellow"))
    for note in result.notes:
        parts.append(plain(f"note: {note}", style="cyan"))
    for what, why in result.unmeasured.items():
        parts.append(plain(f"not measured: {what.replace('_', ' ')}: {why}", style="dim"))
    return Group(*parts)


def one_line_summary(result: BenchmarkResult) -> list[str]:
    """One line per measured cell, to paste into a pull request or an issue."""
    device = result.environment.get("device_name") or result.environment.get("device")
    lines = []
    for cell in result.cells:
        parts = []
        for mode in result.modes:
            summary = result.summary_of(cell.id, mode)
            if summary is not None:
                std = f" ± {summary.std_s:.3f}" if summary.std_s is not None else ""
                parts.append(f"{mode} {summary.mean_s:.3f}{std} s (n={summary.n})")
        if not parts:
            continue
        speedup = speedup_of(result, cell)
        verdict = f"; {speedup}" if speedup is not None else ""
        lines.append(f"{cell.label()}: {', '.join(parts)}{verdict} · {device} · kvbench {result.kvbench_version}")
    return lines


def speedup_of(result: BenchmarkResult, cell: CellResult) -> str | None:
    """What the cache bought in a cell, in words, with its 95% interval; None without both modes."""
    cached, uncached = (
        [run.latency_s for run in result.runs_of(cell.id, mode)] for mode in MODES
    )
    if not cached or not uncached:
        return None
    return speedup_words(cached_speedup(uncached, cached))


def print_generated_text(result: BenchmarkResult, console: Console) -> None:
    for cell in result.cells:
        if not cell.generated_text:
            if cell.status == CellState.MEASURED:
                console.print(plain(f"{cell.label()}: no generated text (the model has no tokenizer)", style="dim"))
            continue
        for mode, text in cell.generated_text.items():
            console.print(plain(f"{cell.label()} · {mode} generated:", style="bold"))
            console.print(plain(text))


def render_plan(plan, output) -> Group:
    """What `run --dry-run` found: every cell, what will happen to it, and the number of generations."""
    table = Table(title="dry run: nothing measured", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("cell")
    table.add_column("what happens")
    for index, (cell, what) in enumerate(plan.cells, start=1):
        _add_row(table, [str(index), cell.label(), what])
    fewest, most = plan.runs_per_mode
    runs = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    lines: list[RenderableType] = [
        table,
        plain(f"{plan.generations} generations at most ({runs} measured runs per mode, plus warmup)"),
        plain(f"results would go to {output}" if output else "results would go to stdout only", style="dim"),
        plain(
            f"time: {plan.estimate.text()}"
            if plan.estimate is not None
            else "time: unknown until these models have run on this machine (uncached time grows with length²)",
            style="dim",
        ),
    ]
    return Group(*lines)


def plan_document(plan, output) -> dict:
    """What `run --dry-run --json` prints: the same plan as `render_plan`, for a script to read."""
    fewest, most = plan.runs_per_mode
    return {
        "dry_run": True,
        "output": str(output) if output else None,
        "generations": plan.generations,
        "runs_per_mode": {"fewest": fewest, "most": most},
        "estimated_generation_s": plan.estimate.seconds if plan.estimate is not None else None,
        "cells": [
            {"id": cell.id, "label": cell.label(), "settings": asdict(cell.settings), "what_happens": what}
            for cell, what in plan.cells
        ],
    }


def output_console(stderr: bool = False) -> Console:
    """The console kvbench prints through. It keeps tables whole when the output goes to a file or a pipe
    (rich would wrap them at 80 columns), so they paste into an issue as they looked. It reads no markup
    or emoji codes in what it prints (a path "x[/]y.json" is printed, not parsed), and it writes out any
    control character that reached it: the guard for text from a file or a worker that did not pass
    through `plain`."""
    console = Console(stderr=stderr, markup=False, emoji=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=240, markup=False, emoji=False)
    console.push_render_hook(_ControlsWrittenOut())
    return console


class _ControlsWrittenOut(RenderHook):
    def process_renderables(self, renderables: list) -> list:
        return [_WithoutControls(renderable) for renderable in renderables]


class _WithoutControls:
    """A renderable's output with control characters written out; rich's own cursor movements (the
    segments it marks as control, for the live display) pass as they are."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            yield segment if segment.control else Segment(printable(segment.text), segment.style)


def print_result(
    result: BenchmarkResult, console: Console | None = None, gpu_memory_bytes: tuple[int, ...] | None = None
) -> None:
    """The results file as `kvbench show` prints it; `gpu_memory_bytes` chooses the what-fits sizes."""
    (console or output_console()).print(render_result(result, gpu_memory_bytes))
