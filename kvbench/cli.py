"""The `kvbench` command line: parse options, call the library, render. No measuring happens here."""

from __future__ import annotations

import inspect
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from kvbench.errors import KvbenchError
from kvbench.report import labelled, output_console


def _flags_without_a_metavar(params: list) -> list:
    # Typer shows Python's type names (`--help <bool>`, `FILES <list[Path]>`): a flag takes no value, and an
    # argument's name and help already say what it takes.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
    return params


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _flags_without_a_metavar(super().get_params(ctx))


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _flags_without_a_metavar(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = output_console()
stderr = output_console(stderr=True)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@contextmanager
def user_errors() -> Iterator[None]:
    """A user mistake becomes one red line and exit code 2; bugs still raise with a traceback."""
    try:
        yield
    except KvbenchError as error:
        stderr.print(labelled("Error:", "bold red", str(error)), soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


def _version(value: bool) -> None:
    if value:
        from kvbench.version import __version__

        stdout.print(f"kvbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, metavar="", help="Print kvbench's version and exit."
    ),
) -> None:
    """Measure what the KV cache buys a causal LM: generate() with use_cache=True against use_cache=False,
    repeated, with latency, per-token timing and memory.

    Start with `kvbench run --model gpt2 --max-new-tokens 200 --runs 3`, then
    `kvbench compare results/a.json results/b.json`.
    """


def _setting_option(name: str) -> inspect.Parameter:
    """A `kvbench run` option made from a BenchConfig field's declaration: its flag, type, help and the
    default --help shows. The option's own default is None, so only what the user typed overrides a
    TOML file."""
    from kvbench.config import config_fields, default_of, field_kind

    item = config_fields()[name]
    meta = item.metadata
    kind, is_list = field_kind(name)
    flag = "--" + name.replace("_", "-")
    declarations = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag]
    if meta["short"]:
        declarations.append(meta["short"])
    default = default_of(name)
    if meta["shown_default"] is not None:
        shown = meta["shown_default"]
    elif kind is bool:
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = ",".join(map(str, default)) if meta["comma_separated"] else " ".join(map(str, default))
    else:
        shown = "none" if default is None else str(default)
    help_text = meta["help"].replace("[", "\\[")  # literal brackets (`kvbench[ray]`), not Rich markup
    if meta["choices"] and not any(choice in help_text for choice in meta["choices"][1:]):
        help_text += f" One of: {', '.join(meta['choices'])}."
    # Built from the setting's declared type, at run time: Typer reads it, a type checker cannot.
    annotation = Optional[List[kind]] if is_list else Optional[kind]  # type: ignore[valid-type]
    # Shown in the help text: the option's own default is None, which --help would otherwise show.
    option = typer.Option(
        None, *declarations, help=f"{help_text} \\[default: {shown}]", show_default=False, metavar=_metavar(kind)
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _metavar(kind: type) -> str:
    return {bool: "", int: "N", float: "NUMBER", str: "TEXT"}[kind]


def _cli_values(name: str, value: Any) -> Any:
    """A command-line value as BenchConfig takes it: comma-separated lists split."""
    from kvbench.config import config_fields

    if value is None or not config_fields()[name].metadata["comma_separated"]:
        return value
    return [part.strip() for item in value for part in str(item).split(",") if part.strip()]


def run(
    config_file: Optional[Path],
    resume: bool,
    force: bool,
    dry_run: bool,
    json_output: bool,
    show_output: bool,
    **given: object,
) -> None:
    """Time generate() with and without the KV cache and write a results file.

    With no options this is the reference experiment: gpt2, "What is KV caching?", 1000 new tokens,
    10 runs per mode (plus 1 warmup), cached and uncached interleaved. On a CPU, start smaller.

    Examples:

      kvbench run --model gpt2 --max-new-tokens 200 --runs 3

      kvbench run --config configs/gpt2-t4-reference.toml --device cuda

      kvbench run -m tinyllama-1.1b --dtype bfloat16 -n 128 -n 512 --target-rse 0.02

      kvbench run -m tiny-gpt2 -n 32 -r 3 --dry-run

      kvbench run -m tiny-gpt2 -n 32 -r 3 -o - > result.json
    """
    with user_errors():
        from kvbench.config import build_config
        from kvbench.runner import results_path

        overrides = {name: _cli_values(name, value) for name, value in given.items()}
        config = build_config(config_file, overrides)
        path = results_path(config, resume)
        if path is None:  # --output -: the document goes to stdout and no file is written
            config.output, json_output = None, True
        else:
            overrides["output"] = str(path)
        commands = (command_line(config_file, overrides, resume), command_line(config_file, overrides, True))
        if dry_run:
            _dry_run(config, path, json_output)
            return
        _run_and_report(config, path, resume, force, commands, json_output=json_output, show_output=show_output)


def _register_run() -> None:
    """`run` takes its own options plus one per BenchConfig field, built from the declarations."""
    from kvbench.config import config_fields

    def own(name: str, annotation: object, option: object) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)

    parameters = [
        own(
            "config_file",
            Optional[Path],
            typer.Option(None, "--config", "-c", metavar="FILE", help="TOML experiment file; options given here override it."),
        ),
        own(
            "resume",
            bool,
            typer.Option(False, "--resume", metavar="", help="Keep the cells already finished in --output; measure the rest."),
        ),
        own(
            "dry_run",
            bool,
            typer.Option(
                False,
                "--dry-run",
                metavar="",
                help="Check everything (models, lengths, output) and list the cells and generations; measure nothing.",
            ),
        ),
        own(
            "json_output",
            bool,
            typer.Option(
                False,
                "--json",
                metavar="",
                help="Print the results document as JSON on stdout instead of the tables (progress stays on"
                " stderr); with --dry-run, the plan. With --output -, no file is written.",
            ),
        ),
        own(
            "show_output",
            bool,
            typer.Option(
                False, "--show-output", metavar="", help="Print the text each mode generated (needs a tokenizer)."
            ),
        ),
        own(
            "force",
            bool,
            typer.Option(
                False,
                "--force",
                metavar="",
                help="Replace --output (and the CSV beside it) if it exists. Without it, never.",
            ),
        ),
    ]
    parameters += [_setting_option(name) for name in config_fields()]
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    app.command(cls=_Command)(run)


