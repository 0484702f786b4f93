"""The measurement loop and the only caller of generate(): warmup, interleaved cached/uncached runs of
exactly the requested new tokens, per-token arrival times and memory, measured in this process."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from kvbench.config import RSE_CONFIDENCE, BenchConfig, Cell, cache_config, config_to_dict, expand, run_limits
from kvbench.devices import Devices, compute_capability, is_gpu
from kvbench.energy import CounterReader, energy_reader
from kvbench.errors import KvbenchError
from kvbench.eta import Planned
from kvbench.kvsize import cache_bytes_for
from kvbench.memory import MemoryProbe, downsample, free_memory, frozen_heap
from kvbench.metrics import time_per_output_token_s
from kvbench.records import BenchmarkResult, CellResult, CellState, RunRecord
from kvbench.stats import precise_enough
from kvbench.version import __version__


class MeasuredIn(str, Enum):
    """Where a launcher measures a run's cells, which is where what describes their device belongs."""

    THIS_PROCESS = "this process"
    FRESH_PROCESSES = "fresh processes on this machine"
    OTHER_MACHINES = "other machines"


# The device peaks timed in a process of their own: its CUDA context and cached memory go when it exits.
_PEAKS_PROCESS = (
    "import json, sys; from dataclasses import asdict; from kvbench.roofline import measure_device_peaks;"
    " print(json.dumps(asdict(measure_device_peaks(sys.argv[1]))))"
)


def device_peaks_in_fresh_process(device: str) -> tuple[dict[str, Any] | None, str | None]:
    """measure_device_peaks(device) in a fresh interpreter importing this kvbench: (the peaks, None) or
    (None, why they could not be measured)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    environ = {**os.environ, "PYTHONPATH": root + os.pathsep + path if path else root}
    completed = subprocess.run(
        [sys.executable, "-c", _PEAKS_PROCESS, device], capture_output=True, text=True, env=environ, check=False
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"]
        return None, f"not measured: the process timing them failed ({lines[-1]})"
    return json.loads(completed.stdout.strip().splitlines()[-1]), None


class Observer:
    """Progress hooks for a display. Every hook but `output` does nothing by default, so library callers
    need none; `output` passes a measuring process's lines on to stderr, where they would have gone."""

    def planned(self, generations: dict[Planned, int]) -> None:
        """Each generation the run will do, with how many times."""

    def cell_started(self, cell: CellResult, index: int, count: int) -> None: ...

    def generation_started(self, label: str, generation: Planned) -> None: ...

    def token(self) -> None: ...

    def generation_finished(self, latency_s: float | None, generation: Planned | None = None) -> None:
        """A generation ended: its measured latency, or None for a warmup."""

    def cell_finished(self, cell: CellResult) -> None: ...

    def output(self, line: str) -> None:
        """A line a measuring process printed (stdout or stderr); a display prints it above itself."""
        print(line, file=sys.stderr)


def planned_generation(cell: Cell, mode: str) -> Planned:
    """One generation of a cell, as the estimate of the time left counts it."""
    return Planned(mode, cell.max_new_tokens, cell.prompt_tokens or 0, cell.model, cell.id)


