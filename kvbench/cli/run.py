"""`kvbench run`: its own options plus one per setting (made from BenchConfig's declarations), then a run
through the library, with its progress on stderr and its report on stdout."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from kvbench.cli.app import EXIT_INTERRUPTED, keyword, stderr, stdout, user_errors, with_options
from kvbench.render.text import labelled


def run(
    config_file: Optional[Path],
    resume: bool,
    force: bool,
    dry_run: bool,
    json_output: bool,
    show_output: bool,
    **given: Any,
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
        from kvbench.model.experiment import build_config, rerun_command
        from kvbench.runner.planning import results_path

        overrides = {name: _split_lists(name, value) for name, value in given.items()}
        config = build_config(config_file, overrides)
        path = results_path(config, resume)
        if path is None:  # --output -: the document goes to stdout and no file is written
            config.output, json_output = None, True
        else:
            overrides["output"] = str(path)
        commands = (rerun_command(config_file, overrides, resume), rerun_command(config_file, overrides, True))
        if dry_run:
            _dry_run(config, path, json_output)
            return
        from kvbench.runner.interrupts import terminate_as_interrupt

        # A CI job cancelled sends SIGTERM: it stops the run as Ctrl-C does, from the start.
        with terminate_as_interrupt():
            _run_and_report(config, path, resume, force, commands, json_output=json_output, show_output=show_output)


def _split_lists(name: str, value: Any) -> Any:
    """A command-line value as BenchConfig takes it: comma-separated lists split."""
    from kvbench.model.settings import config_fields

    if value is None or not config_fields()[name].metadata["comma_separated"]:
        return value
    return [part.strip() for item in value for part in str(item).split(",") if part.strip()]


def _dry_run(config: Any, path: Optional[Path], json_output: bool) -> None:
    """Every check a run makes before measuring, then the plan (as JSON with --json); nothing is written."""
    from kvbench.render.report import plan_document, render_plan

    with stderr.status("loading torch, transformers and checking the models…"), _document_alone_on_stdout(json_output):
        from kvbench.measure.models import quiet_transformers
        from kvbench.runner.benchmark import Benchmark

        quiet_transformers()
        if path is not None:
            from kvbench.storage.writer import check_writable

            check_writable(path)
        benchmark = Benchmark(config, output=None)
    if json_output:
        from kvbench.core.jsontext import json_text

        sys.stdout.write(json_text(plan_document(benchmark.plan(), path)))
    else:
        stdout.print(render_plan(benchmark.plan(), path))


@contextmanager
def _document_alone_on_stdout(json_output: bool) -> Iterator[None]:
    """With --json, stdout carries the document alone: what a model's own code prints while kvbench loads or
    measures it in this process (--isolation none, a config's code, a tokenizer's) goes to stderr."""
    if not json_output:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def _run_and_report(
    config: Any,
    path: Optional[Path],
    resume: bool,
    force: bool,
    commands: tuple[str, str],
    *,
    json_output: bool,
    show_output: bool,
) -> None:
    from kvbench.core.errors import KvbenchError, MeasuringStopped
    from kvbench.render.progress import progress_for
    from kvbench.render.report import one_line_summary

    command, resume_command = commands
    try:
        # A transient spinner: start-up (imports, model checks) takes seconds and should not look hung.
        with stderr.status("loading torch, transformers and the model…"), _document_alone_on_stdout(json_output):
            from kvbench.measure.models import quiet_transformers
            from kvbench.runner.benchmark import Benchmark

            quiet_transformers()
            display = progress_for(stderr)
            benchmark = Benchmark(
                config, output=path, observer=display, command=command, resume=resume, force=force, start_early=True
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
        with display, _document_alone_on_stdout(json_output):
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
    except MeasuringStopped as error:
        # A run that measured nothing leaves no file behind (kvbench.runner.benchmark): the same command starts
        # it again.
        if path is not None and not path.exists():
            raise KvbenchError(f"{error}; nothing was measured or written; to start again: {command}") from None
        _report(benchmark.result, tables, json_output, show_output)
        if path is None:
            raise KvbenchError(f"{error}; the finished runs are printed (marked incomplete)") from None
        raise KvbenchError(
            f"{error}; the finished runs are saved in {path} (marked incomplete); to measure the rest: {resume_command}"
        ) from None
    _report(result, tables, json_output, show_output)
    if path is not None:
        tables.print(f"results: {path} and {path.with_suffix('.csv')}", highlight=False)
    for line in one_line_summary(result):
        tables.print(f"summary: {line}", highlight=False, soft_wrap=True)
    if result.cells_to_retry():
        raise typer.Exit(1)


def _report(result: Any, console: Console, json_output: bool, show_output: bool) -> None:
    from kvbench.render.report import print_generated_text, print_result

    if json_output:
        from kvbench.analysis.derived import derived_sections
        from kvbench.core.jsontext import json_text
        from kvbench.storage.document import to_dict

        sys.stdout.write(json_text(to_dict(result, derived_sections(result))))
    else:
        print_result(result, console)
    if show_output:
        print_generated_text(result, console)


# The help's panels, each a few options with short names beside one another: in one long table the longest
# names (`--cache-implementation`, `--no-remeasure-peaks`) and the longest words of any help text took
# the width of an 80-column terminal, and Rich cut option names to "…".
RUN_PANEL = "Run"
SETTING_PANELS: dict[str, tuple[str, ...]] = {
    "Model": ("model", "revision", "trust_remote_code", "weights"),
    "Prompt and length": ("prompt", "prompt_tokens", "prefix_tokens", "prompts", "ragged", "max_new_tokens", "batch_size"),
    "Cache and attention": (
        "dtype",
        "cache_implementation",
        "attn_implementation",
        "quantized_backend",
        "quantized_nbits",
        "quantized_group_size",
        "quantized_residual_length",
        "compile",
    ),
    "Runs": ("modes", "runs", "target_rse", "min_runs", "max_runs", "warmup", "seed"),
    "Device and memory": ("device", "device_map", "sample_interval_ms", "memory_sampling", "device_peaks", "remeasure_peaks"),
    "Where cells run": (
        "isolation",
        "processes",
        "cell_timeout",
        "launcher",
        "ray_address",
        "accelerator_type",
        "gpus_per_cell",
    ),
    "Output": ("output",),
}
# A setting declared after these panels were drawn up still shows, here, until it is given a panel.
OTHER_SETTINGS_PANEL = "Other settings"


def setting_panel(name: str) -> str:
    """The help panel a setting's option shows in."""
    return next((panel for panel, names in SETTING_PANELS.items() if name in names), OTHER_SETTINGS_PANEL)


