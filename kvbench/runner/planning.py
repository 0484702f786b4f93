"""What a run will do before it does it: where its results go, its cells and generations, and how long
they took before on this machine."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kvbench.core.errors import KvbenchError
from kvbench.core.eta import Planned, clock_text, predicted_s
from kvbench.model.cells import Cell
from kvbench.model.jobs import planned_generation
from kvbench.model.modes import UNCACHED
from kvbench.model.records import CellResult, CellState
from kvbench.model.settings import BenchConfig, run_limits
from kvbench.storage.document import read_result

# `--output -`: the results document goes to stdout and no file is written.
STDOUT = "-"
# Uncached generation recomputes the whole sequence at every step: on a CPU, this many new tokens take
# minutes per run.
SLOW_ON_CPU_TOKENS = 500
# At most this many earlier results files, the newest and none larger than this, are read for an estimate
# of a run's time: reading them must not cost a run's start more than a second or so.
ESTIMATE_FROM_FILES = 20
ESTIMATE_FROM_BYTES = 8 * 2**20


def results_path(config: BenchConfig, resume: bool) -> Path | None:
    """Where a run's results go: --output; None for `-`; else a new file under results/ named for the
    models and the time. --resume continues a named file only."""
    if resume and config.output in (None, STDOUT):
        raise KvbenchError("--resume needs --output naming the results file to continue")
    if config.output == STDOUT:
        return None
    # Quoted or from a TOML file, `~` reaches kvbench unexpanded: it means home, never a folder named ~.
    return Path(config.output).expanduser() if config.output else default_output(config.model)


def default_output(models: list[str]) -> Path:
    name = "+".join(_file_name_of(model) for model in models)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    # Two runs started in the same second must not share a file.
    return Path("results") / f"{name}-{stamp}-{secrets.token_hex(2)}.json"


def _file_name_of(model: str) -> str:
    """A model as a file name: a directory by its own name ("." is the current directory's), never hidden."""
    path = Path(model).expanduser()
    name = path.resolve().name if path.exists() else model.replace("/", "_")
    return name.lstrip(".") or "model"


def advice(config: BenchConfig, device: str) -> list[str]:
    """What the user should know before a long wait."""
    notes = []
    if device == "cpu" and UNCACHED.name in config.modes and max(config.max_new_tokens) >= SLOW_ON_CPU_TOKENS:
        notes.append(
            "uncached generation of hundreds of tokens takes minutes per run on a CPU;"
            " for a quick look use --max-new-tokens 200 --runs 3"
        )
    return notes


def planned(config: BenchConfig, cells: list[CellResult]) -> dict[Planned, int]:
    """Each generation `cells` plan, with how many times it runs at the most."""
    # With --processes N, every process warms up.
    per_mode = run_limits(config)[1] + config.warmup * config.processes
    return {planned_generation(cell.settings, mode): per_mode for cell in cells for mode in config.modes}


@dataclass
class Estimate:
    """A run's time predicted from earlier runs of its models on this machine, and the files they are in."""

    seconds: float
    sources: list[str]
    # Of `seconds`, what the cells cost beyond their generations (starting processes, loading models,
    # saving), from the phases earlier runs recorded; None where they recorded none.
    beyond_generations_s: float | None = None
    # A cache backend's kernels to build on first use, in words, and the seconds guessed for it (in `seconds`).
    kernel_build: tuple[str, float] | None = None

    def text(self) -> str:
        named = ", ".join(self.sources[:2]) + (f" and {len(self.sources) - 2} more" if len(self.sources) > 2 else "")
        if self.beyond_generations_s is None:
            what = f"about {clock_text(self.seconds)} of generations at the most, plus loading"
        else:
            what = (
                f"about {clock_text(self.seconds)} at the most: {clock_text(self.seconds - self.beyond_generations_s)}"
                f" of generations and {clock_text(self.beyond_generations_s)} starting, loading and saving"
            )
        build = ""
        if self.kernel_build is not None:
            what_build, guess_s = self.kernel_build
            build = f"; it includes about {clock_text(guess_s)} {what_build}, guessed from a 2-core CPU"
        return f"{what}, predicted from earlier runs of these models on this machine ({named}){build}"


# The phases (kvbench.model.phases) a cell pays when it starts a measuring process or loads its model, and
# those every cell pays beyond its generations.
_START_UP = ("process_start", "imports", "model_load", "device_setup")
_EVERY_CELL = ("output_comparison", "save")


def estimate(
    planned: dict[Planned, int],
    folder: Path,
    device_name: str | None,
    first: Path | None = None,
    starting: set[str] | None = None,
) -> Estimate | None:
    """How long the `planned` generations would take, from runs of the same models and modes on this
    machine's device in earlier results files: `first` (the file --resume continues), then the newest in
    `folder`. Where those files recorded their phases, the cells' start-ups (`starting`: the cells that
    start a process or load a model; None, every cell) and saves are counted too."""
    if not planned:
        return None
    candidates = sorted(folder.glob("*.json"), key=_modified, reverse=True)[:ESTIMATE_FROM_FILES]
    if first is not None and first.is_file():
        candidates = [first, *[path for path in candidates if path != first]]
    measured, sources = [], []
    start_ups: list[float] = []
    every_cell: list[float] = []
    for path in candidates:
        if _size(path) > ESTIMATE_FROM_BYTES:  # a big sweep's file would cost more to read than it tells
            continue
        try:
            earlier = read_result(path)
        except KvbenchError:  # not a results file, or one this version cannot read: not a source
            continue
        if earlier.environment.get("device_name") != device_name:
            continue
        settings = {cell.id: cell.settings for cell in earlier.cells}
        points = [
            (planned_generation(settings[run.cell], run.mode), run.latency_s) for run in earlier.runs if run.cell in settings
        ]
        if points:
            measured += points
            sources.append(str(path))
        for cell in earlier.cells:
            phases = cell.phases_s or {}
            if any(phases.get(phase) for phase in ("imports", "model_load")):
                start_ups.append(sum(phases.get(phase, 0.0) for phase in _START_UP))
            if phases:
                every_cell.append(sum(phases.get(phase, 0.0) for phase in _EVERY_CELL))
        seconds = predicted_s(planned, measured)
        if seconds is not None:
            if not every_cell:
                return Estimate(seconds, sources)
            cells = {generation.cell for generation in planned}
            starts = len(cells if starting is None else cells & starting)
            beyond = starts * _mean(start_ups) + len(cells) * _mean(every_cell)
            return Estimate(seconds + beyond, sources, beyond)
    return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class Plan:
    """What a run will do: its cells (with what each will do) and how many generations in all."""

    cells: list[tuple[CellResult, str]]  # each cell and "measure", "keep" (finished, resumed) or "skip: why"
    generations: int
    runs_per_mode: tuple[int, int]  # fewest, most
    estimate: Estimate | None = None


def plan(
    config: BenchConfig,
    cells: list[CellResult],
    unsupported_reason: Callable[[Cell], str | None],
    estimate: Estimate | None = None,
) -> Plan:
    """The work a run of `cells` would do, without doing it: `unsupported_reason` says which it must skip."""
    fewest, most = run_limits(config)
    per_cell = (most + config.warmup) * len(config.modes)
    planned_cells, generations = [], 0
    for cell_result in cells:
        if CellState(cell_result.status).finished:
            planned_cells.append((cell_result, "keep (already finished)"))
            continue
        reason = unsupported_reason(cell_result.settings)
        if reason is not None:
            planned_cells.append((cell_result, f"skip: {reason}"))
            continue
        planned_cells.append((cell_result, "measure"))
        generations += per_cell
    return Plan(planned_cells, generations, (fewest, most), estimate)
