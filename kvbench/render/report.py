"""A results file on the terminal, as `kvbench run` printed it and `kvbench show` prints it again; the one-line
summary; the dry run's plan."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console, Group, RenderableType
from rich.table import Table

from kvbench.analysis.cache_choice import DEFAULT_MIN_TOP1_AGREEMENT
from kvbench.core.eta import clock_text
from kvbench.core.stats import cached_speedup, speedup_brief
from kvbench.model.modes import CACHED, MODES, UNCACHED
from kvbench.model.phases import time_spent
from kvbench.model.records import BenchmarkResult, CellState
from kvbench.render.cells import cell_lines, cell_table
from kvbench.render.text import add_row, output_console, plain
from kvbench.render.verdicts import cache_verdict_parts, fit_table, what_fits_parts


def render_result(
    result: BenchmarkResult,
    gpu_memory_bytes: tuple[int, ...] | None = None,
    min_top1_share: float = DEFAULT_MIN_TOP1_AGREEMENT,
) -> Group:
    """The results file, its verdict first: where cells differ only in their cache implementation, which cache
    to use heads it, then each cell, then what fits and where the time went."""
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
    parts.extend(cache_verdict_parts(result, min_top1_share))
    for cell in result.cells:
        if cell.status == CellState.PENDING:
            continue
        if any(result.runs_of(cell.id, mode) for mode in MODES):
            parts.append(cell_table(result, cell))
        else:
            parts.append(plain(cell.id, style="bold"))
        parts.extend(cell_lines(result, cell))
    parts.extend(what_fits_parts(result, gpu_memory_bytes))
    fits = fit_table(result)
    if fits is not None:
        parts.append(fits)
    from kvbench.analysis.explain import explain_result

    for peaks in explain_result(result).peaks:
        parts.append(plain(f"roofline peaks: {peaks.source}", style="dim"))
    spent = phases_line(result)
    if spent is not None:
        parts.append(plain(spent, style="dim"))
    pending = [cell.id for cell in result.cells if cell.status == CellState.PENDING]
    if pending:
        parts.append(plain(f"not run: {len(pending)} cell(s)", style="yellow"))
    for note in result.notes:
        parts.append(plain(f"note: {note}", style="cyan"))
    for what, why in result.unmeasured.items():
        parts.append(plain(f"not measured: {what.replace('_', ' ')}: {why}", style="dim"))
    return Group(*parts)


def phases_line(result: BenchmarkResult) -> str | None:
    """Where the measuring time went, phase by phase, as shares of it: one line for the whole sweep."""
    spent = time_spent(cell.phases_s for cell in result.cells)
    total = sum(spent.values())
    if not total > 0:
        return None
    shares = [(phase, seconds / total) for phase, seconds in spent.items()]
    shown = ", ".join(
        f"{phase.replace('_', ' ')} {share:.0%}" for phase, share in sorted(shares, key=lambda s: -s[1]) if share >= 0.005
    )
    return f"time: {clock_text(total)} measuring: {shown}"


def one_line_summary(result: BenchmarkResult) -> list[str]:
    """One line per measured cell, to paste into a pull request or an issue: the verdict first, then the
    means it comes from, within about 120 characters."""
    device = result.environment.get("device_name") or result.environment.get("device")
    lines = []
    for cell in result.cells:
        summaries = [summary for mode in result.modes if (summary := result.summary_of(cell.id, mode))]
        if not summaries:
            continue
        cached, uncached = ([run.latency_s for run in result.runs_of(cell.id, mode.name)] for mode in (CACHED, UNCACHED))
        counts = {summary.n for summary in summaries}
        n = f"n={counts.pop()}" if len(counts) == 1 else "n=" + "/".join(str(summary.n) for summary in summaries)
        if cached and uncached:
            by_mode = {summary.mode: summary.mean_s for summary in summaries}
            means = f"{by_mode[CACHED.name]:.3f} vs {by_mode[UNCACHED.name]:.3f} s"
            figures = f"{speedup_brief(cached_speedup(uncached, cached))}: {means}, {n}"
        else:
            figures = ", ".join(f"{summary.mode} {summary.mean_s:.3f} s" for summary in summaries) + f" ({n})"
        lines.append(f"{cell.label()}: {figures} · {device}")
    return lines


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
        add_row(table, [str(index), cell.label(), what])
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


def print_result(
    result: BenchmarkResult,
    console: Console | None = None,
    gpu_memory_bytes: tuple[int, ...] | None = None,
    min_top1_share: float = DEFAULT_MIN_TOP1_AGREEMENT,
) -> None:
    """The results file as `kvbench show` prints it; `gpu_memory_bytes` chooses the what-fits sizes,
    `min_top1_share` the tolerance for agreement the recommendation holds a cache to."""
    (console or output_console()).print(render_result(result, gpu_memory_bytes, min_top1_share))
