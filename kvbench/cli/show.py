"""`kvbench show`: one results file, rendered as `kvbench run` printed it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from kvbench.analysis.cache_choice import DEFAULT_MIN_TOP1_AGREEMENT
from kvbench.cli.app import stdout, user_errors
from kvbench.core.errors import KvbenchError

SHOW_FORMATS = ("table", "markdown")


def show(
    file: Path = typer.Argument(..., help="A results .json written by kvbench run."),
    show_output: bool = typer.Option(
        False, "--show-output", metavar="", help="Also print the text each mode generated, where it was recorded."
    ),
    gpu_memory: Optional[list[str]] = typer.Option(
        None,
        "--gpu-memory",
        metavar="SIZE",
        help="The GPU memory size the what-fits figures are for, such as 80GiB, 24GB or 16G (G: GiB); repeat for"
        " several. Shown where cells differ only in their cache implementation. \\[default: 24, 40, 80 and 140 GiB]",
        show_default=False,
    ),
    min_agreement: float = typer.Option(
        DEFAULT_MIN_TOP1_AGREEMENT * 100,
        "--min-agreement",
        metavar="PERCENT",
        help="The tolerance for agreement the recommendation under a which-cache verdict holds a cache to: the"
        " least share of positions, in percent, whose most likely next token agrees with the dynamic cache's (the"
        " top-1 column).",
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table: as kvbench run printed it; markdown: each cell's table with every column and its speedup, to"
        " paste into a pull request or an issue.",
    ),
) -> None:
    """Render one results file as `kvbench run` printed it."""
    with user_errors():
        from kvbench.core.units import parse_bytes
        from kvbench.render.report import one_line_summary, print_generated_text, print_result
        from kvbench.storage.document import read_result

        sizes = tuple(parse_bytes(size) for size in gpu_memory) if gpu_memory else None
        if not 0 <= min_agreement <= 100:
            raise KvbenchError(f"--min-agreement cannot be {min_agreement:g}; give a percentage from 0 to 100, such as 95")
        if fmt not in SHOW_FORMATS:
            raise KvbenchError(f"--format cannot be {fmt!r}; use one of {', '.join(SHOW_FORMATS)}")
        result = read_result(file)
        if fmt == "markdown":
            from kvbench.render.markdown import result_markdown

            sys.stdout.write(result_markdown(result))
            return
        print_result(result, stdout, sizes, min_agreement / 100)
        if show_output:
            print_generated_text(result, stdout)
        for line in one_line_summary(result):
            stdout.print(f"summary: {line}", highlight=False, soft_wrap=True)
