"""One cell of a results file on the terminal: its table of modes and the lines under it (the speedup,
noise, the cache's size, serving metrics, the roofline, outputs)."""

from __future__ import annotations

from rich.text import Text

from kvbench.analysis.prefix import prefix_saving
from kvbench.core.stats import RatioTest, cached_speedup, noise_warning, speedup_words
from kvbench.core.units import format_bytes, format_ms, seconds_as_ms
from kvbench.model.caches import REFERENCE, implementation
from kvbench.model.modes import CACHED, MODES_BY_NAME, UNCACHED
from kvbench.model.records import BenchmarkResult, CellResult, CellState, ModeSummary, RunRecord
from kvbench.render.tables import Column, FittedTable
from kvbench.render.text import plain


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
    cached, uncached = result.summary_of(cell_id, CACHED.name), result.summary_of(cell_id, UNCACHED.name)
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
    if settings.cache_implementation != REFERENCE or settings.attn_implementation != "auto":
        title += f" · cache {settings.cache_name} · attn {model.get('attn_implementation')}"
    summaries = [s for mode in result.modes if (s := result.summary_of(cell.id, mode))]
    columns = [
        Column("mode", lambda s: s.mode, justify="left"),
        Column("n", lambda s: str(s.n)),
        Column("mean ± std (s)", _mean_std),
        Column("min (s)", lambda s: _s(s.min_s), drop=3),
        Column("median (s)", lambda s: _s(s.median_s), drop=3),
        Column("max (s)", lambda s: _s(s.max_s), drop=3),
        Column("tokens/s", lambda s: f"{s.tokens_per_s:.1f}", drop=2),
        Column(
            "first token (ms)",
            lambda s: format_ms(s.time_to_first_token_s * 1000 if s.time_to_first_token_s is not None else None),
            drop=1,
            short="TTFT ms",
        ),
        Column(
            "ms/token early → late",
            lambda s: f"{format_ms(s.early_token_ms)} → {format_ms(s.late_token_ms)}",
            short="ms/tok early→late",
        ),
    ]
    if any(peak_vram(summary)[0] is not None for summary in summaries):
        columns.append(Column("peak VRAM", _vram))
    columns.append(Column("peak RSS", lambda s: format_bytes(s.peak_rss_bytes), drop=1))
    return FittedTable(title, columns, summaries)


def _vram(summary: ModeSummary) -> str:
    value, source = peak_vram(summary)
    return f"{format_bytes(value)} ({source})" if value is not None else "—"


def cell_lines(result: BenchmarkResult, cell: CellResult) -> list[Text]:
    lines: list[Text] = []
    if CellState(cell.status).failed:
        lines.append(plain(f"{cell.status}: {cell.reason}", style="yellow"))
        return lines
    speedup = speedup_of(result, cell)
    if speedup is not None:
        lines.append(plain(f"by mean latency, {speedup}", style="bold"))
    reuse = prefix_words(result, cell)
    if reuse is not None:
        lines.append(plain(reuse, style="bold"))
    for mode in result.modes:
        noisy = noise_warning([run.latency_s for run in result.runs_of(cell.id, mode)])
        if noisy:
            lines.append(plain(f"{mode}: {noisy}", style="yellow"))
    # The reference experiment printed these two lines; keep them so results read side by side.
    for described in MODES_BY_NAME.values():
        summary = result.summary_of(cell.id, described.name)
        if summary is not None:
            std = summary.std_s if summary.std_s is not None else 0.0
            lines.append(plain(f"{described.words}: {round(summary.mean_s, 3)} +- {round(std, 3)} seconds"))
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
        formula = implementation(cell.settings.cache_implementation).formula
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


