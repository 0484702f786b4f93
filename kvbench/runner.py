"""A benchmark run: checks everything it can before measuring, has its launcher measure the cells, and
keeps the results file current; `run_benchmark` is the library's one call."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kvbench.config import BenchConfig, default_of, resume_must_match, run_limits, validate
from kvbench.errors import KvbenchError
from kvbench.eta import Planned, clock_text, predicted_s
from kvbench.measure import MeasuredIn, Measurement, Observer, planned_generation
from kvbench.records import BenchmarkResult, CellResult, CellState
from kvbench.results import ResultsFile, read_result

# `--output -`: the results document goes to stdout and no file is written.
STDOUT = "-"
# Uncached generation recomputes the whole sequence at every step: on a CPU, this many new tokens take
# minutes per run.
SLOW_ON_CPU_TOKENS = 500


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


# At most this many earlier results files, the newest and none larger than this, are read for an estimate
# of a run's time: reading them must not cost a run's start more than a second or so.
ESTIMATE_FROM_FILES = 20
ESTIMATE_FROM_BYTES = 8 * 2**20


def advice(config: BenchConfig, device: str) -> list[str]:
    """What the user should know before a long wait."""
    notes = []
    if device == "cpu" and "uncached" in config.modes and max(config.max_new_tokens) >= SLOW_ON_CPU_TOKENS:
        notes.append(
            "uncached generation of hundreds of tokens takes minutes per run on a CPU;"
            " for a quick look use --max-new-tokens 200 --runs 3"
        )
    return notes


class Benchmark(Measurement):
    """One `kvbench run`: plans the cells, checks everything it can before measuring, then has its launcher
    schedule the measurements (warmup, interleaved modes, adaptive stopping, resume) and saves after every
    generation."""

    def __init__(
        self,
        config: BenchConfig,
        output: str | Path | None = None,
        observer: Observer | None = None,
        command: str | None = None,
        resume: bool = False,
        force: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`clock` times every generation and its tokens: perf_counter, or a scripted clock that makes each
        latency a chosen number (how the tests drive stopping rules and displays without real noise)."""
        # Imported here: `import kvbench` must not import kvbench.worker, which `python -m` then runs again.
        from kvbench.launch import make_launcher

        validate(config)
        output = output if output is not None else config.output
        if resume and output is None:
            raise KvbenchError("--resume needs --output naming the results file to continue")
        # Checked only: nothing is written before every check below has passed too.
        self.file = ResultsFile(output, replace=force, resume=resume) if output is not None else None
        # Measuring "this cell" is the launcher's: here, in fresh processes, on several GPUs, or on Ray.
        self.launcher = make_launcher(config)
        device = self.launcher.resolve_device(config.device)
        gpu_here = self.launcher.measures_in != MeasuredIn.OTHER_MACHINES
        super().__init__(config, device, observer, command, clock, on_save=self._write, gpu_here=gpu_here)
        if resume:
            self._carry_over_finished_cells()
        self.prepare_models()

    def _carry_over_finished_cells(self) -> None:
        if self.file is None:
            raise KvbenchError("--resume needs --output naming the results file to continue")
        if not self.file.path.exists():
            return
        previous = read_result(self.file.path)
        for key in resume_must_match():
            # A setting the file predates had its default value then.
            before = previous.config.get(key, default_of(key))
            if before != getattr(self.config, key):
                raise KvbenchError(
                    f"--resume: {self.file.path} was made with {key}={before!r}, not"
                    f" {getattr(self.config, key)!r}; use the same settings or a new --output"
                )
        # Timings from two machines are not one experiment, whatever the device setting says ("auto").
        for key in ("device", "device_name"):
            before, now = previous.environment.get(key), self.result.environment.get(key)
            if before != now:
                raise KvbenchError(
                    f"--resume: {self.file.path} was measured with {key} {before!r}, this run has {now!r};"
                    " resume on the same hardware or use a new --output"
                )
        kept = {cell.id: cell for cell in previous.cells if CellState(cell.status).finished}
        self.result.cells = [kept.get(cell.id, cell) for cell in self.result.cells]
        self.result.runs = [run for run in previous.runs if run.cell in kept]
        self.result.started_at = previous.started_at
        self.result.notes = list(previous.notes)

    def _write(self, final: bool, closing: bool) -> None:
        """The JSON after every generation; the CSV of runs too at the end of each cell and of the run. Only
        the run's closing save adds the summary and explanation, so a save mid-run computes nothing."""
        if self.file is not None:
            self.file.save(self.result, with_csv=final or closing, derived=closing)

    def advice(self) -> list[str]:
        notes = advice(self.config, self.device)
        estimate = self.estimate()
        if estimate is not None:
            notes.append(estimate.text())
        return notes

    def planned(self) -> dict[Planned, int]:
        """Each generation the cells still to measure plan, with how many times it runs at the most."""
        # With --processes N, every process warms up.
        per_mode = run_limits(self.config)[1] + self.config.warmup * self.config.processes
        modes = self.config.modes
        return {planned_generation(c.settings, mode): per_mode for c in self._pending() for mode in modes}

    def estimate(self) -> Estimate | None:
        """How long the generations would take, from runs of the same models and modes on this machine's
        device in earlier results files: the output itself (--resume) and the newest beside it."""
        measurable = {cell.id for cell in self._pending() if self.unsupported_reason(cell.settings) is None}
        planned = {generation: count for generation, count in self.planned().items() if generation.cell in measurable}
        if not planned:
            return None
        folder = self.file.path.parent if self.file is not None else Path("results")
        candidates = sorted(folder.glob("*.json"), key=_modified, reverse=True)[:ESTIMATE_FROM_FILES]
        if self.file is not None and self.file.path.is_file():
            candidates = [self.file.path, *[path for path in candidates if path != self.file.path]]
        device_name = self.result.environment.get("device_name")
        measured, sources = [], []
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
                (planned_generation(settings[run.cell], run.mode), run.latency_s)
                for run in earlier.runs
                if run.cell in settings
            ]
            if points:
                measured += points
                sources.append(str(path))
            seconds = predicted_s(planned, measured)
            if seconds is not None:
                return Estimate(seconds, sources)
        return None

    def _save_what_was_measured(self) -> None:
        # Ctrl-C, or any failure, may land between a measurement and its save: keep everything measured
        # so far, with its summaries. If this save fails too (the disk that stopped the run), the last
        # one stands and the original error is the one reported.
        try:
            self.save(closing=True)
        except Exception:  # noqa: BLE001
            pass

    def _measured_nothing(self) -> bool:
        unstarted = (CellState.PENDING, CellState.INCOMPLETE)
        return not self.result.runs and all(cell.status in unstarted for cell in self.result.cells)

    def _pending(self) -> list[CellResult]:
        return [cell_result for cell_result in self.result.cells if not CellState(cell_result.status).finished]

    def run(self) -> BenchmarkResult:
        if self.file is not None:
            self.file.open()
        pending = self._pending()
        self.observer.planned(self.planned())
        try:
            if pending:
                self._device_peaks(self.launcher.measures_in)
            self.save()
            self.launcher.measure(self, pending)
        except Exception:
            if self._measured_nothing():
                # Failed before any cell was measured (Ray unreachable, the model not loading): a file of
                # pending cells would only stand in the way of the retry.
                if self.file is not None:
                    self.file.discard()
            else:
                self._save_what_was_measured()
            raise
        except BaseException:
            self._save_what_was_measured()
            raise
        else:
            self.result.complete = True
            self.save(closing=True)
        finally:
            self.close()
            if self.file is not None:
                self.file.close()
        only = None if self.part_of_sweep else self.result.cells[0]
        if only is not None and only.status == CellState.OOM:
            # Recorded in the file first; for the user one line, not a traceback.
            raise KvbenchError(f"{only.settings.model}: {only.reason}; try a smaller --batch-size or --max-new-tokens")
        return self.result


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
class Estimate:
    """A run's time predicted from earlier runs of its models on this machine, and the files they are in."""

    seconds: float
    sources: list[str]

    def text(self) -> str:
        named = ", ".join(self.sources[:2]) + (f" and {len(self.sources) - 2} more" if len(self.sources) > 2 else "")
        return (
            f"about {clock_text(self.seconds)} of generations at the most, plus loading, predicted from"
            f" earlier runs of these models on this machine ({named})"
        )


