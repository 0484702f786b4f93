"""The comparison on the terminal: rich tables, regressions in red, then the method note and warnings.

A table that cannot fit the terminal without cutting a word becomes a list, one measurement at a time with
each column's header beside its value, so no label that tells files apart is cut to "…"."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table

from kvbench.compare.formats.grids import (
    change_grid,
    compared_metrics,
    gate_summary,
    means_grid,
    method_note,
    percentile_grid,
    speedup_grid,
    verdict_grid,
)
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


# A file's label longer than this (a results file's name, "gpt2-cpu-200tok-epyc-2core-r2") is shown as a letter,
# with a key above the tables: repeated in every header, and on every line of a list, long names filled the
# width and pushed the tables into lists.
LONGEST_LABEL = 16


def _short_labels(comparison: Comparison) -> tuple[Comparison, str | None]:
    """The comparison with its files lettered A, B, ... where a label is long, and the key to the letters."""
    files = comparison.files
    if all(len(loaded.label) <= LONGEST_LABEL for loaded in files) or len(files) > 26:
        return comparison, None
    letters = [chr(ord("A") + index) for index in range(len(files))]
    key = "\n".join(
        f"{letter} = {loaded.label}{' (the baseline)' if index == comparison.baseline else ''}"
        for index, (letter, loaded) in enumerate(zip(letters, files))
    )
    lettered = [replace(loaded, label=letter) for letter, loaded in zip(letters, files)]
    return replace(comparison, files=lettered), key


def _verdicts_then_figures(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Each other file's change against the baseline with its verdict, per metric, then the figures it comes
    from, each file's mean ± std and peak memory: what a reader looks for first, first."""
    grids = [change_grid(comparison, metric) for metric in compared_metrics(comparison)] + [means_grid(comparison)]
    headers, rows = ["measurement"], [[row.key.label()] for row in comparison.rows]
    for more_headers, more_rows in grids:
        headers += more_headers[1:]
        rows = [row + more[1:] for row, more in zip(rows, more_rows)]
    return headers, rows


def render_comparison(comparison: Comparison) -> Group:
    """The comparison as rich tables, regressions in red, then its warnings."""
    comparison, key = _short_labels(comparison)
    parts: list = [] if key is None else [plain(key)]
    parts.append(_FittedGrid("latency per generate() by file", *_verdicts_then_figures(comparison)))
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
