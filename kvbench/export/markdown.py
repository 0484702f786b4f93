"""Markdown for a pull request: the grids as tables, the method note, then what was not judged and why."""

from __future__ import annotations

from kvbench.compare import Comparison
from kvbench.export.grids import gate_summary, inconclusive_lines, method_note, percentile_grid, speedup_grid, timing_grid
from kvbench.untrusted import printable


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def to_markdown(comparison: Comparison) -> str:
    parts = [_markdown_table(*timing_grid(comparison))]
    for grid in (speedup_grid(comparison), percentile_grid(comparison)):
        if grid[1]:
            parts.append(_markdown_table(*grid))
    parts.append(method_note(comparison))
    lines = [f"> not judged: {line}  " for line in comparison.unjudged]
    lines += [f"> inconclusive: {line}  " for line in inconclusive_lines(comparison)]
    lines += [f"> warning: {w}  " for w in comparison.warnings]
    summary = gate_summary(comparison)
    if summary:
        lines.append(f"> {summary}  ")
    if lines:
        parts.append("\n".join(lines))
    # For a pull request, and often read first on a terminal: the files' text with its controls written out.
    return printable("\n\n".join(parts) + "\n")
