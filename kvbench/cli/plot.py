"""`kvbench plot`: PNG figures of one results file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvbench.cli.app import stdout, user_errors


def plot(
    file: Path = typer.Argument(..., help="A results .json written by kvbench run."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", metavar="DIR", help="Where the PNGs go. \\[default: <results file name>-plots/ beside it]"
    ),
    force: bool = typer.Option(False, "--force", metavar="", help="Replace figures already in --out-dir. Without it, never."),
) -> None:
    """Draw PNG figures: per-token latency by position for both modes (uncached grows, cached stays
    flat), and for a sweep, latency and memory against the swept setting with the theoretical KV size."""
    with user_errors():
        from kvbench.render.plot import plot_result
        from kvbench.storage.document import read_result

        result = read_result(file)
        directory = out_dir or file.with_name(f"{file.stem}-plots")
        for path in plot_result(result, directory, replace=force):
            stdout.print(str(path), highlight=False)