class TokenClock:
    """A generate() streamer that notes when each new token arrives. generate() hands it the prompt
    first, then one batch of tokens per step, on the same call that is being timed."""

    def __init__(
        self,
        on_token: Callable[[], None],
        clock: Callable[[], float] = time.perf_counter,
        allocated: Callable[[], int] | None = None,
    ) -> None:
        """`allocated`, on a CUDA device only: torch's allocated bytes, read every few tokens to show the
        cache growing with position (a counter read, no synchronisation, so the timing is not disturbed)."""
        self._on_token = on_token
        self._clock = clock
        self._allocated = allocated
        self.times_s: list[float] = []
        self.allocated_by_position: list[list[int]] = []
        self.every = 1
        self._start = 0.0
        self._prompt_seen = False

    def begin(self, new_tokens: int = 0) -> None:
        self.times_s = []
        self.allocated_by_position = []
        self.every = max(1, new_tokens // 100)  # about 100 readings per run
        self._prompt_seen = False
        self._start = self._clock()

    def put(self, value: Any) -> None:
        now = self._clock()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times_s.append(now - self._start)
        if self._allocated is not None and (len(self.times_s) - 1) % self.every == 0:
            self.allocated_by_position.append([len(self.times_s) - 1, self._allocated()])
        self._on_token()

    def end(self) -> None:
        pass


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


# The package each quantized cache backend imports, and how to install it; fp8 needs torch alone.
_QUANTIZED_BACKEND_PACKAGES = {
    "quanto": ("optimum.quanto", "optimum-quanto (pip install 'kvbench[quantized]')"),
    "hqq": ("hqq", "hqq (pip install hqq)"),
}


def unsupported_reason(
    cell: Cell,
    device: str,
    capability: tuple[int, int] | None = None,
    quantized_backend: str = "quanto",
    *,
    capability_known: bool = True,
) -> str | None:
    """Why this machine cannot run a cell's cache or attention implementation, known before trying.
    `capability` is the GPU's compute capability (None on a CPU); not `capability_known` where the GPUs are
    other machines' (--launcher ray), whose workers decide."""
    if cell.cache_implementation in ("offloaded", "offloaded_static") and not is_gpu(device):
        return f"cache_implementation={cell.cache_implementation} offloads to a GPU and needs a CUDA device"
    package = _QUANTIZED_BACKEND_PACKAGES.get(quantized_backend)
    if cell.cache_implementation == "quantized" and package is not None and not _installed(package[0]):
        return f"cache_implementation=quantized with the {quantized_backend} backend needs {package[1]}"
    if cell.cache_implementation == "quantized" and quantized_backend == "fp8":
        missing = _fp8_cache_missing()
        if missing is not None:
            return missing
    gpu_elsewhere = not capability_known and is_gpu(device)
    if cell.attn_implementation == "flash_attention_2" and not gpu_elsewhere and (capability is None or capability < (8, 0)):
        found = f"this GPU has {capability[0]}.{capability[1]}" if capability else f"the device is {device}"
        return f"attn_implementation=flash_attention_2 needs a GPU of compute capability 8.0 or newer ({found})"
    if cell.attn_implementation == "flash_attention_2" and not _installed("flash_attn"):
        return "attn_implementation=flash_attention_2 needs the flash-attn package"
    return None


def _fp8_cache_missing() -> str | None:
    """Why the installed transformers cannot build an fp8 quantized cache: its generate() knows the backend only
    where cache_utils has the layer (5.24 has it, 5.17 not), and otherwise fails inside the first run."""
    import transformers
    from transformers import cache_utils

    if hasattr(cache_utils, "Fp8QuantizedLayer"):
        return None
    return (
        f"cache_implementation=quantized with the fp8 backend needs a transformers with an fp8 quantized cache"
        f" (this one, {transformers.__version__}, has none): pip install -U transformers, or --quantized-backend quanto"
    )


def first_divergence(a: Any, b: Any) -> int | None:
    """Index of the first generated position where two (batch, tokens) id tensors differ, or None."""
    differs = (a != b).any(dim=0).nonzero()
    return int(differs[0]) if differs.numel() else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# How torch's CPU allocator words a failed allocation (a RuntimeError, not a MemoryError).
_CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _CPU_OUT_OF_MEMORY)


class _LoadFailure(Exception):
    """A model that cannot be loaded for one cell of a sweep: recorded for the cell, and the sweep goes on."""


