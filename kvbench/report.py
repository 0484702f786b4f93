"""Terminal rendering of one results file: rich tables, the speedup, and what was not measured."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kvbench.config import MODES
from kvbench.records import BenchmarkResult, CellResult, CellState, ModeSummary
from kvbench.stats import cached_speedup, noise_warning, speedup_words
from kvbench.units import format_bytes


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


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "—"


def cell_table(result: BenchmarkResult, cell: CellResult) -> Table:
    settings = cell.settings
    model = cell.model or {}
    weights = model.get("weights", "?")
    title = (
        f"{settings.model} · {weights.upper() if weights == 'random' else weights} weights · "
        f"{model.get('dtype', settings.dtype)} · batch {settings.batch_size} · "
        f"{cell.prompt_tokens} prompt ({cell.prompt_source}) + {settings.max_new_tokens} new tokens"
    )
    if settings.cache_implementation != "dynamic" or settings.attn_implementation != "auto":
        title += f" · cache {settings.cache_implementation} · attn {model.get('attn_implementation')}"
    summaries = [s for mode in result.modes if (s := result.summary_of(cell.id, mode))]
    show_vram = any(peak_vram(summary)[0] is not None for summary in summaries)
    table = Table(title=title, title_justify="left")
    table.add_column("mode", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("mean ± std (s)", justify="right", no_wrap=True)
    table.add_column("min (s)", justify="right")
    table.add_column("median (s)", justify="right")
    table.add_column("max (s)", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("first token (ms)", justify="right")
    table.add_column("ms/token early → late", justify="right", no_wrap=True)
    if show_vram:
        table.add_column("peak VRAM", justify="right")
    table.add_column("peak RSS", justify="right")
    for summary in summaries:
        ttft = summary.time_to_first_token_s
        row = [
            summary.mode,
            str(summary.n),
            _mean_std(summary),
            _s(summary.min_s),
            _s(summary.median_s),
            _s(summary.max_s),
            f"{summary.tokens_per_s:.1f}",
            _ms(ttft * 1000 if ttft is not None else None),
            f"{_ms(summary.early_token_ms)} → {_ms(summary.late_token_ms)}",
        ]
        if show_vram:
            value, source = peak_vram(summary)
            row.append(f"{format_bytes(value)} ({source})" if value is not None else "—")
        row.append(format_bytes(summary.peak_rss_bytes))
        table.add_row(*row)
    return table


def cell_lines(result: BenchmarkResult, cell: CellResult) -> list[Text]:
    lines: list[Text] = []
    if CellState(cell.status).failed:
        lines.append(Text(f"{cell.status}: {cell.reason}", style="yellow"))
        return lines
    speedup = speedup_of(result, cell)
    if speedup is not None:
        lines.append(Text(f"by mean latency, {speedup}", style="bold"))
    for mode in result.modes:
        noisy = noise_warning([run.latency_s for run in result.runs_of(cell.id, mode)])
        if noisy:
            lines.append(Text(f"{mode}: {noisy}", style="yellow"))
    # The reference experiment printed these two lines; keep them so results read side by side.
    for mode, words in (("cached", "with KV caching"), ("uncached", "without KV caching")):
        summary = result.summary_of(cell.id, mode)
        if summary is not None:
            std = summary.std_s if summary.std_s is not None else 0.0
            lines.append(Text(f"{words}: {round(summary.mean_s, 3)} +- {round(std, 3)} seconds"))
    lines.extend(kv_cache_lines(result, cell))
    lines.extend(metric_lines(result, cell))
    if cell.stop_reason:
        lines.append(Text(f"runs: {cell.stop_reason}", style="dim"))
    for mode in result.modes:
        summary = result.summary_of(cell.id, mode)
        if summary is None or not summary.outlier_runs:
            continue
        runs = {run.run: run.latency_s for run in result.runs_of(cell.id, mode)}
        shown = ", ".join(f"run {i + 1} ({runs[i]:.3f} s)" for i in summary.outlier_runs if i in runs)
        lines.append(
            Text(
                f"outlier{'s' if len(summary.outlier_runs) > 1 else ''} in {mode}: {shown} against a median of"
                f" {summary.median_s:.3f} s — a stall or a first-run compile? more --warmup or --runs may help",
                style="yellow",
            )
        )
    if cell.outputs_match is True:
        lines.append(Text("cached and uncached outputs are token-identical", style="green"))
    elif cell.outputs_match is False:
        lines.append(
            Text(
                f"cached and uncached outputs differ from new token {cell.first_divergence} on",
                style="red",
            )
        )
    if cell.status == CellState.INCOMPLETE:
        lines.append(Text("incomplete: this cell was interrupted", style="yellow"))
    return lines


def kv_cache_lines(result: BenchmarkResult, cell: CellResult) -> list[Text]:
    """The cache's size as measured on its object beside the theory, and what memory figures cannot show."""
    lines = []
    if cell.kv_cache_measured_bytes is not None and cell.kv_cache_theory_bytes:
        agrees = cell.kv_cache_agrees
        relation = "=" if agrees else "≠"
        difference = cell.kv_cache_measured_bytes / cell.kv_cache_theory_bytes - 1
        text = (
            f"KV cache measured: {format_bytes(cell.kv_cache_measured_bytes)} ({cell.kv_cache_class},"
            f" {cell.kv_cache_positions} positions) {relation} theory {format_bytes(cell.kv_cache_theory_bytes)}"
            f" ({difference:+.2%}; 2 × layers × kv_heads × head_dim × positions × batch × bytes)"
        )
        lines.append(Text(text, style=None if agrees else "yellow"))
    elif cell.kv_cache_bytes is not None:
        lines.append(
            Text(
                f"KV cache at {cell.prompt_tokens} + {cell.settings.max_new_tokens} tokens: "
                f"{format_bytes(cell.kv_cache_bytes)} in theory (its object was not measured in this file)"
            )
        )
    if cell.kv_cache_note:
        lines.append(Text(f"KV cache: {cell.kv_cache_note}", style="yellow"))
    difference = memory_difference(result, cell.id)
    if difference is not None:
        lines.append(Text(f"peak {difference[1]}, cached − uncached: {format_bytes(difference[0])}"))
    elif cell.kv_cache_measured_bytes is not None and not result.environment.get("gpu_name"):
        lines.append(
            Text(
                "peak RSS cannot show the cache's cost: a cache this size is lost beside the model and the"
                " allocator's reuse, so only the cache object's own bytes are reported",
                style="dim",
            )
        )
    return lines


