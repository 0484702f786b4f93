"""The Typer application every command registers on, the consoles, and the one funnel from a user's mistake
(or a limit of the machine's, or an output that cannot be written) to one red line and exit code 2."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TextIO

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from kvbench.core.errors import KvbenchError
from kvbench.core.limits import out_of_memory
from kvbench.render.text import labelled, output_console

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _flags_without_a_metavar(params: list) -> list:
    # Typer shows Python's type names (`--help <bool>`, `FILES <list[Path]>`): a flag takes no value, and an
    # argument's name and help already say what it takes.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
    return params


class _NamesWhole(Table):
    """Typer's table of options (or commands), in which only the last column, the help text, wraps: Rich
    otherwise narrows every column alike once the help text is as narrow as the names, and cuts option
    names to "…" (`--no-trust-remote…` at 80 columns). A word of help wider than its column folds onto
    the next line rather than losing its end."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        for column in self.columns[:-1]:
            column.no_wrap = True
        if renderables:
            # The help's texts, alone or laid out side by side (Rich's Columns, which cut a long word).
            for item in getattr(renderables[-1], "renderables", [renderables[-1]]):
                if isinstance(item, Text):
                    item.overflow = "fold"


def _help_as_written(help_text: str | None) -> str | None:
    """A docstring's paragraphs as sentences: Typer keeps a paragraph's line breaks, which fall where the
    source's lines ended, mid-sentence. Indented lines (the examples) stay as they are."""
    if not help_text:
        return help_text
    paragraphs = inspect.cleandoc(help_text).split("\n\n")
    return "\n\n".join(
        paragraph if any(line.startswith(" ") for line in paragraph.splitlines()) else " ".join(paragraph.split("\n"))
        for paragraph in paragraphs
    )


@contextmanager
def _help_layout() -> Iterator[None]:
    from typer import rich_utils

    original = rich_utils.Table
    rich_utils.Table = _NamesWhole  # type: ignore[misc]
    try:
        yield
    finally:
        rich_utils.Table = original  # type: ignore[misc]


class _HelpAsWritten:
    """What the group and every command share: help paragraphs as written, flags without a metavar, and
    option names kept whole at any width."""

    help: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _help_as_written(self.help)

    def get_params(self, ctx):
        return _flags_without_a_metavar(super().get_params(ctx))  # type: ignore[misc]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _help_layout():
            super().format_help(ctx, formatter)  # type: ignore[misc]


class _Group(_HelpAsWritten, TyperGroup):
    # Ctrl-C (or SIGTERM, kvbench.cli.main) that no command said anything about, while the options are read
    # or a command loads what it needs: Typer would end it with 130 and not a word.
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _interruption_said():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _interruption_said():
            return super().invoke(ctx)


@contextmanager
def _interruption_said() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        stderr.print(labelled("Interrupted.", "yellow", "Nothing more was done."), soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


class Command(_HelpAsWritten, TyperCommand):
    pass


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = output_console()
stderr = output_console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user mistake becomes one red line and exit code 2, and so does a failure the process's memory
    limit caused (`ulimit -v` too low to load torch); bugs still raise with a traceback."""
    try:
        yield
    except KvbenchError as error:
        _fail(error)
    except (MemoryError, ImportError, OSError) as error:
        reason = out_of_memory(error)
        if reason is None:
            raise
        _fail(reason)


def _fail(error: KvbenchError) -> NoReturn:
    _print_error(error)
    raise typer.Exit(EXIT_USER_ERROR) from None


def _print_error(error: KvbenchError) -> None:
    stderr.print(labelled("Error:", "bold red", str(error)), soft_wrap=True)


class _Output:
    """Standard output as every command writes to it (through the console, or directly as `--json` does):
    a failure to write it (a full disk, /dev/full) is a KvbenchError, so one line on stderr. A closed pipe
    (`| head`) stays what it was, which the command line ends quietly."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise self._failed(error) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise self._failed(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _failed(self, error: OSError) -> KvbenchError:
        # What is still buffered would fail again as the interpreter exits: from here it goes nowhere.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # a stream with no descriptor
            pass
        return KvbenchError(
            f"cannot write to standard output ({error.strerror or error}); free space where it goes, or send it elsewhere"
        )


def keyword(name: str, annotation: Any, option: Any) -> inspect.Parameter:
    """One option of a command whose options are made from declarations (a dataclass's fields)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def with_options(command: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """`command` taking `parameters`: Typer reads them from its signature, so options made at run time from
    declarations are read as if written out."""
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return command


def _version(value: bool) -> None:
    if value:
        from kvbench.core.version import __version__

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
    sys.stdout = _Output(sys.stdout)
    try:
        app()
    except KvbenchError as error:  # standard output failing outside a command's funnel (--version, --help)
        _print_error(error)
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        # What a command left buffered is written here, inside the funnel: at exit, a failure would print
        # Python's own message.
        try:
            sys.stdout.flush()
        except KvbenchError as error:
            _print_error(error)
            raise SystemExit(EXIT_USER_ERROR) from None