_register_run()


def command_line(config_file: Optional[Path], overrides: dict, resume: bool) -> str:
    """The options given, as one command that reruns the same benchmark (recorded in the results file)."""
    from kvbench.config import config_fields

    words = ["kvbench", "run"]
    if config_file is not None:
        words += ["--config", str(config_file)]
    for key, value in overrides.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        elif config_fields()[key].metadata["comma_separated"]:
            words += [flag, ",".join(value)]
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    if resume:
        words.append("--resume")
    return shlex.join(words)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _quiet_transformers() -> None:
    # kvbench reports what matters itself; transformers' warnings would bury the progress display.
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _dry_run(config, path: Optional[Path], json_output: bool) -> None:
    """Every check a run makes before measuring, then the plan (as JSON with --json); nothing is written."""
    from kvbench.report import plan_document, render_plan

    with stderr.status("loading torch, transformers and checking the models…"):
        _quiet_transformers()
        from kvbench.runner import Benchmark, plan

        if path is not None:
            from kvbench.results import check_writable

            check_writable(path)
        benchmark = Benchmark(config, output=None)
    if json_output:
        from kvbench.jsontext import json_text

        sys.stdout.write(json_text(plan_document(plan(benchmark), path)))
    else:
        stdout.print(render_plan(plan(benchmark), path))


