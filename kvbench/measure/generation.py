"""One generate() call of a cell, ready to repeat in either mode, and one measured run of it: timed, its
tokens' arrival noted, memory probed and energy counted around it, its length checked."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvbench.core.devices import Devices
from kvbench.core.metrics import time_per_output_token_s
from kvbench.hardware.energy import CounterReader
from kvbench.hardware.memory import MemoryProbe, downsample, free_memory
from kvbench.model.caches import REFERENCE
from kvbench.model.cells import Cell
from kvbench.model.modes import MODES_BY_NAME
from kvbench.model.records import RunRecord

_CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _CPU_OUT_OF_MEMORY)


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
    # The cache implementation's own settings (kvbench.model.caches.cache_config); None where it takes none.
    cache_config: dict[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def __call__(self, mode: str, *, logits: bool = False, fed_ids: Any = None) -> Any:
        """One generation in `mode`. Untimed (a warmup), it may also return each step's logits, and make the
        model generate `fed_ids` (batch, new tokens) rather than its own choice: the same work, so the same
        warmup, with what comparing outputs needs kept."""
        self.clock.begin(self.cell.max_new_tokens)
        cache = self.cell.cache_implementation if MODES_BY_NAME[mode].use_cache else None
        extra: dict[str, Any] = {"streamer": self.clock}
        if logits or fed_ids is not None:
            extra["output_logits"] = True
        if fed_ids is not None:
            extra["logits_processor"] = [_feeding(fed_ids, self.prompt_tokens)]
        # The output carries the cache object, whose bytes kvsize measures after the run.
        return self._generate(cache, **extra)

    def _generate(self, cache_implementation: str | None, **extra: Any) -> Any:
        """generate() as every call of the cell makes it; `cache_implementation` None: without a cache."""
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

        extra: dict[str, Any] = {"output_logits": True}
        if fed_ids is not None:
            extra["logits_processor"] = [_feeding(fed_ids, self.prompt_tokens)]
        return self.ids_and_logits(self._generate(cache_implementation, **extra))

    def ids_and_logits(self, output: Any) -> tuple[Any, Any]:
        """A generation's new token ids (batch, new tokens) and its raw logits (batch, new tokens, vocabulary),
        held on the host: a long generation's logits over a large vocabulary would crowd a GPU."""
        import torch

        return output.sequences[:, self.prompt_tokens :].cpu(), torch.stack([step.cpu() for step in output.logits], dim=1)


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


def allocated_reader(devices: Devices) -> Callable[[], int] | None:
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
