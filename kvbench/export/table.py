"""The comparison on the terminal: rich tables, regressions in red, then the method note and warnings."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kvbench.compare import Comparison
from kvbench.export.grids import method_note, percentile_grid, speedup_grid, timing_grid


def render_comparison(comparison: Comparison) -> Group:
    """The comparison as rich tables, regressions in red, then its warnings."""
    headers, rows = timing_grid(comparison)
    table = Table(title="latency per generate() by file", title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for cells in rows:
        style = "red" if any("REGRESSION" in cell for cell in cells) else None
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
        described = []
        for row, index in regressions:
            entry = row.entries[index]
            assert entry is not None  # only a measurement in the file can be a regression
            described.append(f"{row.key.label()} in {comparison.files[index].label} ({entry.change_pct:+.1f}%)")
        parts.append(
            Text(
                f"{len(regressions)} regression(s) beyond {comparison.threshold_pct:g}%: " + "; ".join(described),
                style="bold red",
            )
        )
    return Group(*parts)
