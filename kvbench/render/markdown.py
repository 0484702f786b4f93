"""One results file as markdown, to paste into a pull request or an issue (as hyperfine's
--export-markdown is pasted): each cell's table of modes with every column `kvbench show` can draw, then
what the cache bought there."""

from __future__ import annotations

from kvbench.core.untrusted import printable
from kvbench.model.modes import MODES
from kvbench.model.records import BenchmarkResult, CellState
from kvbench.render.cells import cell_table, speedup_of


def _cell_text(text: str) -> str:
    """A table cell from text that may come from a results file: on one line, so it cannot end the row, and
    with no markup GitHub would render (a pipe, an HTML tag)."""
    return printable(text, one_line=True).replace("|", "\\|").replace("<", "&lt;")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_cell_text(cell) for cell in cells) + " |"


def result_markdown(result: BenchmarkResult) -> str:
    environment = result.environment
    lines = [
        _cell_text(
            f"{environment.get('device_name') or environment.get('device')} ({environment.get('device')}) · "
            f"torch {environment.get('torch')} · transformers {environment.get('transformers')} · "
            f"kvbench {result.kvbench_version}"
        )
    ]
    if not result.complete:
        lines += ["", "**INCOMPLETE**: the run was interrupted; these are the runs it finished"]
    for cell in result.cells:
        if cell.status == CellState.PENDING:
            continue
        lines.append("")
        if not any(result.runs_of(cell.id, mode) for mode in MODES):
            lines.append(f"**{_cell_text(cell.id)}**: {_cell_text(f'{cell.status} ({cell.reason})')}")
            continue
        table = cell_table(result, cell)
        lines += [f"**{_cell_text(table.title)}**", "", _row([column.header for column in table.columns])]
        lines.append("|" + "|".join(" ---: " if column.justify == "right" else " --- " for column in table.columns) + "|")
        lines += [_row([column.value(summary) for column in table.columns]) for summary in table.summaries]
        speedup = speedup_of(result, cell)
        if speedup is not None:
            lines += ["", _cell_text(speedup)]
        if CellState(cell.status).failed:
            lines += ["", _cell_text(f"{cell.status}: {cell.reason}")]
    return "\n".join(lines) + "\n"
