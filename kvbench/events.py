"""What measuring a cell elsewhere reports, as typed events: launchers carry them, CellAssembly applies them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvbench.records import RunRecord


@dataclass(frozen=True)
class Progress:
    """An observer hook called in the measuring process: generation_started, token (a count, sent at most
    once a second), generation_finished."""

    hook: str
    arguments: tuple[Any, ...]


@dataclass(frozen=True)
class RunsMeasured:
    runs: list[RunRecord]  # numbered within the whole cell


@dataclass(frozen=True)
class CellChanged:
    state: dict[str, Any]  # every CellResult field but its settings: model, prompt, status, outputs match...


@dataclass(frozen=True)
class Unmeasured:
    figures: dict[str, str]  # figure: why this process could not measure it


@dataclass(frozen=True)
class Output:
    line: str  # a line the measuring process printed


@dataclass(frozen=True)
class Done:
    """The process finished its job and exits."""


@dataclass(frozen=True)
class Failed:
    status: str  # "error", "oom", "timeout": the cell failed there
    reason: str


@dataclass(frozen=True)
class UserError:
    message: str  # a KvbenchError: the whole run stops, as it would in this process


Event = Progress | RunsMeasured | CellChanged | Unmeasured | Output | Done | Failed | UserError