def _run_and_report(
    config, path: Optional[Path], resume: bool, force: bool, commands: tuple[str, str], **shown: bool
) -> None:
    # A CI job cancelled sends SIGTERM: stop as Ctrl-C does, from the start (loading takes seconds).
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _load_and_measure(config, path, resume, force, commands, **shown)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _load_and_measure(
    config, path: Optional[Path], resume: bool, force: bool, commands: tuple[str, str], *, json_output: bool, show_output: bool
) -> None:
    from kvbench.progress import progress_for
    from kvbench.report import one_line_summary

    command, resume_command = commands
    try:
        # A transient spinner: start-up (imports, model checks) takes seconds and should not look hung.
        with stderr.status("loading torch, transformers and the model…"):
            _quiet_transformers()
            from kvbench.runner import Benchmark

            display = progress_for(stderr)
            benchmark = Benchmark(
                config, output=path, observer=display, command=command, resume=resume, force=force
            )
    except KeyboardInterrupt:
        stderr.print(
            labelled("Interrupted", "yellow", "while loading, before anything was measured; nothing was written."),
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for note in benchmark.advice():
        stderr.print(labelled("note:", "yellow", note), soft_wrap=True)
    # With --json, stdout carries the document alone.
    tables = stderr if json_output else stdout
    try:
        with display:
            result = benchmark.run()
    except KeyboardInterrupt:
        if path is None:
            where = "printed below (marked incomplete)"
        else:
            where = f"saved in {path} (marked incomplete); to measure the rest: {resume_command}"
        stderr.print()
        stderr.print(labelled("Interrupted.", "yellow", f"Finished runs are {where}"), soft_wrap=True)
        _report(benchmark.result, tables, json_output, show_output)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _report(result, tables, json_output, show_output)
    if path is not None:
        tables.print(f"results: {path} and {path.with_suffix('.csv')}", highlight=False)
    for line in one_line_summary(result):
        tables.print(f"summary: {line}", highlight=False, soft_wrap=True)
    if result.cells_to_retry():
        raise typer.Exit(1)


def _report(result, console: Console, json_output: bool, show_output: bool) -> None:
    from kvbench.report import print_generated_text, print_result

    if json_output:
        from kvbench.jsontext import json_text
        from kvbench.results import to_dict

        sys.stdout.write(json_text(to_dict(result)))
    else:
        print_result(result, console)
    if show_output:
        print_generated_text(result, console)


@app.command(cls=_Command)
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
        " several. Shown where cells differ only in their cache implementation. \\[default: 24, 40, 80 and 141 GiB]",
        show_default=False,
    ),
) -> None:
    """Render one results file as `kvbench run` printed it."""
    with user_errors():
        from kvbench.report import one_line_summary, print_generated_text, print_result
        from kvbench.results import read_result
        from kvbench.units import parse_bytes

        sizes = tuple(parse_bytes(size) for size in gpu_memory) if gpu_memory else None
        result = read_result(file)
        print_result(result, stdout, sizes)
        if show_output:
            print_generated_text(result, stdout)
        for line in one_line_summary(result):
            stdout.print(f"summary: {line}", highlight=False, soft_wrap=True)


def _judged_metrics_help() -> str:
    from kvbench.metrics import JUDGED_METRICS

    named = [f"{metric.name} ({metric.help})" for metric in JUDGED_METRICS.values()]
    return ", ".join(named[:-1]) + " or " + named[-1]


