"""The comparison on the terminal: rich tables, regressions in red, then the method note and warnings.

A table that cannot fit the terminal without cutting a word becomes a list, one measurement at a time with
each column's header beside its value, so no label that tells files apart is cut to "…"."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table

from kvbench.compare.formats.grids import gate_summary, method_note, percentile_grid, speedup_grid, timing_grid, verdict_grid
from kvbench.compare.judging import Comparison
from kvbench.render.text import plain


class _FittedGrid:
    """One grid (headers and rows of text) as a table where it fits the width, else as a list."""

    def __init__(self, title: str, headers: list[str], rows: list[list[str]], left_aligned: bool = False) -> None:
        self.title, self.headers, self.rows, self.left_aligned = title, headers, rows, left_aligned

    def _style(self, cells: list[str]) -> str:
        if any("REGRESSION" in cell for cell in cells):
            return "red"
        return "yellow" if any("INCONCLUSIVE" in cell for cell in cells) else ""

    def table(self) -> Table:
        table = Table(title=plain(self.title), title_justify="left")
        for index, header in enumerate(self.headers):
            table.add_column(plain(header), justify="left" if index == 0 or self.left_aligned else "right")
        for cells in self.rows:
            table.add_row(*map(plain, cells), style=self._style(cells))
        return table

    def listed(self) -> Group:
        lines = [plain(self.title, style="italic")]
        for cells in self.rows:
            style = self._style(cells)
            lines.append(plain(cells[0], style=f"bold {style}".strip()))
            # A "—" (no such figure in that file) is left out: across unrelated sweeps nearly every line is one.
            shown = [(header, cell) for header, cell in zip(self.headers[1:], cells[1:]) if cell != "—"]
            lines += [plain(f"  {header}: {cell}", style=style) for header, cell in shown]
        return Group(*lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        # Rich wraps a cell at its spaces, and cuts a word longer than its column (a file's label) to "…":
        # the table is drawn only where it comes out whole.
        lines = console.render_lines(table, options, pad=False)
        cut = any(segment.text.endswith("…") for line in lines for segment in line)
        yield self.listed() if cut else table


def render_comparison(comparison: Comparison) -> Group:
    """The comparison as rich tables, regressions in red, then its warnings."""
    parts: list = [_FittedGrid("latency per generate() by file", *timing_grid(comparison))]
    speedups = speedup_grid(comparison)
    if speedups[1]:
        parts.append(_FittedGrid("what the KV cache buys, by file", *speedups))
    verdicts = verdict_grid(comparison)
    if verdicts[1]:
        parts.append(_FittedGrid("which KV cache, against the dynamic cache, by file", *verdicts, left_aligned=True))
    percentiles = percentile_grid(comparison)
    if percentiles[1]:
        parts.append(_FittedGrid("serving metrics, by file", *percentiles, left_aligned=True))
    parts.append(plain(method_note(comparison), style="dim"))
    for warning in comparison.warnings:
        parts.append(plain(f"warning: {warning}", style="yellow"))
    regressions = comparison.regressions
    if regressions:
        described = []
        for row, index in regressions:
            entry = row.entries[index]
            assert entry is not None  # only a measurement in the file can be a regression
            change = entry.change_of(comparison.gate_metric)
            shown = f"{change:+.1f}%" if change is not None else "no change measured"
            described.append(f"{row.key.label()} in {comparison.files[index].label} ({shown})")
        parts.append(
            plain(
                f"{len(regressions)} regression(s) beyond {comparison.threshold_pct:g}%: " + "; ".join(described),
                style="bold red",
            )
        )
    summary = gate_summary(comparison)
    if summary:
        parts.append(plain(summary, style="bold green" if comparison.outcome == "pass" else "bold red"))
    return Group(*parts)
