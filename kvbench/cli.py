"""The `kvbench` command line: parse options, call the library, render. No measuring happens here."""

from __future__ import annotations

import inspect
import shlex
import signal
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console

from kvbench.errors import KvbenchError
from kvbench.report import output_console

app = typer.Typer(
    help=(
        "Measure what the KV cache buys a causal LM: generate() with use_cache=True against"
        " use_cache=False, repeated, with latency, per-token timing and memory.\n\n"
        "Start with `kvbench run --model gpt2 --max-new-tokens 200 --runs 3`, then"
        " `kvbench compare results/a.json results/b.json`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = output_console()
stderr = Console(stderr=True)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@contextmanager
def user_errors() -> Iterator[None]:
    """A user mistake becomes one red line and exit code 2; bugs still raise with a traceback."""
    try:
        yield
    except KvbenchError as error:
        stderr.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


class ProgressDisplay:
    """A rich progress display fed by the runner's observer hooks: all generations, and the current one
    token by token (an uncached generation of 1000 tokens can take minutes)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<36}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._overall = None
        self._current = None

    # The runner's Observer interface, duck-typed so the core never imports rich.
    def planned(self, generations: int) -> None:
        self._overall = self.progress.add_task("all generations", total=generations)

    def cell_started(self, cell, index: int, count: int) -> None:
        if count > 1:
            self.progress.console.print(f"[bold]cell {index + 1}/{count}:[/] {cell.id}")

    def generation_started(self, label: str, new_tokens: int) -> None:
        if self._current is None:
            self._current = self.progress.add_task(label, total=new_tokens)
        else:
            self.progress.reset(self._current, total=new_tokens, description=label)

    def token(self) -> None:
        self.progress.advance(self._current)

    def generation_finished(self) -> None:
        self.progress.advance(self._overall)

    def cell_finished(self, cell) -> None:
        pass


def default_output(models: list[str]) -> Path:
    name = "+".join(Path(model).name or model for model in models).replace("/", "_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{name}-{stamp}.json"


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
    help_text = meta["help"]
    if meta["choices"] and not any(choice in help_text for choice in meta["choices"][1:]):
        help_text += f" One of: {', '.join(meta['choices'])}."
    annotation = Optional[List[kind]] if is_list else Optional[kind]
    # Shown in the help text: the option's own default is None, which --help would otherwise show.
    option = typer.Option(None, *declarations, help=f"{help_text} \\[default: {shown}]", show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _cli_values(name: str, value: object) -> object:
    """A command-line value as BenchConfig takes it: comma-separated lists split."""
    from kvbench.config import config_fields

    if value is None or not config_fields()[name].metadata["comma_separated"]:
        return value
    return [part.strip() for item in value for part in str(item).split(",") if part.strip()]


def run(config_file: Optional[Path], resume: bool, **given: object) -> None:
    """Time generate() with and without the KV cache and write a results file.

    With no options this is the reference experiment: gpt2, "What is KV caching?", 1000 new tokens,
    10 runs per mode (plus 1 warmup), cached and uncached interleaved. On a CPU, start smaller.

    Examples:

      kvbench run --model gpt2 --max-new-tokens 200 --runs 3

      kvbench run --config configs/gpt2-t4-reference.toml --device cuda

      kvbench run -m tinyllama-1.1b --dtype bfloat16 --max-new-tokens 128 --max-new-tokens 512 --target-rse 0.02
    """
    with user_errors():
        from kvbench.config import build_config

        overrides = {name: _cli_values(name, value) for name, value in given.items()}
        config = build_config(config_file, overrides)
        path = Path(config.output) if config.output else default_output(config.model)
        overrides["output"] = str(path)
        _run_and_report(config, path, resume, command_line(config_file, overrides, resume))


def _register_run() -> None:
    """`run` takes its own two options plus one per BenchConfig field, built from the declarations."""
    from kvbench.config import config_fields

    own = [
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", "-c", help="TOML experiment file; options given here override it."),
            annotation=Optional[Path],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False, "--resume", help="Keep the cells already finished in --output; measure the rest."
            ),
            annotation=bool,
        ),
    ]
    parameters = own + [_setting_option(name) for name in config_fields()]
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    app.command()(run)


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


def _run_and_report(config, path: Path, resume: bool, command: str) -> None:
    from kvbench.report import print_result

    # A transient spinner: start-up (imports, model checks) takes seconds and should not look hung.
    with stderr.status("loading torch, transformers and the model…"):
        from transformers.utils import logging as transformers_logging

        from kvbench.runner import Benchmark

        # kvbench reports what matters itself; transformers' warnings would bury the progress display.
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        display = ProgressDisplay(stderr)
        benchmark = Benchmark(config, output=path, observer=display, command=command, resume=resume)
    if benchmark.device == "cpu" and "uncached" in config.modes and max(config.max_new_tokens) >= 500:
        stderr.print(
            "[yellow]note:[/] uncached generation of hundreds of tokens takes minutes per run on a CPU;"
            " for a quick look use --max-new-tokens 200 --runs 3",
            highlight=False,
        )
    # A CI job cancelled sends SIGTERM: stop as Ctrl-C does, saying where the finished runs are.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with display.progress:
            result = benchmark.run()
    except KeyboardInterrupt:
        stderr.print(f"\n[yellow]Interrupted.[/] Finished runs are saved in {path} (marked incomplete).")
        print_result(benchmark.result, stdout)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print_result(result, stdout)
    stdout.print(f"results: {path} and {path.with_suffix('.csv')}", highlight=False)
    if any(cell.status in ("error", "timeout") for cell in result.cells):
        raise typer.Exit(1)


@app.command()
def show(file: Path = typer.Argument(..., help="A results .json written by kvbench run.")) -> None:
    """Render one results file as `kvbench run` printed it."""
    with user_errors():
        from kvbench.report import print_result
        from kvbench.results import read_result

        print_result(read_result(file), stdout)


@app.command()
def compare(
    files: List[Path] = typer.Argument(..., help="Two or more results .json files, or directories of them."),
    baseline: Optional[str] = typer.Option(
        None, help="The file the others are judged against (its path or name). \\[default: the first]"
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", help="table, markdown (for a pull request), csv, json, or benchmark-action"
        " (github-action-benchmark's customSmallerIsBetter JSON, from the last file)."
    ),
    fail_on_regression: Optional[float] = typer.Option(
        None,
        metavar="PCT",
        help="Exit 1 when a measurement is slower than the baseline by more than PCT percent and Welch's"
        " t-test calls the difference significant (p < 0.05). For CI.",
    ),
) -> None:
    """Compare results files side by side: mean ± std, memory, cached speedup, and each file's change
    against a baseline with a 95% confidence interval and a significance verdict."""
    with user_errors():
        from kvbench.compare import compare_results
        from kvbench.export import FORMATS, render_text

        if fmt not in FORMATS:
            raise KvbenchError(f"--format cannot be {fmt!r}; choose one of {', '.join(FORMATS)}")
        if fail_on_regression is not None and fail_on_regression < 0:
            raise KvbenchError("--fail-on-regression takes a non-negative percentage, such as 5")
        comparison = compare_results(files, baseline=baseline, threshold_pct=fail_on_regression)
    if fmt == "table":
        from kvbench.report import render_comparison

        stdout.print(render_comparison(comparison))
    else:
        sys.stdout.write(render_text(comparison, fmt))
        if fmt in ("csv", "benchmark-action"):  # formats with no place for warnings of their own
            for warning in comparison.warnings:
                stderr.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if comparison.regressions:
        raise typer.Exit(1)


@app.command()
def plot(
    file: Path = typer.Argument(..., help="A results .json written by kvbench run."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", "-o", help="Where the PNGs go. \\[default: <results file name>-plots/ beside it]"
    ),
) -> None:
    """Draw PNG figures: per-token latency by position for both modes (uncached grows, cached stays
    flat), and for a sweep, latency and memory against the swept setting with the theoretical KV size."""
    with user_errors():
        from kvbench.plot import plot_result
        from kvbench.results import read_result

        result = read_result(file)
        directory = out_dir or file.with_name(f"{file.stem}-plots")
        for path in plot_result(result, directory):
            stdout.print(str(path), highlight=False)


def main() -> None:
    app()
