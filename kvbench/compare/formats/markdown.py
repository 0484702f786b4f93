"""Markdown for a pull request: each file's means, then one table per metric of the changes against the
baseline, which KV cache to use (where a file's cells differ only in their cache implementation), what the cache
buys and the serving percentiles; the method note, then what was not judged and why. It fits a GitHub comment:
past the limit, percentiles go first, then the cache's speedups, then the cache verdicts, then unflagged
measurements (never a regression, an inconclusive one or one not judged), and a line says what was left out."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.compare.formats.grids import (
    change_grid,
    compared_metrics,
    gate_summary,
    inconclusive_lines,
    means_grid,
    method_note,
    percentile_grid,
    speedup_grid,
    verdict_grid,
)
from kvbench.compare.judging import Comparison
from kvbench.core.metrics import JUDGED_METRICS
from kvbench.core.untrusted import printable

# GitHub refuses a comment, or a pull request's description, longer than this many characters.
GITHUB_COMMENT_LIMIT = 65_536
# What makes a measurement's row one the gate's reader must see.
FLAGS = ("REGRESSION", "INCONCLUSIVE", "not judged")

Grid = tuple[list[str], list[list[str]]]


@dataclass(frozen=True)
class _Table:
    title: str
    grid: Grid
    by_measurement: bool = True  # one row per measurement (comparison.rows), so rows can be left out


def _cell_text(cell: str) -> str:
    """A table cell from text that may come from a results file: on one line, so it cannot end the row and
    start a heading, and with no markup GitHub would render (a pipe, an HTML tag)."""
    escaped = printable(cell, one_line=True).replace("|", "\\|")
    return escaped.replace("<", "&lt;")  # no tag can open without it; ">" stays readable ("(> 25%)")


def _line_text(line: str) -> str:
    """A quoted line from text that may come from a results file: on one line and with no HTML tag."""
    return printable(line, one_line=True).replace("<", "&lt;")


def _markdown_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_cell_text(cell) for cell in cells) + " |"

    return "\n".join([f"**{title}**", "", line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def _document(comparison: Comparison, tables: list[_Table], kept: set[int] | None, extras: list[str]) -> str:
    """The markdown of these tables, with only the measurements `kept` (by row) where it is given."""
    parts = []
    for table in tables:
        headers, rows = table.grid
        if kept is not None and table.by_measurement:
            rows = [row for index, row in enumerate(rows) if index in kept]
        if rows:
            parts.append(_markdown_table(table.title, headers, rows))
    parts.append(method_note(comparison))
    lines = [f"> not judged: {line}" for line in comparison.unjudged]
    lines += [f"> inconclusive: {line}" for line in inconclusive_lines(comparison)]
    lines += [f"> warning: {w}" for w in comparison.warnings]
    lines += [f"> {extra}" for extra in extras]
    summary = gate_summary(comparison)
    if summary:
        lines.append(f"> {summary}")
    # A line may quote a results file (a failed cell's reason): on one line, so it stays in the quote.
    lines = [f"{_line_text(line)}  " for line in lines]
    if lines:
        parts.append("\n".join(lines))
    # For a pull request, and often read first on a terminal: the files' text with its controls written out.
    return printable("\n\n".join(parts) + "\n")


def to_markdown(comparison: Comparison, limit: int = GITHUB_COMMENT_LIMIT) -> str:
    base = comparison.files[comparison.baseline].label
    tables = [_Table("mean ± std and peak memory, by file", means_grid(comparison))]
    tables += [
        _Table(f"change in {JUDGED_METRICS[metric].label} against {base}", change_grid(comparison, metric))
        for metric in compared_metrics(comparison)
    ]
    tables.append(_Table("which KV cache, against the dynamic cache, by file", verdict_grid(comparison), by_measurement=False))
    tables.append(_Table("what the KV cache buys, by file", speedup_grid(comparison), by_measurement=False))
    tables.append(_Table("serving metrics, by file (ms unless named)", percentile_grid(comparison), by_measurement=False))
    text = _document(comparison, tables, None, [])
    # Past the limit, drop the least needed first: percentiles, the speedups, the cache verdicts, then
    # unflagged measurements.
    for dropped in (1, 2, 3):
        if len(text) <= limit:
            return text
        left_out = ", ".join(table.title for table in tables[-dropped:] if table.grid[1]) or "nothing"
        text = _document(comparison, tables[:-dropped], None, [f"left out to fit a GitHub comment: {left_out}"])
    if len(text) <= limit:
        return text
    return _fewer_measurements(comparison, tables[:-3], limit)


def _fewer_measurements(comparison: Comparison, tables: list[_Table], limit: int) -> str:
    total = len(comparison.rows)
    flagged = {
        index
        for index in range(total)
        if any(flag in cell for table in tables for cell in table.grid[1][index] for flag in FLAGS)
    }
    others = [index for index in range(total) if index not in flagged]

    def with_others(count: int) -> str:
        kept = flagged | set(others[:count])
        note = (
            f"{total - len(kept)} of {total} measurements left out to fit a GitHub comment ({limit:,} characters),"
            " with the percentiles, the cache's speedups and the cache verdicts; every regression, inconclusive or"
            " unjudged one is here; --format csv has them all"
        )
        text = _document(comparison, tables, kept, [note])
        if count == 0 and len(text) > limit:
            # The flagged measurements alone are too many: say so rather than post what GitHub refuses.
            text = _document(comparison, tables, kept, [note, f"still {len(text):,} characters: post --format csv instead"])
        return text

    fewest, most = 0, len(others)  # the most unflagged rows that fit, by bisection
    while fewest < most:
        middle = (fewest + most + 1) // 2
        if len(with_others(middle)) <= limit:
            fewest = middle
        else:
            most = middle - 1
    return with_others(fewest)