@dataclass
class Generation:
    """One cell's generate() call, ready to repeat in either mode: the model, its inputs and the settings
    every call of the cell shares."""

    model: Any
    cell: Cell
    input_ids: Any
    attention_mask: Any
    pad_token_id: int
    clock: TokenClock
    # False: generate() must not compile a static cache's forward pass, as it would by itself on a GPU.
    compile: bool = False
    # The cache implementation's own settings (kvbench.config.cache_config); None where it takes none.
    cache_config: dict[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def __call__(self, mode: str) -> Any:
        self.clock.begin(self.cell.max_new_tokens)
        cache = self.cell.cache_implementation if mode == "cached" else None
        # The output carries the cache object, whose bytes kvsize measures after the run.
        return self._generate(cache, streamer=self.clock)

    def _generate(self, cache_implementation: str | None, **extra: Any) -> Any:
        """generate() as every call of the cell makes it; `cache_implementation` None: without a cache."""
        kwargs: dict[str, Any] = {}
        if cache_implementation not in (None, "dynamic"):
            kwargs["cache_implementation"] = cache_implementation
        if cache_implementation == self.cell.cache_implementation and self.cache_config is not None:
            # A copy: some transformers versions (5.17) pop 'backend' from the dict they are given, which
            # would leave the next call, and the theory of the cache's bytes, without one.
            kwargs["cache_config"] = dict(self.cache_config)
        if not self.compile:
            kwargs["disable_compile"] = True
        return self.model.generate(
            self.input_ids,
            attention_mask=self.attention_mask,
            max_new_tokens=self.cell.max_new_tokens,
            # Greedy and forced to full length: an early end-of-sequence would shorten one mode only.
            min_new_tokens=self.cell.max_new_tokens,
            do_sample=False,
            use_cache=cache_implementation is not None,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            **kwargs,
            **extra,
        )

    def untimed_pass(self, cache_implementation: str, fed_ids: Any = None) -> tuple[Any, Any]:
        """A cached greedy generation outside any timed run: its new token ids and its raw next-token logits
        (batch, new tokens, vocabulary). With `fed_ids` (batch, new tokens) those tokens are generated instead of
        the model's own choice, so the logits are the model's at exactly that sequence's positions."""
        import torch

        extra: dict[str, Any] = {"output_logits": True}
        if fed_ids is not None:
            extra["logits_processor"] = [_feeding(fed_ids, self.prompt_tokens)]
        output = self._generate(cache_implementation, **extra)
        # Held on the host: a long generation's logits over a large vocabulary would crowd a GPU.
        logits = torch.stack([step.cpu() for step in output.logits], dim=1)
        return output.sequences[:, self.prompt_tokens :].cpu(), logits


def _feeding(ids: Any, prompt_tokens: int) -> Any:
    """A logits processor that makes greedy search pick `ids` (batch, new tokens), one position per step."""
    import torch
    from transformers import LogitsProcessor

    class Feeding(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            position = input_ids.shape[1] - prompt_tokens
            chosen = ids[:, position : position + 1].to(scores.device)
            return torch.full_like(scores, -torch.inf).scatter_(1, chosen, 0.0)

    return Feeding()


@dataclass
class OutputAgreement:
    """How a cache's greedy output compares with the dynamic cache's (CellResult's agreement_ fields)."""

    token_share: float
    first_divergence: int | None
    top1_share: float
    kl_mean_nats: float


def output_agreement(reference_ids: Any, ids: Any, reference_logits: Any, logits: Any) -> OutputAgreement:
    """`ids` against the dynamic cache's `reference_ids` (batch, new tokens), and `logits` against
    `reference_logits` (batch, new tokens, vocabulary), both taken at the same positions of the same sequence:
    top-1 agreement and KL(reference || logits), in float64 so that a lossless cache reads 0 and not rounding."""
    import torch

    kl = torch.zeros(reference_logits.shape[:2], dtype=torch.float64)
    # One position at a time: float64 copies of every position's distribution at once could be gigabytes.
    for position in range(reference_logits.shape[1]):
        reference_log_p = torch.log_softmax(reference_logits[:, position].to(torch.float64), dim=-1)
        log_p = torch.log_softmax(logits[:, position].to(torch.float64), dim=-1)
        kl[:, position] = (reference_log_p.exp() * (reference_log_p - log_p)).sum(dim=-1)
    top1 = reference_logits.argmax(dim=-1) == logits.argmax(dim=-1)
    return OutputAgreement(
        token_share=float((ids.cpu() == reference_ids.cpu()).to(torch.float64).mean()),
        first_divergence=first_divergence(ids.cpu(), reference_ids.cpu()),
        top1_share=float(top1.to(torch.float64).mean()),
        # Never below 0 but for the last bits of float64 arithmetic.
        kl_mean_nats=max(0.0, float(kl.mean())),
    )


def record_output_agreement(cell_result: CellResult, generate: Generation, measured_ids: Any) -> None:
    """The cell's cache against the dynamic cache on the same model and prompt, in untimed passes: the
    dynamic cache's greedy tokens and logits, then this cache fed those tokens for its logits at the same
    positions; `measured_ids` are this cache's own greedy tokens from the first timed run."""
    reference_ids, reference_logits = generate.untimed_pass("dynamic")
    _, logits = generate.untimed_pass(generate.cell.cache_implementation, fed_ids=reference_ids)
    agreement = output_agreement(reference_ids, measured_ids, reference_logits, logits)
    cell_result.agreement_token_share = agreement.token_share
    cell_result.agreement_first_divergence = agreement.first_divergence
    cell_result.agreement_top1_share = agreement.top1_share
    cell_result.agreement_kl_mean_nats = agreement.kl_mean_nats


def prepare_generation(
    loaded: Any,
    cell: Cell,
    ids: Any,
    clock: TokenClock,
    compile: bool = False,
    cache_settings: dict[str, Any] | None = None,
) -> Generation:
    """A cell's batch of prompts on the model's input device."""
    import torch

    input_ids = ids.unsqueeze(0).repeat(cell.batch_size, 1).to(loaded.devices.primary)
    return Generation(
        loaded.model,
        cell,
        input_ids,
        torch.ones_like(input_ids),
        _pad_token_id(loaded.model),
        clock,
        compile,
        cache_settings,
    )


def measure_generation(
    generate: Generation,
    mode: str,
    run: int,
    probe: MemoryProbe,
    timed: Callable,
    *,
    energy: CounterReader | None = None,
    on_output: Callable[[Any], None] | None = None,
) -> tuple[RunRecord, Any]:
    """One measured generate(): memory probed and energy counted around it, timed, its length checked.
    `on_output` sees generate()'s whole output (its cache included) before it is dropped. Returns the
    run's record and the new token ids."""
    # Outside the timed span: each run starts from the same memory, not from what the last one left.
    free_memory(probe.devices)
    probe.start()
    if energy is not None:
        energy.start()
    try:
        output, latency_s = timed(lambda: generate(mode))
    finally:
        # Stopped even when generate() fails (out of memory, Ctrl-C), so the sampler is never left running.
        joules = energy.stop().joules if energy is not None else None
        reading = probe.stop()
    if on_output is not None:
        on_output(output)
    cell, times = generate.cell, generate.clock.times_s
    new_ids = output.sequences[:, generate.prompt_tokens :]
    del output  # the cache goes with it, before the next run is measured
    if new_ids.shape[1] != cell.max_new_tokens or len(times) != cell.max_new_tokens:
        raise RuntimeError(
            f"generate() produced {new_ids.shape[1]} new tokens ({len(times)} streamed), not {cell.max_new_tokens}"
        )
    per_device = reading.per_device
    run_record = RunRecord(
        cell=cell.id,
        mode=mode,
        run=run,
        latency_s=latency_s,
        new_tokens=cell.max_new_tokens,
        prompt_tokens=generate.prompt_tokens,
        batch_size=cell.batch_size,
        tokens_per_s=cell.max_new_tokens * cell.batch_size / latency_s,
        time_to_first_token_s=times[0] if times else None,
        token_times_s=[round(t, 6) for t in times],
        per_device={device: asdict(figures) for device, figures in per_device.items()} if per_device else None,
        host=platform.node(),
        pid=os.getpid(),
        time_per_output_token_s=time_per_output_token_s(latency_s, times[0], len(times)) if times else None,
        energy_j=joules,
        memory_timeline=downsample(reading.timeline),
        memory_timeline_source=reading.timeline_source,
        allocated_by_position=list(generate.clock.allocated_by_position) or None,
        **asdict(reading.totals),
    )
    return run_record, new_ids


class Measurement:
    """Measures cells in this process, one at a time, into its result; after every generation it calls
    `on_save`, which a run (kvbench.runner) turns into a write of the results file and a measuring process
    (kvbench.worker) into messages to the process that writes it."""

    def __init__(
        self,
        config: BenchConfig,
        device: str,
        observer: Observer | None = None,
        command: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_save: Callable[[bool, bool], None] | None = None,
        gpu_here: bool = True,
    ) -> None:
        """`clock` times every generation and its tokens: perf_counter, or a scripted clock that makes each
        latency a chosen number (how the tests drive stopping rules and displays without real noise).
        Without `gpu_here`, `device` is not this process's to ask about (the cells are measured on other
        machines): no GPU here is described or touched."""
        from kvbench import environment

        self.config = config
        self.observer = observer or Observer()
        self.clock = clock
        self.device = device
        self.gpu_here = gpu_here
        self.capability = compute_capability(self.device) if gpu_here else None
        self.cells = expand(config)
        # In a sweep a failing cell is recorded and the sweep goes on; a run of one cell reports it as the
        # run's own error. A measuring process (kvbench.worker) measures its cell as part of a sweep.
        self.part_of_sweep = len(self.cells) > 1
        self.result = BenchmarkResult(
            environment=environment.collect(Devices((self.device,)), gpu_here),
            config=config_to_dict(config),
            command=command,
            started_at=_now(),
            kvbench_version=__version__,
            cells=[CellResult(settings=cell) for cell in self.cells],
        )
        self._on_save = on_save
        self._loaded: tuple[tuple[str, str, str], Any] | None = None
        self.probe: MemoryProbe | None = None
        self.energy: CounterReader | None = None

    def save(self, final: bool = False, closing: bool = False) -> None:
        """After every generation; `final` at the end of a cell, `closing` at the end of the run."""
        self.result.updated_at = _now()
        if self._on_save is not None:
            self._on_save(final, closing)

    def close(self) -> None:
        """Stop the memory sampler (a process of its own, with NVML)."""
        if self.probe is not None:
            self.probe.close()

    def measure_here(self, cell_result: CellResult, index: int, count: int, launcher: str) -> None:
        """Measure one cell of `count` in this process, telling the observer and saving at its end."""
        from kvbench.environment import placement

        self.observer.cell_started(cell_result, index, count)
        self.measure_cell(cell_result)
        cell_result.ran_on = {"launcher": launcher, **placement(self.devices_in_use())}
        self.save(final=True)
        self.observer.cell_finished(cell_result)

    def prepare_models(self) -> None:
        """Resolve every model and check every cell's length before any generation, so a mistake in
        the last cell of a sweep is not found after hours of measuring."""
        from kvbench import models

        self.prepared = {
            name: models.prepare_model(
                name,
                self.config.weights,
                trust_remote_code=self.config.trust_remote_code,
                revision=self.config.revision,
            )
            for name in self.config.model
        }
        self.prompts = {}
        for name, prepared in self.prepared.items():
            for length in self.config.prompt_tokens or [None]:
                self.prompts[name, length] = models.prompt_ids(prepared, self.config.prompt, length, self.config.seed)
            ids, how = self.prompts[name, (self.config.prompt_tokens or [None])[0]]
            notes = list(prepared.notes)
            if how == "synthetic" and self.config.prompt_tokens is None:
                notes.append(
                    f"{name} has no tokenizer, so the prompt text is not used: {len(ids)} seeded synthetic"
                    " token ids stand in for it"
                )
            for note in notes:
                if note not in self.result.notes:
                    self.result.notes.append(note)
        note = models.bfloat16_note(self.config.dtype, self.capability)
        if note is not None and note not in self.result.notes:
            self.result.notes.append(note)
        for cell in self.cells:
            models.check_context(
                self.prepared[cell.model], len(self.prompts[cell.model, cell.prompt_tokens][0]), cell.max_new_tokens
            )

    def _model_for(self, cell: Cell) -> Any:
        from kvbench import models

        key = (cell.model, cell.dtype, cell.attn_implementation)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None
            self._free_memory()
            loaded = models.build_model(
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
            if self.probe is not None:
                self.probe.close()
            self.probe = MemoryProbe(
                loaded.devices, self.config.sample_interval_ms / 1000, self.config.memory_sampling
            )
            self.energy = energy_reader(list(loaded.devices.names))
            if self.energy.unavailable:
                self.result.unmeasured["energy"] = self.energy.unavailable
        return self._loaded[1]

    def _load_for(self, cell: Cell) -> Any:
        """The cell's model. Its files were checked before measuring; what fails only now (weights that do
        not fit the architecture, a backend that refuses) is this cell's failure: in a sweep it is
        recorded and the sweep goes on, for a single cell it is one line."""
        try:
            return self._model_for(cell)
        except KvbenchError as error:
            if not self.part_of_sweep:
                raise
            raise _LoadFailure(str(error)) from None
        except Exception as error:
            if is_out_of_memory(error):
                raise
            if not self.part_of_sweep:
                raise KvbenchError(
                    f"{cell.model}: cannot load the model ({type(error).__name__}: {error}); check its files"
                    " or use --weights random"
                ) from None
            raise

    def _device_peaks(self, cells_measured_in: MeasuredIn = MeasuredIn.THIS_PROCESS) -> None:
        """The peaks each mode's roofline bound is computed from, measured before any model is loaded (so
        the copy buffers compete with nothing), and a known GPU's datasheet figures beside them. Timed
        where the cells are: beside fresh measuring processes in one of their own, so this process holds no
        CUDA context or cached memory on the measured GPU for the whole sweep; not at all for cells
        measured on other machines."""
        from kvbench.roofline import datasheet_peaks, measure_device_peaks

        environment = self.result.environment
        sheet = datasheet_peaks(environment.get("gpu_name"))
        if sheet is not None:
            environment["datasheet_peaks"] = asdict(sheet)
        if not self.config.device_peaks:
            self.result.unmeasured["device_peaks"] = "not measured (--no-device-peaks): no roofline bound from them"
            return
        if cells_measured_in == MeasuredIn.OTHER_MACHINES:
            self.result.unmeasured["device_peaks"] = (
                "not measured: the cells ran on other machines (--launcher ray), whose devices this process"
                " cannot time; no roofline bound from them"
            )
            return
        if cells_measured_in == MeasuredIn.FRESH_PROCESSES:
            peaks, problem = device_peaks_in_fresh_process(self.device)
            if problem is not None:
                self.result.unmeasured["device_peaks"] = problem
            else:
                environment["device_peaks"] = peaks
            return
        environment["device_peaks"] = asdict(measure_device_peaks(self.device))

    def _free_memory(self) -> None:
        gc.collect()
        if is_gpu(self.device):
            import torch

            torch.cuda.empty_cache()

    def unsupported_reason(self, cell: Cell) -> str | None:
        """Why this run cannot measure `cell` here, known before trying; None when it can. Planning, the
        estimate and measuring all ask this one question."""
        return unsupported_reason(
            cell, self.device, self.capability, self.config.quantized_backend, capability_known=self.gpu_here
        )

    def devices_in_use(self) -> Devices:
        """The devices of the model loaded last (all of them with --device-map), else the run's device."""
        return self._loaded[1].devices if self._loaded is not None else Devices((self.device,))

    def measure_cell(self, cell_result: CellResult) -> None:
        """Measure one cell in this process, recording a failure that is the cell's own (out of memory,
        an error within a sweep) in the cell and going on."""
        cell = cell_result.settings
        reason = self.unsupported_reason(cell)
        if reason is not None:
            cell_result.status, cell_result.reason = CellState.SKIPPED, reason
            return
        # An interrupted cell is measured again from its start, so its runs stay interleaved.
        self.result.runs = [run for run in self.result.runs if run.cell != cell.id]
        failure: tuple[str, str] | None = None
        try:
            loaded = self._load_for(cell)
            ids, how = self.prompts[cell.model, cell.prompt_tokens]
            cell_result.model = loaded.info()
            # How the model was run: let compile (a static cache on a GPU) or held to eager code.
            cell_result.model["compile"] = self.config.compile
            cell_result.prompt_tokens, cell_result.prompt_source = len(ids), how
            cell_result.kv_cache_bytes = cache_bytes_for(
                loaded.model.config, len(ids) + cell.max_new_tokens, cell.batch_size, loaded.dtype
            )
            cell_result.model["cost"] = _model_cost(loaded)
            cell_result.status = CellState.INCOMPLETE
            clock = TokenClock(self.observer.token, self.clock, allocated=_allocated_reader(loaded.devices))
            generation = prepare_generation(
                loaded, cell, ids, clock, self.config.compile, cache_config(self.config, cell)
            )
            with frozen_heap():
                self._measure_cell(cell_result, generation, loaded)
        except KvbenchError:
            raise
        except Exception as error:  # noqa: BLE001 - a sweep records a failing cell and goes on
            size = f"batch {cell.batch_size} x {cell.max_new_tokens} new tokens"
            if is_out_of_memory(error):
                # Recorded; a run of this one cell then ends in one line (Benchmark.run), not a traceback.
                failure = (CellState.OOM, f"out of memory at {size} ({type(error).__name__})")
            elif isinstance(error, _LoadFailure):
                failure = (CellState.ERROR, str(error))
            elif self.part_of_sweep:
                failure = (CellState.ERROR, f"{type(error).__name__}: {error}")
            else:
                raise
        if failure is None:
            cell_result.status = CellState.MEASURED
            return
        # Freed only now: until the except block ends, its traceback keeps the failed run's tensors alive.
        cell_result.status, cell_result.reason = failure
        self.result.runs = [run for run in self.result.runs if run.cell != cell.id]
        self._loaded = None
        self._free_memory()

    def _measure_cell(self, cell_result: CellResult, generate: Generation, loaded: Any) -> None:
        """Warmup, then measured runs with the modes interleaved, until enough runs."""
        from kvbench.timing import make_timer

        config, cell = self.config, cell_result.settings
        timed = make_timer(loaded.devices, self.clock)
        for warmup in range(config.warmup):
            for mode in config.modes:
                label, generation = f"warmup {mode} {warmup + 1}/{config.warmup}", planned_generation(cell, mode)
                self.observer.generation_started(label, generation)
                generate(mode)
                self.observer.generation_finished(None, generation)

        first_outputs: dict[str, Any] = {}
        fewest, most = run_limits(config)
        # Interleaved (cached, uncached, cached, ...) so drift in the machine's speed hits both modes alike.
        for run in range(most):
            if run >= fewest and self._precise_enough(cell_result):
                break
            for mode in config.modes:
                generation = planned_generation(cell, mode)
                self.observer.generation_started(f"{mode} {run + 1}/{most}", generation)
                measure_cache = mode == "cached" and "cached" not in first_outputs
                measured, new_ids = measure_generation(
                    generate,
                    mode,
                    run,
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
                self.result.add_runs([measured])
                self.result.unmeasured.update(self.probe.unavailable)
                if self.energy is not None and self.energy.run_problem:
                    self.result.unmeasured["energy"] = self.energy.run_problem
                self.save()
                self.observer.generation_finished(measured.latency_s, generation)
        else:
            if config.target_rse is not None and not self._precise_enough(cell_result):
                cell_result.stop_reason = f"stopped at the most runs ({most}) before every mode reached the target RSE"
        tokenizer = self.prepared[cell.model].tokenizer
        if tokenizer is not None:
            cell_result.generated_text = {
                mode: tokenizer.decode(ids[0], skip_special_tokens=True) for mode, ids in first_outputs.items()
            }
        if len(first_outputs) == 2:
            divergence = first_divergence(first_outputs["cached"], first_outputs["uncached"])
            cell_result.outputs_match = divergence is None
            cell_result.first_divergence = divergence
        # After every timed run, so it costs no measurement anything but time.
        if cell.cache_implementation != "dynamic" and "cached" in first_outputs:
            try:
                record_output_agreement(cell_result, generate, first_outputs["cached"])
            except Exception as error:  # noqa: BLE001 - the timed runs stand; only the comparison is lost
                first_line = (str(error).strip().splitlines() or [""])[0]
                cell_result.agreement_note = (
                    f"not measured: the untimed comparison with the dynamic cache failed"
                    f" ({type(error).__name__}: {first_line})"
                )

    def _precise_enough(self, cell_result: CellResult) -> bool:
        """With --target-rse: whether every mode's mean is already known closely enough."""
        target = self.config.target_rse
        if target is None:
            return False
        samples = {
            mode: [r.latency_s for r in self.result.runs_of(cell_result.id, mode)] for mode in self.config.modes
        }
        enough, worst = precise_enough(samples, target, RSE_CONFIDENCE)
        if enough:
            cell_result.stop_reason = (
                f"every mode within the target RSE {target:.1%} at {RSE_CONFIDENCE:.0%} confidence"
                f" (worst upper bound {worst:.2%})"
            )
        return enough


def record_cache_size(
    cell_result: CellResult, output: Any, loaded: Any, cache_settings: dict[str, Any] | None = None
) -> None:
    """The bytes of a cached run's cache object beside the theory at the positions it holds: for a
    quantized cache, the theory of its backend with `cache_settings` (generate()'s cache_config)."""
    from kvbench import kvsize

    cell = cell_result.settings
    measurement = kvsize.measured_cache_bytes(kvsize.cache_of(output))
    positions = kvsize.cached_positions(cell_result.prompt_tokens or 0, cell.max_new_tokens)
    theory = kvsize.cache_bytes_for(loaded.model.config, positions, cell.batch_size, loaded.dtype)
    quantized = None
    if cache_settings is not None and cell.cache_implementation == "quantized":
        quantized = kvsize.quantized_cache_bytes(
            loaded.model.config, cell_result.prompt_tokens or 0, cell.max_new_tokens, cell.batch_size, loaded.dtype,
            cache_settings,
        )
        theory = quantized.kv_bytes if quantized is not None else None
    cell_result.kv_cache_measured_bytes = measurement.kv_bytes
    cell_result.kv_cache_bytes_by_device = dict(measurement.bytes_by_device) or None
    cell_result.kv_cache_positions = positions
    cell_result.kv_cache_theory_bytes = theory
    cell_result.kv_cache_class = measurement.cache_class
    cell_result.kv_cache_agrees = kvsize.agrees_with_theory(measurement.kv_bytes, theory)
    notes = [measurement.reason] if measurement.reason else []
    if quantized is not None:
        notes = [kvsize.quantized_theory_text(quantized, cache_settings or {}, loaded.dtype)]
    elif cell.cache_implementation == "quantized":
        notes.append(f"no theory for the {(cache_settings or {}).get('backend')} backend's layout")
    if measurement.positions_held is not None and measurement.positions_held != positions:
        notes.append(f"the cache reports {measurement.positions_held} positions held, not {positions}")
    cell_result.kv_cache_note = "; ".join(notes) or None


def _model_cost(loaded: Any) -> dict[str, int] | None:
    """What the roofline needs from the model (kvbench.roofline.ModelCost), kept in the results file so
    `show` and `plot` compute the bound without loading the model."""
    from kvbench.roofline import model_cost, parameter_roles

    try:
        lookup, head = parameter_roles(loaded.model)
        return asdict(model_cost(loaded.model.config, loaded.parameters, loaded.dtype, lookup, head))
    except KvbenchError:
        return None


def _allocated_reader(devices: Devices) -> Callable[[], int] | None:
    """torch's allocated bytes over the model's GPUs, for TokenClock; None on a CPU."""
    if not devices.on_gpu:
        return None
    import torch

    return lambda: sum(torch.cuda.memory_allocated(device) for device in devices.gpus)


def _pad_token_id(model: Any) -> int:
    generation = model.generation_config
    for candidate in (generation.pad_token_id, generation.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0
