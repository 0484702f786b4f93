"""A comparison in every form `kvbench compare --format` offers: one module per format behind one interface,
the grids they share in `grids`. A new format is a module and a line in FORMATS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvbench.compare.formats import benchmark_action, csv_rows, json_document, markdown, table
from kvbench.compare.judging import Comparison


@dataclass(frozen=True)
class Format:
    """`render` makes text, or a rich renderable for the terminal. A format with no place for warnings
    leaves them to be printed beside it (on stderr)."""

    name: str
    render: Callable[[Comparison], Any]
    holds_warnings: bool
    one_file_is_enough: bool = False  # a format that exports one file's figures, with nothing to judge
    purpose: str = ""  # what --help says it is for, in brackets after its name


FORMATS = {
    item.name: item
    for item in (
        Format("table", table.render_comparison, holds_warnings=True),
        Format("markdown", markdown.to_markdown, holds_warnings=True, purpose="for a pull request"),
        Format("csv", csv_rows.to_csv, holds_warnings=False),
        Format("json", json_document.to_json, holds_warnings=True),
        Format(
            "benchmark-action",
            benchmark_action.to_benchmark_action,
            holds_warnings=False,
            one_file_is_enough=True,
            purpose="github-action-benchmark's customSmallerIsBetter JSON, from the last file; one file is enough",
        ),
    )
}


def formats_help() -> str:
    """Every format by name, with what each is for: `compare --format`'s help."""
    named = [f"{item.name} ({item.purpose})" if item.purpose else item.name for item in FORMATS.values()]
    return ", ".join(named[:-1]) + ", or " + named[-1] + "."


def format_named(name: str) -> Format:
    from kvbench.core.errors import KvbenchError

    if name not in FORMATS:
        raise KvbenchError(f"--format cannot be {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]
