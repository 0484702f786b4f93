"""How kvbench prints: text shown as it is (never markup, controls written out), labelled one-line messages,
and the console that keeps tables whole in a log or a file."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderableType, RenderHook, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from kvbench.core.untrusted import printable


def plain(text: str, style: str | None = None) -> Text:
    """Text shown as it is: never read as rich markup (a model named "llama[v2]" keeps its brackets), its
    control characters written out. Every line and cell this module renders passes through here: most hold
    something from a results file or a name a user gave."""
    return Text(printable(text), style=style or "")


def labelled(label: str, style: str, message: str) -> Text:
    """One line for the terminal, "Error: ..." or "warning: ...": the label styled, the message as it is,
    on one line (a newline or a tab in it written out)."""
    return Text.assemble((label, style), " ", printable(message, one_line=True))


def add_row(table: Table, cells: Iterable[str], style: str | None = None) -> None:
    table.add_row(*(plain(cell) for cell in cells), style=style)


def output_console(stderr: bool = False) -> Console:
    """The console kvbench prints through. It keeps tables whole when the output goes to a file or a pipe
    (rich would wrap them at 80 columns), so they paste into an issue as they looked. It reads no markup
    or emoji codes in what it prints (a path "x[/]y.json" is printed, not parsed), and it writes out any
    control character that reached it: the guard for text from a file or a worker that did not pass
    through `plain`."""
    console = Console(stderr=stderr, markup=False, emoji=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=240, markup=False, emoji=False)
    console.push_render_hook(_ControlsWrittenOut())
    return console


class _ControlsWrittenOut(RenderHook):
    def process_renderables(self, renderables: list) -> list:
        return [_WithoutControls(renderable) for renderable in renderables]


class _WithoutControls:
    """A renderable's output with control characters written out; rich's own cursor movements (the
    segments it marks as control, for the live display) pass as they are."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            yield segment if segment.control else Segment(printable(segment.text), segment.style)
