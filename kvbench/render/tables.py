"""Tables that fit the width they are drawn at: columns a narrow terminal cannot show are left out, least
needed first, instead of being squeezed into "…"."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

from kvbench.render.text import plain


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], str]  # the text of one row's cell
    justify: Literal["left", "right"] = "right"
    drop: int = 0  # on a narrow terminal, the columns with the highest number go first; 0 always stays
    short: str | None = None  # the header where the table is narrowed


class FittedTable:
    """A table (one row per mode, or per cache implementation) that fits the width it is drawn at: columns a
    narrow terminal cannot show are left out, least needed first, instead of being squeezed into "…"; a log
    or a file gets them all."""

    def __init__(self, title: str, columns: list[Column], summaries: list[Any]) -> None:
        self.title, self.columns, self.summaries = title, columns, summaries

    def table(self, most_dropped: int, short: bool) -> Table:
        table = Table()
        shown = [column for column in self.columns if column.drop <= most_dropped]
        for column in shown:
            header = column.short if short and column.short else column.header
            table.add_column(header, justify=column.justify, no_wrap=True)
        for summary in self.summaries:
            table.add_row(*(plain(column.value(summary)) for column in shown))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        levels = sorted({column.drop for column in self.columns}, reverse=True)
        unbounded = options.update(max_width=10_000)  # a measurement is otherwise capped at the width
        for level, short in itertools.product(levels, (False, True)):
            table = self.table(level, short)
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                break
        yield plain(phrase_lines(self.title, options.max_width))
        yield table


def phrase_lines(title: str, width: int, separator: str = " · ") -> str:
    """A title of phrases ("gpt2 · RANDOM weights · float32 · batch 1 · ...") on as many lines as the width
    needs, broken between phrases ("8 new tokens" stays whole), each broken line ending in the separator's
    dot; a phrase wider than the width alone wraps where it must."""
    lines: list[str] = []
    line = ""
    for phrase in title.split(separator):
        joined = f"{line}{separator}{phrase}" if line else phrase
        if line and cell_len(joined) > width - len(separator.rstrip()):
            lines.append(line + separator.rstrip())
            line = phrase
        else:
            line = joined
    return "\n".join([*lines, line])