@dataclass
class Plan:
    """What a run will do: its cells (with what each will do) and how many generations in all."""

    cells: list[tuple[CellResult, str]]  # each cell and "measure", "keep" (finished, resumed) or "skip: why"
    generations: int
    runs_per_mode: tuple[int, int]  # fewest, most
    estimate: Estimate | None = None


def plan(benchmark: Benchmark) -> Plan:
    """The work a checked Benchmark would do, without doing it."""
    fewest, most = run_limits(benchmark.config)
    per_cell = (most + benchmark.config.warmup) * len(benchmark.config.modes)
    cells, generations = [], 0
    for cell_result in benchmark.result.cells:
        if CellState(cell_result.status).finished:
            cells.append((cell_result, "keep (already finished)"))
            continue
        reason = benchmark.unsupported_reason(cell_result.settings)
        if reason is not None:
            cells.append((cell_result, f"skip: {reason}"))
            continue
        cells.append((cell_result, "measure"))
        generations += per_cell
    return Plan(cells, generations, (fewest, most), benchmark.estimate())


def run_benchmark(
    config: BenchConfig,
    output: str | Path | None = None,
    *,
    observer: Observer | None = None,
    resume: bool = False,
    force: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchmarkResult:
    """Measure cached against uncached generation as `config` says and return the whole result (runs,
    cells, and summaries computed from the runs). The results file, `output` or else `config.output`
    if either is given, is rewritten after every generation and marked complete at the end. An existing
    file is replaced only with `force`, or continued with `resume`. `clock` times the generations."""
    return Benchmark(config, output=output, observer=observer, resume=resume, force=force, clock=clock).run()