@app.command(cls=_Command)
def compare(
    files: List[Path] = typer.Argument(..., help="Two or more results .json files, or directories of them."),
    baseline: Optional[str] = typer.Option(
        None, metavar="FILE", help="The file the others are judged against (its path or name). \\[default: the first]"
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", metavar="FORMAT", help="table, markdown (for a pull request), csv, json, or benchmark-action"
        " (github-action-benchmark's customSmallerIsBetter JSON, from the last file; one file is enough)."
    ),
    fail_on_regression: Optional[float] = typer.Option(
        None,
        metavar="PCT",
        help="The gate, for CI. Each measurement's 95% confidence interval of its change (widened for the"
        " number of measurements compared, by Holm's method) passes when wholly below +PCT%, is a"
        " regression when wholly above, else inconclusive. Exit 1: a regression; 3: a measurement it"
        " cannot judge (missing from a file, a failed baseline cell, other settings, fewer than 2 runs),"
        " one line each; 4: inconclusive, with the runs likely to settle it; 0: every measurement"
        " passed; 2: a usage error. Keep PCT above the drift you see between reruns.",
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
        from kvbench.compare import EXIT_CODES, compare_results
        from kvbench.export import format_named
        from kvbench.export.grids import inconclusive_lines

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


@app.command(cls=_Command)
def plot(
    file: Path = typer.Argument(..., help="A results .json written by kvbench run."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", metavar="DIR", help="Where the PNGs go. \\[default: <results file name>-plots/ beside it]"
    ),
    force: bool = typer.Option(
        False, "--force", metavar="", help="Replace figures already in --out-dir. Without it, never."
    ),
) -> None:
    """Draw PNG figures: per-token latency by position for both modes (uncached grows, cached stays
    flat), and for a sweep, latency and memory against the swept setting with the theoretical KV size."""
    with user_errors():
        from kvbench.plot import plot_result
        from kvbench.results import read_result

        result = read_result(file)
        directory = out_dir or file.with_name(f"{file.stem}-plots")
        for path in plot_result(result, directory, replace=force):
            stdout.print(str(path), highlight=False)


def _gate_help(name: str, text: str) -> str:
    """A `kvbench gate` option's help, ending in the default its GateOptions field holds."""
    from kvbench.gate import shown_default

    return f"{text} \\[default: {shown_default(name)}]"


@app.command(cls=_Command)
def gate(
    base: Optional[str] = typer.Option(
        None,
        metavar="REV|DIR",
        help=_gate_help("base", "Base checkout: a git revision of --repo or a directory."),
    ),
    head: Optional[str] = typer.Option(
        None, metavar="REV|DIR", help=_gate_help("head", "Head checkout: a git revision of --repo or a directory.")
    ),
    repo: Optional[Path] = typer.Option(
        None, metavar="DIR", help=_gate_help("repo", "The git repository revisions are taken from.")
    ),
    config: Optional[str] = typer.Option(
        None, metavar="TOML", help=_gate_help("config", "kvbench config, a path in the base checkout.")
    ),
    threshold_pct: Optional[float] = typer.Option(
        None,
        metavar="PCT",
        help=_gate_help(
            "threshold_pct",
            "The slowdown the gate must rule out: it passes a measurement whose interval lies wholly below +PCT%,"
            " and fails one wholly above (regression) or across it (inconclusive).",
        ),
    ),
    gate_file: Optional[str] = typer.Option(
        None,
        metavar="FILE",
        help=_gate_help("gate_file", "File in the base checkout holding KVBENCH_REGRESSION_PCT=PCT."),
    ),
    baseline_file: Optional[str] = typer.Option(
        None,
        metavar="FILE",
        help=_gate_help("baseline_file", "Results file in the head checkout to compare with when there is no --base."),
    ),
    install: Optional[str] = typer.Option(
        None,
        metavar="MODE",
        help=_gate_help(
            "install",
            "venv: a fresh venv per side that sees --python's packages and keeps its torch; pythonpath: run"
            " `python -m kvbench` with the checkout on PYTHONPATH, installing nothing.",
        ),
    ),
    python: Optional[str] = typer.Option(
        None, metavar="PYTHON", help=_gate_help("python", "Interpreter for the venvs (or pythonpath runs).")
    ),
    torch: Optional[str] = typer.Option(
        None,
        metavar="REQUIREMENT",
        help=_gate_help(
            "torch",
            "pip arguments installing torch into each venv first, e.g. 'torch==2.6.0 --index-url URL'"
            " (the CUDA build your driver runs).",
        ),
    ),
    pip_install: Optional[str] = typer.Option(
        None, metavar="ARGS", help=_gate_help("pip_install", "pip install arguments, run inside each checkout (venv mode).")
    ),
    kvbench_spec: Optional[str] = typer.Option(
        None,
        metavar="SPEC",
        help=_gate_help(
            "kvbench_spec",
            "Where kvbench comes from, installed into both venvs after --pip-install: a kvbench directory"
            " (installed editable) or pip arguments.",
        ),
    ),
    run_args: Optional[str] = typer.Option(
        None, metavar="ARGS", help=_gate_help("run_args", "Extra `kvbench run` arguments for both sides, as one string.")
    ),
    out: Optional[Path] = typer.Option(
        None,
        metavar="DIR",
        help=_gate_help(
            "out",
            "Where checkouts, venvs, results, summary.md and benchmark-action.json go, outside the head checkout.",
        ),
    ),
) -> None:
    """Measure a base and a head checkout with one config (base, head, head, base) and fail on a
    significant slowdown: exit 0 passed, 1 regression, 2 the gate could not run, 3 a measurement could
    not be judged, 4 inconclusive."""
    # The defaults live in GateOptions alone: only what was given on the command line is passed on.
    given = {name: value for name, value in locals().items() if value is not None}
    with user_errors():
        from kvbench.gate import GateOptions, run_gate

        outcome = run_gate(GateOptions(**given))
    sys.stdout.write(outcome.summary)
    raise typer.Exit(outcome.exit_code)


def _tolerant_output() -> None:
    """Where the output's encoding cannot show a character (PYTHONIOENCODING=ascii, an old console), print
    '?' for it rather than crash after measuring; rich then draws its tables with ASCII too."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):  # a stream that cannot change: leave it
                pass


def main() -> None:
    _tolerant_output()
    app()