def metric_lines(result: BenchmarkResult, cell: CellResult, explanation=None) -> list[Text]:
    """Per mode, one compact line of serving metrics (ms unless named) and the roofline fraction."""
    from kvbench.explain import explain_result
    from kvbench.export import serving_parts

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
            lines.append(Text(f"{mode}: " + " · ".join(parts)))
    bounds = [b for mode in result.modes if (b := explanation.bound_of(cell.id, mode)) is not None]
    if bounds:
        lines.append(Text("roofline: " + "; ".join(bound.words() for bound in bounds)))
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
            table.add_row(fit.group, "—", "—", "—", "—")
            notes.append(f"{fit.group}: {fit.reason}")
            continue

        def exponent(power) -> str:
            error = f" ± {power.exponent_stderr:.2f}" if power.exponent_stderr is not None else ""
            return f"{power.exponent:.2f}{error}"

        crossing = (
            f"{fitted.crossover_new_tokens:.1f} tokens" if fitted.crossover_new_tokens is not None else "none"
        )
        longest = fitted.longest_new_tokens
        table.add_row(
            fit.group,
            exponent(fitted.cached),
            exponent(fitted.uncached),
            crossing,
            f"{fitted.speedup_at_2x:.2f}× at {2 * longest} / {fitted.speedup_at_10x:.2f}× at {10 * longest}",
        )
        notes.append(f"{fit.group}: {fitted.exponent_gap_reason}; {fitted.crossover_reason}")
    return Group(table, *(Text(note) for note in notes))


