"""`kvbench compare`: results files side by side, judged against a baseline, in one of the export formats;
with --fail-on-regression, the gate's exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from kvbench.cli.app import stderr, stdout, user_errors
from kvbench.compare.formats import formats_help
from kvbench.render.text import labelled


def _judged_metrics_help() -> str:
    from kvbench.core.metrics import JUDGED_METRICS

    named = [f"{metric.name} ({metric.help})" for metric in JUDGED_METRICS.values()]
    return ", ".join(named[:-1]) + " or " + named[-1]


def compare(
    files: List[Path] = typer.Argument(..., help="Two or more results .json files, or directories of them."),
    baseline: Optional[str] = typer.Option(
        None, metavar="FILE", help="The file the others are judged against (its path or name). \\[default: the first]"
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help=formats_help(),
    ),
    fail_on_regression: Optional[float] = typer.Option(
        None,
        metavar="PCT",
        help="The gate, for CI. Each measurement's 95% confidence interval of its change (widened for the"
        " number of measurements compared, to 1 - 5%/their number) passes when wholly below +PCT%, is a"
        " regression when wholly above, else inconclusive. Exit 1: a regression; 3: a measurement it"
        " cannot judge (missing from a file, a failed baseline cell, other settings, fewer than 2 runs),"
        " one line each; 4: inconclusive, with the runs likely to settle it; 0: every measurement"
        " passed; 2: a usage error. Keep PCT above the drift you see between reruns; 0 only with"
        " --pass-inconclusive (unchanged code cannot pass it).",
    ),
    pass_inconclusive: bool = typer.Option(
        False,
        "--pass-inconclusive",
        help="Let inconclusive measurements pass the gate (exit 0, not 4); the summary still names them.",
    ),
    gate_metric: str = typer.Option(
        "latency",
        metavar="METRIC",
        help=f"What the gate judges: {_judged_metrics_help()}.",
    ),
    names: Optional[List[str]] = typer.Option(
        None,
        "--name",
        "-n",
        metavar="NAME",
        help="A label per file, in order (one for each file), used in every table, export and verdict, and"
        " by --baseline. \\[default: the file names]",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        metavar="",
        help="List each measurement only one side holds (files of other sweeps), and each one too noisy to"
        " trust, one line each; without it and without the gate, one line per file counts them.",
    ),
) -> None:
    """Compare results files side by side: mean ± std, memory, cached speedup, and each file's change
    against a baseline with a 95% confidence interval and a significance verdict."""
    with user_errors():
        from kvbench.compare.formats import format_named
        from kvbench.compare.formats.grids import inconclusive_lines
        from kvbench.compare.judging import EXIT_CODES, compare_results

        output = format_named(fmt)
        comparison = compare_results(
            files,
            baseline=baseline,
            threshold_pct=fail_on_regression,
            gate_metric=gate_metric,
            allow_single=output.one_file_is_enough,
            names=names or (),
            pass_inconclusive=pass_inconclusive,
            list_unmatched=verbose,
        )
    rendered = output.render(comparison)
    if isinstance(rendered, str):
        sys.stdout.write(rendered)
    else:
        stdout.print(rendered)
    if not output.holds_warnings:
        for warning in comparison.warnings:
            stderr.print(labelled("warning:", "yellow", warning), soft_wrap=True)
    for line in comparison.unjudged:
        stderr.print(labelled("not judged:", "yellow", line), soft_wrap=True)
    for line in inconclusive_lines(comparison):
        stderr.print(labelled("inconclusive:", "yellow", line), soft_wrap=True)
    # The worst outcome decides: a regression, then a measurement not judged, then an inconclusive one.
    if comparison.outcome is not None:
        raise typer.Exit(EXIT_CODES[comparison.outcome])
