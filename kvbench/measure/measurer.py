"""Measuring cells in this process: each job's model loaded (once for consecutive cells of the same model),
warmup, then the cached and uncached runs interleaved until enough, every step emitted as an event."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from kvbench.core.devices import Devices, compute_capability, is_gpu
from kvbench.core.errors import KvbenchError
from kvbench.core.kvsize import cache_bytes_for, measured_cache_bytes
from kvbench.core.stats import precise_enough
from kvbench.hardware.energy import CounterReader, energy_reader
from kvbench.hardware.memory import MemoryProbe, frozen_heap, release_between_cells
from kvbench.measure import agreement
from kvbench.measure.agreement import Comparison, Reference, first_divergence, logits_bytes
from kvbench.measure.cache_bytes import model_cost_of, record_cache_size
from kvbench.measure.generation import (
    Generation,
    TokenClock,
    allocated_reader,
    is_out_of_memory,
    is_sticky_cuda_error,
    measure_generation,
    pad_token_id,
    prepare_generation,
)
from kvbench.measure.kernels import build_kernels, pending_build
from kvbench.measure.prompts import PromptBatch, build_batch, distinct_rows, read_prompt_lines
from kvbench.measure.support import unsupported_reason
from kvbench.model.caches import REFERENCE, cache_config, implementation
from kvbench.model.cells import Cell, reference_of
from kvbench.model.events import (
    ONE_TOKEN,
    CellChanged,
    Done,
    Emit,
    Failed,
    GenerationFinished,
    GenerationStarted,
    PhaseTimed,
    RunsMeasured,
    Unmeasured,
)
from kvbench.model.jobs import CellJob, planned_generation
from kvbench.model.modes import CACHED, MODES_BY_NAME, PREFIX, UNCACHED
from kvbench.model.phases import KERNEL_BUILD, TIMED_RUNS
from kvbench.model.records import CellResult, CellState, RunRecord
from kvbench.model.settings import RSE_CONFIDENCE, BenchConfig


@contextmanager
def timed_phase(phase: str, emit: Emit) -> Iterator[None]:
    """A phase of measuring a cell (kvbench.model.phases), timed on the wall clock and emitted when it ends,
    however it ends."""
    started = time.perf_counter()
    try:
        yield
    finally:
        emit(PhaseTimed(phase, time.perf_counter() - started))


class _LoadFailure(Exception):
    """A model that cannot be loaded for one cell of a sweep: recorded for the cell, and the sweep goes on."""


class Measurer:
    """Measures jobs in this process, one at a time, emitting what it measures: the same code whether the
    process is the one running `kvbench run` (--isolation none) or a worker a launcher started. It keeps the
    model it loaded last, so consecutive cells of one model load it once."""

    def __init__(
        self,
        config: BenchConfig,
        device: str,
        *,
        clock: Callable[[], float] = time.perf_counter,
        gpu_here: bool = True,
    ) -> None:
        """`config` holds the settings every cell shares (a job's cell gives its own). `clock` times every
        generation and its tokens: perf_counter, or a scripted clock that makes each latency a chosen number.
        Without `gpu_here`, `device` is not this process's to ask about (the cells are measured on other
        machines): no GPU here is touched."""
        self.config = config
        self.device = device
        self.clock = clock
        self.gpu_here = gpu_here
        self.capability = compute_capability(device) if gpu_here else None
        self.prepared: dict[str, Any] = {}
        self.prompts: dict[tuple[str, int | None], tuple[Any, str]] = {}
        # With --prompts: each model's rows, tokenized, at each prompt length.
        self.prompt_lines: dict[tuple[str, int | None], list[Any]] = {}
        self._loaded: tuple[tuple[str, str, str], Any] | None = None
        self.probe: MemoryProbe | None = None
        self.energy: CounterReader | None = None
        self._unmeasured_sent: dict[str, str] = {}
        # The dynamic cache's tokens and logits for the last group of cells compared with it, on the model
        # loaded now (kvbench.measure.agreement).
        self._references: dict[Cell, Reference] = {}

    # --- before measuring ---------------------------------------------------------------------------

    def prepare(self, cells: Iterable[Cell]) -> list[str]:
        """Resolve the model of every cell and check every cell's length before any generation, so a mistake
        in the last cell of a sweep is not found after hours of measuring. Returns the notes a results file
        keeps (random weights, a synthetic prompt, bfloat16 emulated)."""
        from kvbench.measure import loading, models

        config, notes = self.config, []
        cells = list(cells)
        for cell in cells:
            if cell.model not in self.prepared:
                self.prepared[cell.model] = models.prepare_model(
                    cell.model, config.weights, trust_remote_code=config.trust_remote_code, revision=config.revision
                )
                notes += self.prepared[cell.model].notes
            key = (cell.model, cell.prompt_tokens)
            if key not in self.prompts:
                notes += self._prepare_prompts(cell, max(config.batch_size))
        note = models.bfloat16_note(sorted({cell.dtype for cell in cells}), self.capability)
        if note is not None:
            notes.append(note)
        for cell in cells:
            rows = self._rows(cell)
            loading.check_context(self.prepared[cell.model], max(len(row) for row in rows), cell.max_new_tokens)
            shortest = min(len(row) for row in rows)
            if cell.prefix_tokens is not None and cell.prefix_tokens >= shortest:
                raise KvbenchError(
                    f"{cell.model}: the shared prefix of {cell.prefix_tokens} tokens is not shorter than the"
                    f" {shortest}-token prompt; give --prompt-tokens above {cell.prefix_tokens} or a shorter"
                    " --prefix-tokens"
                )
        return list(dict.fromkeys(notes))

    def _prepare_prompts(self, cell: Cell, rows: int) -> list[str]:
        """The first prompt of `cell`'s model at its length (and the prompts file's rows, tokenized), made
        once; the notes a results file keeps about them."""
        from kvbench.measure import loading

        config, key, prepared = self.config, (cell.model, cell.prompt_tokens), self.prepared[cell.model]
        if config.prompts is not None:
            if prepared.tokenizer is None:
                raise KvbenchError(
                    f"{cell.model} has no tokenizer to read --prompts with (random weights from a shipped config);"
                    " drop --prompts, or use a model with a tokenizer"
                )
            lines = read_prompt_lines(config.prompts, rows)
            tokenized = [prepared.tokenizer(line, return_tensors="pt").input_ids[0] for line in lines]
            if any(ids.numel() == 0 for ids in tokenized):
                raise KvbenchError(f"{config.prompts}: a line tokenizes to no tokens; remove it")
            if cell.prompt_tokens is not None:
                tokenized = [loading.fit_to_length(ids, cell.prompt_tokens) for ids in tokenized]
            self.prompt_lines[key] = tokenized
            self.prompts[key] = (tokenized[0], "file")
            return []
        self.prompts[key] = loading.prompt_ids(prepared, config.prompt, cell.prompt_tokens, config.seed)
        ids, how = self.prompts[key]
        if how == "synthetic" and cell.prompt_tokens is None:
            return [
                f"{cell.model} has no tokenizer, so the prompt text is not used: {len(ids)} seeded synthetic"
                " token ids stand in for it"
            ]
        return []

    def _rows(self, cell: Cell) -> list[Any]:
        """The cell's prompts, one per row, before padding: the prompts file's lines, or the prompt made
        different per row."""
        key = (cell.model, cell.prompt_tokens)
        if key in self.prompt_lines:
            return self.prompt_lines[key][: cell.batch_size]
        first, how = self.prompts[key]
        vocab = self.prepared[cell.model].resolved.config.get_text_config().vocab_size
        return distinct_rows(first, cell.batch_size, how == "synthetic", vocab, self.config.seed)

    def batch_of(self, cell: Cell, pad_token_id: int) -> PromptBatch:
        """The cell's batch of prompts: left-padded (ragged, or lines of different lengths), every row
        starting with the shared prefix where there is one."""
        return build_batch(
            self._rows(cell), prefix_tokens=cell.prefix_tokens, ragged=self.config.ragged, pad_token_id=pad_token_id
        )

    def unsupported_reason(self, cell: Cell) -> str | None:
        """Why this process cannot measure `cell` here, known before trying; None when it can. Planning, the
        estimate and measuring all ask this one question."""
        return unsupported_reason(cell, self.device, self.capability, self.config, capability_known=self.gpu_here)

    def devices_in_use(self) -> Devices:
        """The devices of the model loaded last (all of them with --device-map), else the run's device."""
        return self._loaded[1].devices if self._loaded is not None else Devices((self.device,))

    # --- measuring ----------------------------------------------------------------------------------

    def measure(self, job: CellJob, emit: Emit) -> None:
        """Measure one job, emitting its events as they happen. A failure that is the cell's own (out of
        memory; an error within a sweep) ends in a Failed event; a user's mistake raises KvbenchError."""
        cell = job.cell
        cell_result = CellResult(settings=cell)
        reason = self.unsupported_reason(cell)
        if reason is not None:
            emit(Failed(CellState.SKIPPED, reason))
            return
        failure: tuple[CellState, str] | None = None
        sticky: str | None = None
        # A cell after another in this process starts from what a fresh process would: nothing the last left.
        release_between_cells(self.devices_in_use())
        try:
            with timed_phase("model_load", emit):
                self.prepare([cell])
                loaded = self._load_for(job, emit)
            _, how = self.prompts[cell.model, cell.prompt_tokens]
            batch = self.batch_of(cell, pad_token_id(loaded.model))
            cell_result.model = loaded.info()
            # How the model was run: let compile (a static cache on a GPU) or held to eager code.
            cell_result.model["compile"] = self.config.compile
            cell_result.prompt_tokens, cell_result.prompt_source = batch.positions, how
            if batch.padded or how == "file":
                cell_result.prompt_tokens_by_row, cell_result.padding_share = batch.lengths, batch.padding_share
            # Padded positions are cached as any other: the theory counts the batch's full width.
            cell_result.kv_cache_bytes = cache_bytes_for(
                loaded.model.config, batch.positions + cell.max_new_tokens, cell.batch_size, loaded.dtype
            )
            cell_result.model["cost"] = model_cost_of(loaded)
            cell_result.status = CellState.INCOMPLETE
            emit(CellChanged(copy.copy(cell_result)))
            clock = TokenClock(lambda: emit(ONE_TOKEN), self.clock, allocated=allocated_reader(loaded.devices))
            generation = prepare_generation(loaded, cell, batch, clock, self.config.compile, cache_config(self.config, cell))
            build = pending_build(cell, self.config.quantized_backend, loaded.model.device.type)
            if build is not None:
                with timed_phase(KERNEL_BUILD, emit):
                    build_kernels(build, emit)
            if any(MODES_BY_NAME[mode].reuses_prefix for mode in self.config.modes):
                with timed_phase("prefix_prefill", emit):
                    prefix = generation.prefill_prefix()
                cell_result.prefix_cache_bytes = measured_cache_bytes(prefix).kv_bytes
            with frozen_heap():
                self._measure(job, cell_result, generation, loaded, emit)
        except KvbenchError:
            raise
        except Exception as error:  # noqa: BLE001 - a sweep records a failing cell and goes on
            size = f"batch {cell.batch_size} x {cell.max_new_tokens} new tokens"
            if is_out_of_memory(error):
                # Recorded; a run of this one cell then ends in one line (kvbench.runner), not a traceback.
                failure = (CellState.OOM, f"out of memory at {size} ({type(error).__name__})")
            elif isinstance(error, _LoadFailure):
                failure = (CellState.ERROR, str(error))
            elif is_sticky_cuda_error(error) and self._in_the_run_process():
                sticky = str(error).strip().splitlines()[0]
                failure = (CellState.ERROR, f"{type(error).__name__}: {sticky}")
            elif job.sweep:
                failure = (CellState.ERROR, f"{type(error).__name__}: {error}")
            else:
                raise
        if sticky is not None and failure is not None:
            # Every later CUDA call in this process fails too: the cell is recorded, the sweep stops in one line.
            emit(Failed(*failure))
            raise KvbenchError(
                f"{cell.model}: {sticky}: this process's CUDA context cannot be used after that error, so the"
                " cells after it cannot run here (those measured are saved); rerun with --resume and"
                " --isolation model, which measures each model in a fresh process"
            )
        if failure is not None:
            # Freed only now: until the except block ends, its traceback keeps the failed run's tensors alive.
            self._loaded, self._references = None, {}
            self._free_memory()
            emit(Failed(*failure))
            return
        cell_result.status = CellState.MEASURED
        emit(CellChanged(cell_result))
        emit(Done())

    def _measure(self, job: CellJob, cell_result: CellResult, generate: Generation, loaded: Any, emit: Emit) -> None:
        """Warmup, then measured runs with the modes interleaved, until enough runs."""
        from kvbench.hardware.environment import placement
        from kvbench.hardware.timing import make_timer

        config, cell = self.config, job.cell
        assert self.probe is not None
        timed = make_timer(loaded.devices, self.clock)
        comparison = self._comparison_for(cell, generate, emit) if job.compare_outputs else None
        with timed_phase("warmup", emit) if config.warmup else nullcontext():
            for warmup in range(config.warmup):
                for mode in config.modes:
                    generation = planned_generation(cell, mode)
                    emit(GenerationStarted(f"warmup {mode} {warmup + 1}/{config.warmup}", generation))
                    if warmup == 0 and mode == CACHED.name:
                        self._cached_warmup(job, generate, comparison)
                    else:
                        generate(mode)
                    emit(GenerationFinished(None, generation))
        first_outputs: dict[str, Any] = {}
        with timed_phase(TIMED_RUNS, emit):
            self._timed_runs(job, cell_result, generate, loaded, timed, first_outputs, emit)
        with timed_phase("output_comparison", emit):
            self._compare_outputs(cell, cell_result, generate, first_outputs, comparison)
        cell_result.ran_on = placement(self.devices_in_use())

    def _comparison_for(self, cell: Cell, generate: Generation, emit: Emit) -> Comparison | None:
        """For a cache compared with the dynamic cache: the reference its group already has in this process,
        or, where a warmup follows, made now so that the warmup can be the fed pass; where every step's logits
        would take too much memory to keep, a comparison made step by step after the timed runs. None for the
        dynamic cache, or with no cached mode to compare."""
        if implementation(cell.cache_implementation).reference or CACHED.name not in self.config.modes:
            return None
        if self._logits_too_large(cell, generate):
            return Comparison(streamed=True)
        comparison = Comparison(self._references.get(reference_of(cell)))
        if comparison.reference is None and self.config.warmup:
            with timed_phase("output_comparison", emit):
                try:
                    comparison.reference = self._keep_reference(cell, Reference(*generate.untimed_pass(REFERENCE)))
                except Exception as error:  # noqa: BLE001 - the comparison is lost, not the cell
                    comparison.problem = error
        return comparison

    @staticmethod
    def _logits_too_large(cell: Cell, generate: Generation) -> bool:
        vocab = generate.model.config.get_text_config().vocab_size
        return logits_bytes(cell.batch_size, cell.max_new_tokens, vocab) > agreement.MOST_KEPT_LOGITS_BYTES

    def _cached_warmup(self, job: CellJob, generate: Generation, comparison: Comparison | None) -> None:
        """The cached mode's first warmup, which also gathers what comparing outputs needs, untimed: for the
        dynamic cell its greedy tokens and logits, kept for its group's other caches; for another cache, the
        reference's tokens fed to it for its logits. A warmup that cannot gather them is a plain warmup, as
        is one whose logits would be too large to keep (compared step by step later)."""
        cell = job.cell
        if comparison is None and job.keep_reference and not self._logits_too_large(cell, generate):
            ids, logits = generate.ids_and_logits(generate(CACHED.name, logits=True))
            self._keep_reference(cell, Reference(ids, logits))
        elif comparison is not None and comparison.reference is not None and comparison.problem is None:
            try:
                _, comparison.fed_logits = generate.ids_and_logits(generate(CACHED.name, fed_ids=comparison.reference.ids))
            except Exception as error:  # noqa: BLE001 - a plain warmup says whether the cache itself fails
                comparison.problem = error
                generate(CACHED.name)
        else:
            generate(CACHED.name)

    def _keep_reference(self, cell: Cell, reference: Reference) -> Reference:
        """The reference of `cell`'s group, kept for the group's next cells; only the last group's, as a long
        generation's logits over a large vocabulary take gigabytes."""
        self._references = {reference_of(cell): reference}
        return reference

    def _timed_runs(
        self,
        job: CellJob,
        cell_result: CellResult,
        generate: Generation,
        loaded: Any,
        timed: Callable,
        first_outputs: dict[str, Any],
        emit: Emit,
    ) -> None:
        """Measured runs with the modes interleaved, until enough runs; each mode's first new tokens kept."""
        config, cell = self.config, job.cell
        assert self.probe is not None
        measured: dict[str, list[RunRecord]] = {mode: [] for mode in config.modes}
        fewest, most = job.run_limits()
        # Interleaved (cached, uncached, cached, ...) so drift in the machine's speed hits both modes alike.
        for run in range(most):
            if run >= fewest and self._precise_enough(cell_result, measured):
                break
            for mode in config.modes:
                generation = planned_generation(cell, mode)
                emit(GenerationStarted(f"{mode} {run + 1}/{most}", generation))
                measure_cache = mode == CACHED.name and CACHED.name not in first_outputs
                record, new_ids = measure_generation(
                    generate,
                    mode,
                    job.first_run + run,
                    self.probe,
                    timed,
                    energy=self.energy,
                    on_output=(
                        (lambda output: record_cache_size(cell_result, output, loaded, generate.cache_config))
                        if measure_cache
                        else None
                    ),
                )
                first_outputs.setdefault(mode, new_ids.cpu())
                measured[mode].append(record)
                if measure_cache:
                    emit(CellChanged(copy.copy(cell_result)))
                emit(RunsMeasured([record]))
                self._emit_unmeasured(emit)
                emit(GenerationFinished(record.latency_s, generation))
        else:
            if config.target_rse is not None and not self._precise_enough(cell_result, measured):
                cell_result.stop_reason = f"stopped at the most runs ({most}) before every mode reached the target RSE"

    def _compare_outputs(
        self,
        cell: Cell,
        cell_result: CellResult,
        generate: Generation,
        first_outputs: dict[str, Any],
        comparison: Comparison | None,
    ) -> None:
        """After every timed run, so it costs no measurement anything but time: the text each mode generated,
        whether the modes' tokens match, and a cache against the dynamic cache."""
        tokenizer = self.prepared[cell.model].tokenizer
        if tokenizer is not None:
            cell_result.generated_text = {
                mode: tokenizer.decode(ids[0], skip_special_tokens=True) for mode, ids in first_outputs.items()
            }
        if CACHED.name in first_outputs and UNCACHED.name in first_outputs:
            divergence = first_divergence(first_outputs[CACHED.name], first_outputs[UNCACHED.name])
            cell_result.outputs_match = divergence is None
            cell_result.first_divergence = divergence
        if CACHED.name in first_outputs and PREFIX.name in first_outputs:
            divergence = first_divergence(first_outputs[CACHED.name], first_outputs[PREFIX.name])
            cell_result.prefix_outputs_match = divergence is None
            cell_result.prefix_first_divergence = divergence
        if comparison is not None and CACHED.name in first_outputs:
            try:
                reference = comparison.record(cell_result, generate, first_outputs[CACHED.name])
                if not comparison.streamed:
                    self._keep_reference(cell, reference)
            except Exception as error:  # noqa: BLE001 - the timed runs stand; only the comparison is lost
                first_line = (str(error).strip().splitlines() or [""])[0]
                cell_result.agreement_note = (
                    f"not measured: the untimed comparison with the dynamic cache failed ({type(error).__name__}: {first_line})"
                )

    def _precise_enough(self, cell_result: CellResult, measured: dict[str, list[RunRecord]]) -> bool:
        """With --target-rse: whether every mode's mean is already known closely enough."""
        target = self.config.target_rse
        if target is None:
            return False
        samples = {mode: [run.latency_s for run in runs] for mode, runs in measured.items()}
        enough, worst = precise_enough(samples, target, RSE_CONFIDENCE)
        if enough:
            cell_result.stop_reason = (
                f"every mode within the target RSE {target:.1%} at {RSE_CONFIDENCE:.0%} confidence"
                f" (worst upper bound {worst:.2%})"
            )
        return enough

    def _emit_unmeasured(self, emit: Emit) -> None:
        """What this process could not measure, sent when it changes (a probe or counter found unusable)."""
        figures = dict(self.probe.unavailable) if self.probe is not None else {}
        if self.energy is not None and self.energy.unavailable:
            figures["energy"] = self.energy.unavailable
        if self.energy is not None and self.energy.run_problem:
            figures["energy"] = self.energy.run_problem
        if figures and figures != self._unmeasured_sent:
            self._unmeasured_sent = figures
            emit(Unmeasured(dict(figures)))

    # --- the model ----------------------------------------------------------------------------------

    def _model_for(self, job: CellJob, emit: Emit) -> Any:
        from kvbench.measure import loading

        cell = job.cell
        key = (cell.model, cell.dtype, cell.attn_implementation)
        if self._loaded is None or self._loaded[0] != key:
            # A reference is the loaded model's: another model, or the same reloaded, makes its own.
            self._loaded, self._references = None, {}
            self._free_memory()
            loaded = loading.build_model(
                self.prepared[cell.model],
                dtype=cell.dtype,
                attn_implementation=cell.attn_implementation,
                device=self.device,
                seed=self.config.seed,
                device_map=self.config.device_map,
                capability=self.capability,
            )
            self._loaded = (key, loaded)
            # Memory is measured on every device the model occupies, known only once it is loaded.
            with timed_phase("device_setup", emit):
                if self.probe is not None:
                    self.probe.close()
                self.probe = MemoryProbe(loaded.devices, self.config.sample_interval_ms / 1000, self.config.memory_sampling)
                self.energy = energy_reader(list(loaded.devices.names))
        return self._loaded[1]

    def _load_for(self, job: CellJob, emit: Emit) -> Any:
        """The cell's model. Its files were checked before measuring; what fails only now (weights that do
        not fit the architecture, a backend that refuses) is this cell's failure: in a sweep it is
        recorded and the sweep goes on, for a single cell it is one line."""
        cell = job.cell
        try:
            loaded = self._model_for(job, emit)
        except KvbenchError as error:
            if not job.sweep:
                raise
            raise _LoadFailure(str(error)) from None
        except Exception as error:
            if is_out_of_memory(error):
                raise
            if not job.sweep:
                raise KvbenchError(
                    f"{cell.model}: cannot load the model ({type(error).__name__}: {error}); check its files"
                    " or use --weights random"
                ) from None
            raise
        self._emit_unmeasured(emit)
        return loaded

    def _in_the_run_process(self) -> bool:
        """Whether this measurer is `kvbench run`'s own process (--isolation none), not a measuring process a
        launcher started and replaces when it fails."""
        config = self.config
        return config.isolation == "none" and config.processes == 1 and config.launcher == "local"

    def _free_memory(self) -> None:
        gc.collect()
        if is_gpu(self.device):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        """Stop the memory sampler (a process of its own, with NVML)."""
        if self.probe is not None:
            self.probe.close()
