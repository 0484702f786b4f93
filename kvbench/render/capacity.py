"""`kvbench capacity` on the terminal: a line per probe as it is measured, then per cache implementation the
longest context and largest batch that fit, the first value that did not, and the extrapolation beside them."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from kvbench.analysis.cache_choice import WHAT_FITS_COUNTS
from kvbench.core.units import format_bytes
from kvbench.model.capacity import CONTEXT, CapacityReport, Probe, Search
from kvbench.render.tables import Column, FittedTable
from kvbench.render.text import plain


def memory_text(value: int) -> str:
    """Bytes precisely enough to tell a peak from the budget beside it: MiB to a tenth below 10 GiB ("1,019.2
    MiB"), GiB to a hundredth above."""
    if value < 10 * 2**30:
        return f"{value / 2**20:,.1f} MiB"
    return f"{value / 2**30:,.2f} GiB"


def what_is_searched(search: Search) -> str:
    """ "longest context at batch 1", "largest batch at 1,024 tokens"."""
    if search.find == CONTEXT:
        return "longest context at batch 1"
    return f"largest batch at {search.context:,} tokens"


def probed_value(search: Search, value: int) -> str:
    """One probe's setting in words: "context 4,096 tokens", "batch 12 at 1,024 tokens"."""
    if search.find == CONTEXT:
        return f"context {value:,} tokens"
    return f"batch {value:,} at {search.context:,} tokens"


def peak_text(probe: Probe) -> str:
    """A probe's peak, or how it failed: "1.2 GiB RSS", "out of memory"."""
    if probe.out_of_memory:
        return "out of memory"
    if probe.failure is not None:
        return "failed"
    if probe.peak_bytes is None:
        return "peak not measured"
    return f"{memory_text(probe.peak_bytes)} {probe.peak_source or ''}".rstrip()


def probe_line(report: CapacityReport, search: Search, probe: Probe) -> Text:
    """The progress line of one probe, printed as it is measured."""
    verdict = "fits" if probe.fits else "does not fit"
    if probe.out_of_memory:
        why = f"out of memory: {verdict}; the next probe runs in a fresh process"
    elif probe.failure is not None:
        why = f"failed ({probe.failure})"
    elif report.budget_bytes is not None and probe.peak_bytes is not None:
        side = "<=" if probe.peak_bytes <= report.budget_bytes else ">"
        why = f"peak {peak_text(probe)} {side} {memory_text(report.budget_bytes)}: {verdict}"
    else:
        why = f"peak {peak_text(probe)}: {verdict}"
    took = f" ({probe.seconds:.1f} s)" if probe.seconds is not None else ""
    text = f"{search.cache} · {probed_value(search, probe.value)}: {why}{took}"
    return plain(text, style="green" if probe.fits else "yellow")


def _fit_text(search: Search) -> str:
    probe = search.probe_of(search.largest)
    if search.largest is None or probe is None:
        return "none"
    # Everything probed fit: the capacity is at least this.
    at_least = "≥ " if search.first_failure is None else ""
    return f"{at_least}{search.largest:,} ({peak_text(probe)})"


def _failure_text(search: Search) -> str:
    probe = search.probe_of(search.first_failure)
    if search.first_failure is None or probe is None:
        return "—"
    return f"{search.first_failure:,} ({peak_text(probe)})"


def _estimate_text(search: Search) -> str:
    if search.estimate is None:
        return "—"
    return f"{'≥ ' if search.estimate_at_limit else ''}{search.estimate:,}"


def _ratio_text(search: Search) -> str:
    ratio = search.ratio
    if ratio is None:
        return "—"
    return f"{'≤ ' if search.estimate_at_limit else ''}{ratio:.2f}×"


def capacity_table(report: CapacityReport) -> FittedTable:
    """Per cache implementation and search: the largest value that fit with its peak, the first above it that
    did not, and the extrapolated what-fits figure for the same memory; a narrow terminal loses the ratio,
    then the failure."""
    columns = [
        Column("cache", lambda search: search.cache, justify="left"),
        Column("what", what_is_searched, justify="left"),
        Column("fits at (peak)", _fit_text),
        Column("not at (peak)", _failure_text, drop=2, short="not at"),
        Column("extrapolated", _estimate_text, short="extrap."),
        Column("measured ÷ extrapolated", _ratio_text, drop=1, short="ratio"),
    ]
    title = (
        f"capacity: {report.model} · {report.dtype} · {report.device} · {report.max_new_tokens} new tokens,"
        f" within {report.memory_source}"
    )
    return FittedTable(title, columns, report.searches)


def capacity_notes(report: CapacityReport) -> list[str]:
    """What the table's figures mean, how each search ended and what the extrapolation counts."""
    if report.out_of_memory_decides and report.budget_bytes is None:
        rule = f"a probe fits when its generation does not run out of {report.device}'s memory"
    elif report.out_of_memory_decides:
        rule = "a probe fits when it does not run out of the GPU's memory and its peak stays within the budget"
    else:
        rule = "a probe fits when its measuring process's peak RSS stays within the budget"
    probes = sum(len(search.probes) for search in report.searches)
    notes = [
        f"{rule}; {probes} probes, each one generation in a measuring process ({report.processes_started} started,"
        " a fresh one after a probe that failed or ran out of memory)",
        f"weights: {report.parameters:,} parameters, {format_bytes(report.weight_bytes)} in {report.dtype}",
    ]
    for search in report.searches:
        notes.append(f"{search.cache}, {what_is_searched(search)}: {search.stopped}")
        if search.estimate_at_limit:
            notes.append(
                f"{search.cache}, {what_is_searched(search)}: the extrapolation stops at the model's position limit"
                f" ({search.estimate:,} prompt tokens before the new ones); its count allows more, so that figure is"
                " a lower bound and the ratio an upper one"
            )
        if search.estimate_missing is not None:
            notes.append(f"{search.cache}, {what_is_searched(search)}: no extrapolation: {search.estimate_missing}")
    baseline = report.process_baseline_bytes
    if baseline is not None:
        memory = (
            f"{memory_text(report.memory_bytes)} less the {memory_text(baseline)} a measuring process held before it"
            f" loaded the model (the interpreter, torch and transformers, which a peak RSS includes),"
            f" {memory_text(report.memory_bytes - baseline)},"
        )
    else:
        memory = f"{memory_text(report.memory_bytes)}"
    notes.append(f"extrapolated: the what-fits figure for {memory} from the largest probe that fit; {WHAT_FITS_COUNTS}")
    if not report.out_of_memory_decides and baseline is None:
        notes.append(
            "a peak RSS holds the interpreter, torch and transformers too (several hundred MiB), which the"
            " extrapolation does not count"
        )
    if not report.complete:
        notes.append("interrupted: the searches above are those measured before it stopped")
    return notes + report.notes


def capacity_report(report: CapacityReport) -> RenderableType:
    """The table and its notes."""
    return Group(capacity_table(report), *(plain(note, style="dim") for note in capacity_notes(report)))
