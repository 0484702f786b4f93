"""One generate() call of a cell, ready to repeat in either mode, and one measured run of it: timed, its
tokens' arrival noted, memory probed and energy counted around it, its length checked."""

from __future__ import annotations

import copy
import inspect
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvbench.core.devices import Devices
from kvbench.core.metrics import time_per_output_token_s
from kvbench.hardware.energy import CounterReader, counter_resolution
from kvbench.hardware.memory import MemoryProbe, downsample, free_memory
from kvbench.measure.prompts import PromptBatch
from kvbench.model.caches import REFERENCE
from kvbench.model.cells import Cell
from kvbench.model.modes import MODES_BY_NAME
from kvbench.model.records import RunRecord

# Out of memory in the words of a RuntimeError, not torch's OutOfMemoryError: the CPU allocator's; cuBLAS failing
# to allocate its handle or workspace as a matrix product starts (cublasCreate, cublasLt); a CUDA call outside
# torch's caching allocator.
_OUT_OF_MEMORY_WORDS = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
)
# CUDA errors that leave the process's CUDA context unusable: every later CUDA call in the process fails too.
_STICKY_CUDA_ERRORS = (
    "an illegal memory access was encountered",
    "device-side assert triggered",
    "unspecified launch failure",
    "misaligned address",
    "an illegal instruction was encountered",
    "uncorrectable ECC error encountered",
)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _OUT_OF_MEMORY_WORDS)


def is_sticky_cuda_error(error: BaseException) -> bool:
    """A CUDA error after which nothing more can run on the GPU in this process (a fresh process can)."""
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _STICKY_CUDA_ERRORS)


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

    def now(self) -> float:
        return self._clock()

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


@dataclass
class Generation:
    """One cell's generate() call, ready to repeat in any mode: the model, its batch of prompts and the
    settings every call of the cell shares."""

    model: Any
    cell: Cell
    batch: PromptBatch
    pad_token_id: int
    clock: TokenClock
    # False: generate() must not compile a static cache's forward pass, as it would by itself on a GPU.
    compile: bool = False
    # The cache implementation's own settings (kvbench.model.caches.cache_config); None where it takes none.
    cache_config: dict[str, Any] | None = None
    # Waits for the GPUs' queued work (kvbench.hardware.timing.synchronizer), so a prefix's copy is timed
    # whole; nothing on a CPU.
    synchronize: Callable[[], None] = lambda: None
    # The shared prefix's cache, one row's, computed once by prefill_prefix(); the prefix mode's generations
    # each start from a copy of it.
    prefix_cache: Any = None
    # Seconds the last generation spent copying the prefix's cache (the prefix mode), else None.
    last_copy_s: float | None = None

    @property
    def input_ids(self) -> Any:
        return self.batch.input_ids

    @property
    def attention_mask(self) -> Any:
        return self.batch.attention_mask

    @property
    def prompt_tokens(self) -> int:
        return self.batch.positions

    def prefill_tokens(self, mode: str) -> int | None:
        """The prompt tokens a generation in `mode` computes over the batch, where not prompt x batch: the
        real tokens of a padded batch, those after a reused prefix. None: prompt x batch."""
        if MODES_BY_NAME[mode].reuses_prefix and self.cell.prefix_tokens is not None:
            return self.batch.real_tokens - self.cell.prefix_tokens * len(self.batch.lengths)
        return self.batch.real_tokens if self.batch.padded else None

    def prefill_prefix(self) -> Any:
        """The cache of the shared prefix (the first row's first prefix_tokens ids), computed once, outside
        any timed span. Returns it."""
        import torch

        assert self.cell.prefix_tokens is not None
        with torch.no_grad():  # deepcopy takes only tensors outside autograd's graph
            output = self.model(self.input_ids[:1, : self.cell.prefix_tokens], use_cache=True)
        from kvbench.core.kvsize import cache_of

        self.prefix_cache = cache_of(output)
        return self.prefix_cache

    def __call__(self, mode: str, *, logits: bool = False, fed_ids: Any = None) -> Any:
        """One generation in `mode`. Untimed (a warmup), it may also return each step's logits, and make the
        model generate `fed_ids` (batch, new tokens) rather than its own choice: the same work, so the same
        warmup, with what comparing outputs needs kept."""
        self.clock.begin(self.cell.max_new_tokens)
        described = MODES_BY_NAME[mode]
        cache = self.cell.cache_implementation if described.use_cache else None
        extra: dict[str, Any] = {"streamer": self.clock}
        if logits or fed_ids is not None:
            extra["output_logits"] = True
        if fed_ids is not None:
            extra["logits_processor"] = [_feeding(fed_ids, self.prompt_tokens)]
        self.last_copy_s = None
        if described.reuses_prefix:
            # Within the timed span, after the clock began: a request served from a shared prefix pays for
            # its own copy before its first token.
            started = self.clock.now()
            reused = copy.deepcopy(self.prefix_cache)
            if len(self.batch.lengths) > 1:
                reused.batch_repeat_interleave(len(self.batch.lengths))
            self.synchronize()
            self.last_copy_s = self.clock.now() - started
            extra[_cache_argument(self.model)] = reused
        # The output carries the cache object, whose bytes kvsize measures after the run.
        return self._generate(cache, **extra)

    def _generate(self, cache_implementation: str | None, *, forced_length: bool = True, **extra: Any) -> Any:
        """generate() as every call of the cell makes it; `cache_implementation` None: without a cache. Without
        `forced_length`, the caller's logits processor keeps the end of sequence from being chosen early."""
        kwargs: dict[str, Any] = {}
        if cache_implementation not in (None, REFERENCE):  # the dynamic cache is what generate() builds by itself
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
            min_new_tokens=self.cell.max_new_tokens if forced_length else None,
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

        extra: dict[str, Any] = {"output_logits": True}
        if fed_ids is not None:
            extra["logits_processor"] = [_feeding(fed_ids, self.prompt_tokens)]
        return self.ids_and_logits(self._generate(cache_implementation, **extra))

    def plain_pass(self, cache_implementation: str, processor: Any) -> Any:
        """An untimed generation whose every token `processor` (a transformers LogitsProcessor) chooses: it
        sees each step's raw logits, as no rule of generate()'s own runs before it."""
        return self._generate(cache_implementation, forced_length=False, logits_processor=[processor])

    def ids_and_logits(self, output: Any) -> tuple[Any, Any]:
        """A generation's new token ids (batch, new tokens) and its raw logits (batch, new tokens, vocabulary),
        held on the host: a long generation's logits over a large vocabulary would crowd a GPU."""
        import torch

        return output.sequences[:, self.prompt_tokens :].cpu(), torch.stack([step.cpu() for step in output.logits], dim=1)