def _setting_option(name: str) -> Any:
    """A `kvbench run` option made from a BenchConfig field's declaration: its flag, type, help and the
    default --help shows. The option's own default is None, so only what the user typed overrides a
    TOML file."""
    from kvbench.model.settings import config_fields, default_of, field_kind

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
    metavar = {bool: "", int: "N", float: "NUMBER", str: "TEXT"}[kind]
    # Shown in the help text: the option's own default is None, which --help would otherwise show.
    option = typer.Option(
        None,
        *declarations,
        help=f"{help_text} \\[default: {shown}]",
        show_default=False,
        metavar=metavar,
        rich_help_panel=setting_panel(name),
    )
    return keyword(name, annotation, option)


def _options() -> list:
    """`run`'s own options, then one per BenchConfig field, built from the declarations."""
    from kvbench.model.settings import config_fields

    def flag(name: str, option: str, help: str) -> Any:
        return keyword(name, bool, typer.Option(False, option, metavar="", help=help, rich_help_panel=RUN_PANEL))

    return [
        keyword(
            "config_file",
            Optional[Path],
            typer.Option(
                None,
                "--config",
                "-c",
                metavar="FILE",
                help="TOML experiment file; options given here override it.",
                rich_help_panel=RUN_PANEL,
            ),
        ),
        flag("resume", "--resume", "Keep the cells already finished in --output; measure the rest."),
        flag(
            "dry_run",
            "--dry-run",
            "Check everything (models, lengths, output) and list the cells and generations; measure nothing.",
        ),
        flag(
            "json_output",
            "--json",
            "Print the results document as JSON on stdout instead of the tables (progress stays on"
            " stderr); with --dry-run, the plan. With --output -, no file is written.",
        ),
        flag("show_output", "--show-output", "Print the text each mode generated (needs a tokenizer)."),
        flag("force", "--force", "Replace --output (and the CSV beside it) if it exists. Without it, never."),
        *(_setting_option(name) for name in config_fields()),
    ]


with_options(run, _options())