def render_result(result: BenchmarkResult) -> Group:
    environment = result.environment
    parts: list = [
        Text(
            f"{environment.get('device_name') or environment.get('device')} ({environment.get('device')}) · "
            f"torch {environment.get('torch')} · transformers {environment.get('transformers')} · "
            f"kvbench {result.kvbench_version}",
            style="dim",
        )
    ]
    if not result.complete:
        parts.append(Text("INCOMPLETE: the run was interrupted; these are the runs it finished", style="bold yellow"))
    for cell in result.cells:
        if cell.status == CellState.PENDING:
            continue
        if result.runs_of(cell.id, "cached") or result.runs_of(cell.id, "uncached"):
            parts.append(cell_table(result, cell))
        else:
            parts.append(Text(cell.id, style="bold"))
        parts.extend(cell_lines(result, cell))
    fits = fit_table(result)
    if fits is not None:
        parts.append(fits)
    from kvbench.explain import peaks_of

    peaks = peaks_of(result.environment)
    if peaks is not None:
        parts.append(Text(f"roofline peaks: {peaks.source}", style="dim"))
    pending = [cell.id for cell in result.cells if cell.status == CellState.PENDING]
    if pending:
        parts.append(Text(f"not run: {len(pending)} cell(s)", style="yellow"))
    for note in result.notes:
        parts.append(Text(f"note: {note}", style="cyan"))
    for what, why in result.unmeasured.items():
        parts.append(Text(f"not measured: {what.replace('_', ' ')}: {why}", style="dim"))
    return Group(*parts)


def render_comparison(comparison) -> Group:
    """The comparison as rich tables, regressions in red, then its warnings."""
    from kvbench.export import gate_summary, method_note, percentile_grid, speedup_grid, timing_grid

    headers, rows = timing_grid(comparison)
    table = Table(title="latency per generate() by file", title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for cells in rows:
        style = None
        if any("REGRESSION" in cell for cell in cells):
            style = "red"
        elif any("INCONCLUSIVE" in cell for cell in cells):
            style = "yellow"
        table.add_row(*cells, style=style)
    parts: list = [table]
    titles = {speedup_grid: "what the KV cache buys, by file", percentile_grid: "serving metrics, by file"}
    for grid, title in titles.items():
        grid_headers, grid_rows = grid(comparison)
        if not grid_rows:
            continue
        grid_table = Table(title=title, title_justify="left")
        for index, header in enumerate(grid_headers):
            grid_table.add_column(header, justify="left" if index == 0 or grid is percentile_grid else "right")
        for cells in grid_rows:
            grid_table.add_row(*cells)
        parts.append(grid_table)
    parts.append(Text(method_note(comparison), style="dim"))
    for warning in comparison.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    regressions = comparison.regressions
    if regressions:
        parts.append(
            Text(
                f"{len(regressions)} regression(s) beyond {comparison.threshold_pct:g}%: "
                + "; ".join(
                    f"{row.key.label()} in {comparison.files[i].label} ({row.entries[i].change_pct:+.1f}%)"
                    for row, i in regressions
                ),
                style="bold red",
            )
        )
    summary = gate_summary(comparison)
    if summary:
        style = "bold green" if comparison.outcome == "pass" else "bold red"
        parts.append(Text(summary, style=style))
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
                console.print(Text(f"{cell.label()}: no generated text (the model has no tokenizer)", style="dim"))
            continue
        for mode, text in cell.generated_text.items():
            console.print(Text(f"{cell.label()} · {mode} generated:", style="bold"))
            console.print(Text(text))


def render_plan(plan, output) -> Group:
    """What `run --dry-run` found: every cell, what will happen to it, and the number of generations."""
    table = Table(title="dry run: nothing measured", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("cell")
    table.add_column("what happens")
    for index, (cell, what) in enumerate(plan.cells, start=1):
        table.add_row(str(index), cell.label(), what)
    fewest, most = plan.runs_per_mode
    runs = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    lines = [
        table,
        Text(f"{plan.generations} generations at most ({runs} measured runs per mode, plus warmup)"),
        Text(f"results would go to {output}" if output else "results would go to stdout only", style="dim"),
        Text("time: unknown until a cell is measured on this machine (uncached time grows with length²)", style="dim"),
    ]
    return Group(*lines)


def output_console(stderr: bool = False) -> Console:
    """A console that keeps tables whole when the output goes to a file or a pipe (rich would wrap them
    at 80 columns), so they paste into an issue as they looked."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=240)
    return console


def print_result(result: BenchmarkResult, console: Console | None = None) -> None:
    (console or output_console()).print(render_result(result))