def _cache_argument(model: Any) -> str:
    """The name generate() takes a starting cache by: `cache` in newer transformers (which warn about the
    older name), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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


def prepare_generation(
    loaded: Any,
    cell: Cell,
    batch: PromptBatch,
    clock: TokenClock,
    compile: bool = False,
    cache_settings: dict[str, Any] | None = None,
) -> Generation:
    """A cell's batch of prompts on the model's input device."""
    from kvbench.hardware.timing import synchronizer

    device = loaded.devices.primary
    on_device = PromptBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.lengths)
    return Generation(
        loaded.model,
        cell,
        on_device,
        pad_token_id(loaded.model),
        clock,
        compile,
        cache_settings,
        synchronizer(loaded.devices),
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
    resolution = counter_resolution(reading.energy_samples_j)
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
        prefill_tokens=generate.prefill_tokens(mode),
        prefix_copy_s=generate.last_copy_s,
        token_times_s=[round(t, 6) for t in times],
        per_device={device: asdict(figures) for device, figures in per_device.items()} if per_device else None,
        host=platform.node(),
        pid=os.getpid(),
        time_per_output_token_s=time_per_output_token_s(latency_s, times[0], len(times)) if times else None,
        energy_j=joules,
        energy_counter_step_j=resolution.step_j if resolution is not None else None,
        energy_counter_period_s=resolution.period_s if resolution is not None else None,
        gpu_clocks=reading.gpu_clocks,
        memory_timeline=downsample(reading.timeline),
        memory_timeline_source=reading.timeline_source,
        allocated_by_position=list(generate.clock.allocated_by_position) or None,
        **asdict(reading.totals),
    )
    return run_record, new_ids


def allocated_reader(devices: Devices) -> Callable[[], int] | None:
    """torch's allocated bytes over the model's GPUs, for TokenClock; None on a CPU."""
    if not devices.on_gpu:
        return None
    import torch

    return lambda: sum(torch.cuda.memory_allocated(device) for device in devices.gpus)


def pad_token_id(model: Any) -> int:
    generation = model.generation_config
    for candidate in (generation.pad_token_id, generation.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0