def energy_words(joules_per_token: float, runs: list[RunRecord]) -> str:
    """Energy per token, with its uncertainty where NVML's counter moves in steps that are a noticeable share
    of a run's energy, and withheld where they are most of it: "1.2 J/token (prefill included)", "0.35
    J/token ±25% (prefill included; NVML's energy counter moves in 12 J steps, every 100 ms)"."""
    from kvbench.hardware.energy import RESOLVED, UNRESOLVED, energy_uncertainty

    known = energy_uncertainty(runs)
    if known is None or known[1] <= RESOLVED:
        return f"{joules_per_token:.3g} J/token (prefill included)"
    step, share, period = known
    counter = f"NVML's energy counter moves in {step:.3g} J steps" + (f", every {period * 1000:.0f} ms" if period else "")
    if share > UNRESOLVED:
        return f"energy per token not resolved ({counter}, {share:.0%} of a run's energy)"
    return f"{joules_per_token:.3g} J/token ±{share:.0%} (prefill included; {counter})"


def metric_lines(result: BenchmarkResult, cell: CellResult, explanation=None) -> list[Text]:
    """Per mode, one compact line of serving metrics (ms unless named) and the roofline fraction."""
    from kvbench.analysis.explain import explain_result

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
            parts.append(energy_words(summary.energy_j_per_token, result.runs_of(cell.id, mode)))
        if parts:
            lines.append(plain(f"{mode}: " + " · ".join(parts)))
    bounds = [b for mode in result.modes if (b := explanation.bound_of(cell.id, mode)) is not None]
    if bounds:
        against = f" ({bounds[0].peaks_for})" if bounds[0].peaks_for else ""
        lines.append(plain(f"roofline{against}: " + "; ".join(bound.words() for bound in bounds)))
    return lines


def prefix_words(result: BenchmarkResult, cell: CellResult) -> str | None:
    """What reusing the shared prefix's cache saved against computing the whole prompt (the cached mode),
    in one line; None without both modes."""
    saving = prefix_saving(result, cell)
    if saving is None:
        return None
    shared = f"{saving.prefix_tokens} of {saving.prompt_tokens or '?'} prompt tokens"
    held = f"; {format_bytes(saving.cache_bytes)} of cache held" if saving.cache_bytes is not None else ""
    copy = f"; its copy {seconds_as_ms(saving.copy_s)} ms a generation, included" if saving.copy_s is not None else ""
    if saving.outputs_match is None:
        outputs = ""
    elif saving.outputs_match:
        outputs = "; outputs token-identical to cached"
    else:
        outputs = f"; outputs differ from cached from new token {saving.first_divergence}"
    return (
        f"prefix reuse ({shared}{held}): first token {seconds_as_ms(saving.ttft_cached_s)} →"
        f" {seconds_as_ms(saving.ttft_prefix_s)} ms ({_ratio_words(saving.ttft_ratio, 'sooner', 'later')}),"
        f" end to end {saving.e2e_cached_s:.3f} → {saving.e2e_prefix_s:.3f} s"
        f" ({_ratio_words(saving.e2e_ratio, 'faster', 'slower')}){copy}{outputs}"
    )


def _ratio_words(test: RatioTest, better: str, worse: str) -> str:
    """ "5.20× sooner, 95% interval 4.1×–6.6×": a ratio of means above 1 in the better direction, below 1 as
    its inverse in the worse one, never "0.45× sooner"."""
    up = test.ratio >= 1
    text = f"{test.ratio if up else 1 / test.ratio:.2f}× {better if up else worse}"
    if test.low is None or test.high is None:
        return text + ", too few runs for an interval"
    low, high = (test.low, test.high) if up else (1 / test.high, 1 / test.low)
    return text + f", {test.confidence:.0%} interval {low:.2f}×–{high:.2f}×" + ("" if test.significant() else ", within noise")


def speedup_of(result: BenchmarkResult, cell: CellResult) -> str | None:
    """What the cache bought in a cell, in words, with its 95% interval; None without both modes."""
    cached, uncached = ([run.latency_s for run in result.runs_of(cell.id, mode.name)] for mode in (CACHED, UNCACHED))
    if not cached or not uncached:
        return None
    return speedup_words(cached_speedup(uncached, cached))
