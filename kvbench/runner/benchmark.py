"""A benchmark run: checks everything it can before measuring, has its launcher measure the cells, and
keeps the results file current; `run_benchmark` is the library's one call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from kvbench.analysis.derived import derived_sections
from kvbench.core.devices import Devices
from kvbench.core.errors import KvbenchError
from kvbench.core.eta import Planned
from kvbench.core.version import __version__
from kvbench.launch.base import CellWork, MeasuredIn, cell_jobs
from kvbench.measure import kernel_build
from kvbench.measure.kernels import KERNEL_BUILD_GUESS_S, pending_build
from kvbench.measure.measurer import Measurer
from kvbench.model.caches import implementation
from kvbench.model.cells import Cell, expand, reference_of
from kvbench.model.events import Observer
from kvbench.model.records import BenchmarkResult, CellResult, CellState
from kvbench.model.settings import BenchConfig, config_to_dict, default_of, resume_must_match
from kvbench.model.validation import validate, validate_timing
from kvbench.runner import planning
from kvbench.runner.assembly import Assembly
from kvbench.storage.document import read_to_continue
from kvbench.storage.writer import ResultsFile


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Benchmark:
    """One `kvbench run`: plans the cells, checks everything it can before measuring, then has its launcher
    measure them (warmup, interleaved modes, adaptive stopping, resume), their events assembled into its
    result, which is saved after every generation."""

    def __init__(
        self,
        config: BenchConfig,
        output: str | Path | None = None,
        observer: Observer | None = None,
        command: str | None = None,
        resume: bool = False,
        force: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        start_early: bool = False,
    ) -> None:
        """`clock` times every generation and its tokens: perf_counter, or a scripted clock that makes each
        latency a chosen number (how the tests drive stopping rules and displays without real noise).
        `start_early`: for a run about to measure, its first measuring process starts now, importing torch
        while this process checks the cells (a dry run, which measures nothing, starts none)."""
        # Imported here: `import kvbench` must not import kvbench.launch.worker, which `python -m` then runs again.
        from kvbench.launch.registry import launcher_for

        validate(config)
        validate_timing(config)
        output = output if output is not None else config.output
        if resume and output is None:
            raise KvbenchError("--resume needs --output naming the results file to continue")
        self.config = config
        self.observer = observer or Observer()
        # Checked only: nothing is written before every check below has passed too.
        self.file = ResultsFile(output, replace=force, resume=resume) if output is not None else None
        # Measuring "this cell" is the launcher's: here, in fresh processes, on several GPUs, or on Ray.
        launcher = launcher_for(config)
        self.device = launcher.resolve_device(config.device)
        gpu_here = launcher.measures_in != MeasuredIn.OTHER_MACHINES
        # This process's measurer: it checks every cell before anything is measured, and measures them
        # itself where the launcher measures in this process.
        self.measurer = Measurer(config, self.device, clock=clock, gpu_here=gpu_here)
        self.launcher = launcher(config, self.device, self.measurer)
        if start_early:
            self.launcher.begin()
        try:
            self._check(command, resume)
        except BaseException:
            self.launcher.close()
            raise

    def _check(self, command: str | None, resume: bool) -> None:
        """The result this run fills, every cell checked before anything is measured."""
        from kvbench.hardware import environment

        config, gpu_here = self.config, self.measurer.gpu_here
        cells = expand(config)
        # In a sweep a failing cell is recorded and the sweep goes on; a run of one cell reports it as the
        # run's own error.
        self.sweep = len(cells) > 1
        self.result = BenchmarkResult(
            environment=environment.collect(Devices((self.device,)), gpu_here),
            config=config_to_dict(config),
            command=command,
            started_at=_now(),
            kvbench_version=__version__,
            cells=[CellResult(settings=cell) for cell in cells],
        )
        if resume:
            self._carry_over_finished_cells()
        for note in self.measurer.prepare(cells):
            if note not in self.result.notes:
                self.result.notes.append(note)

    @property
    def capability(self) -> tuple[int, int] | None:
        return self.measurer.capability

    def unsupported_reason(self, cell: Cell) -> str | None:
        return self.measurer.unsupported_reason(cell)

    def _carry_over_finished_cells(self) -> None:
        if self.file is None:
            raise KvbenchError("--resume needs --output naming the results file to continue")
        if not self.file.path.exists():
            return
        previous = read_to_continue(self.file.path)
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

    def save(self, final: bool = False, closing: bool = False) -> None:
        """The JSON after every generation; the CSV of runs too at the end of each cell (`final`) and of the
        run (`closing`). Only the closing save adds the summary and explanation, so a save mid-run computes
        nothing."""
        self.result.updated_at = _now()
        if self.file is not None:
            derived = derived_sections(self.result) if closing else None
            self.file.save(self.result, with_csv=final or closing, derived=derived)

    def advice(self) -> list[str]:
        notes = planning.advice(self.config, self.device)
        estimate = self.estimate()
        if estimate is not None:
            notes.append(estimate.text())
        return notes

    def planned(self) -> dict[Planned, int]:
        """Each generation the cells still to measure plan, with how many times it runs at the most."""
        return planning.planned(self.config, self._pending())

    def plan(self) -> planning.Plan:
        """The work this run would do, without doing it."""
        return planning.plan(self.config, self.result.cells, self.unsupported_reason, self.estimate())

    def estimate(self) -> planning.Estimate | None:
        """How long the generations would take, from runs of the same models and modes on this machine's
        device in earlier results files: the output itself (--resume) and the newest beside it."""
        measurable = [cell for cell in self._pending() if self.unsupported_reason(cell.settings) is None]
        folder = self.file.path.parent if self.file is not None else Path("results")
        first = self.file.path if self.file is not None else None
        device_name = self.result.environment.get("device_name")
        starting = self.launcher.starting([cell.settings for cell in measurable])
        estimate = planning.estimate(planning.planned(self.config, measurable), folder, device_name, first, starting)
        device_type = self.device.split(":")[0]
        builds = (pending_build(cell.settings, self.config.quantized_backend, device_type) for cell in measurable)
        build = next((build for build in builds if build is not None), None)
        if estimate is None or build is None:
            return estimate
        # Built once, by the first cell that needs it.
        return replace(
            estimate, seconds=estimate.seconds + KERNEL_BUILD_GUESS_S, kernel_build=(build.what, KERNEL_BUILD_GUESS_S)
        )

    def _device_peaks(self) -> None:
        """The peaks each mode's roofline bound is computed from, measured before any model is loaded (so
        the copy buffers compete with nothing), and a known GPU's datasheet figures beside them. Timed
        where the cells are: beside fresh measuring processes in one of their own, so this process holds no
        CUDA context or cached memory on the measured GPU for the whole sweep; not at all for cells
        measured on other machines. Peaks measured once are kept for the next run on the same machine,
        device, type and software (kvbench.hardware.peaks), unless --remeasure-peaks."""
        from kvbench.hardware import peaks as device_peaks
        from kvbench.model.costs import datasheet_peaks

        environment, unmeasured = self.result.environment, self.result.unmeasured
        sheet = datasheet_peaks(environment.get("gpu_name"))
        if sheet is not None:
            environment["datasheet_peaks"] = asdict(sheet)
        measured_in = self.launcher.measures_in
        if not self.config.device_peaks:
            unmeasured["device_peaks"] = "not measured (--no-device-peaks): no roofline bound from them"
        elif measured_in == MeasuredIn.OTHER_MACHINES:
            unmeasured["device_peaks"] = (
                "not measured: the cells ran on other machines (--launcher ray), whose devices this process"
                " cannot time; no roofline bound from them"
            )
        else:
            dtypes = device_peaks.peak_dtypes(self.device, sorted({cell.settings.dtype for cell in self._pending()}))
            key = device_peaks.peaks_key(environment, self.device, dtypes)
            found = None if self.config.remeasure_peaks else device_peaks.cached_peaks(key)
            if found is not None:
                environment["device_peaks"] = found
                return
            # A measuring process started early is left to finish its imports first: timed beside them, the
            # peaks would be the machine's under load.
            self.launcher.quiet()
            if measured_in == MeasuredIn.FRESH_PROCESSES:
                measured, problem = device_peaks.device_peaks_in_fresh_process(self.device, dtypes)
            else:
                measured, problem = asdict(device_peaks.measure_device_peaks(self.device, dtypes=dtypes)), None
            if problem is not None or measured is None:
                unmeasured["device_peaks"] = problem or "not measured"
                return
            environment["device_peaks"] = measured = {**measured, "measured_at": _now()}
            kept = device_peaks.remember_peaks(key, measured)
            if kept is not None:
                self.result.notes.append(kept)

    def _build_kernels(self, pending: list[CellResult]) -> tuple[int, float] | None:
        """The kernels a quantized backend builds on first use (optimum-quanto's CUDA extension), built before the
        cells, timed and reported, so no cell times the build or spends its time limit on it: (the first such
        cell's index in `pending`, the seconds), counted in that cell's phases as kernel_build."""
        backends = kernel_build.kernels_to_build(self.config.cache_implementation, self.config.quantized_backend, self.device)
        first = next((key for key, cell in enumerate(pending) if cell.settings.cache_implementation == "quantized"), None)
        if not backends or first is None or self.launcher.measures_in == MeasuredIn.OTHER_MACHINES:
            return None
        seconds = 0.0
        for backend in backends:
            self.observer.output(f"building {backend}'s kernels before the cells (once per machine and torch)")
            built = kernel_build.build_in_fresh_process(backend)
            seconds += built.seconds
            for line in [*built.lines, *([built.problem] if built.problem else [])]:
                self.observer.output(line)
                self.result.notes.append(line)
        return first, seconds

    def _save_what_was_measured(self) -> None:
        # Ctrl-C, or any failure, may land between a measurement and its save: keep everything measured
        # so far, with its summaries. If this save fails too (the disk that stopped the run), the last
        # one stands and the original error is the one reported.
        try:
            self.save(closing=True)
        except Exception:  # noqa: BLE001
            pass

    def _pending(self) -> list[CellResult]:
        return [cell_result for cell_result in self.result.cells if not CellState(cell_result.status).finished]

    def _measure(self, pending: list[CellResult], peaks_s: float, built: tuple[int, float] | None = None) -> None:
        """Every pending cell through the launcher, its events assembled into the result; the time the device
        peaks took is the first cell's, which waited for them, and a kernel build's the first cell that uses them."""
        assembly = Assembly(self.result, pending, self.observer, lambda final: self.save(final=final), self.launcher.name)
        if peaks_s:
            assembly.carry(0, "device_peaks", peaks_s)
        if built is not None:
            assembly.carry(built[0], "kernel_build", built[1])
        # The dynamic cells other caches are compared with keep their greedy output for them.
        compared = {
            reference_of(cell.settings) for cell in pending if not implementation(cell.settings.cache_implementation).reference
        }
        work = [
            CellWork(key, cell_jobs(self.config, cell.settings, sweep=self.sweep, keep_reference=cell.settings in compared))
            for key, cell in enumerate(pending)
        ]
        self.launcher.measure(work, assembly.deliver)

    def run(self) -> BenchmarkResult:
        if self.file is not None:
            self.file.open()
        pending = self._pending()
        self.observer.planned(self.planned(), self.launcher.starting([cell.settings for cell in pending]))
        try:
            peaks_s, built = 0.0, None
            if pending:
                started = time.perf_counter()
                self._device_peaks()
                peaks_s = time.perf_counter() - started
                built = self._build_kernels(pending)
            self.save()
            self._measure(pending, peaks_s, built)
        except Exception:
            if self.result.measured_nothing():
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
            self.measurer.close()
            self.launcher.close()
            if self.file is not None:
                self.file.close()
        only = None if self.sweep else self.result.cells[0]
        if only is not None and only.status == CellState.OOM:
            # Recorded in the file first; for the user one line, not a traceback.
            raise KvbenchError(f"{only.settings.model}: {only.reason}; try a smaller --batch-size or --max-new-tokens")
        return self.result


def run_benchmark(
    config: BenchConfig,
    output: str | Path | None = None,
    *,
    observer: Observer | None = None,
    resume: bool = False,
    force: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    progress: bool = False,
) -> BenchmarkResult:
    """Measure cached against uncached generation as `config` says and return the whole result (runs,
    cells, and summaries computed from the runs). The results file, `output` or else `config.output`
    if either is given, is rewritten after every generation and marked complete at the end. An existing
    file is replaced only with `force`, or continued with `resume`. `clock` times the generations.
    `progress` shows on stderr what `kvbench run` shows there: a live display in a terminal, a line per
    generation in a log or a notebook."""
    if progress and observer is not None:
        raise KvbenchError("run_benchmark takes an observer or progress=True, not both; drop one")
    display = None
    if progress:
        from rich.console import Console

        from kvbench.render.progress import progress_for

        display = observer = progress_for(Console(stderr=True))
    benchmark = Benchmark(config, output=output, observer=observer, resume=resume, force=force, clock=clock, start_early=True)
    if display is None:
        return benchmark.run()
    with display:
        return benchmark.run()
