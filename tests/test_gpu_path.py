"""The GPU path's decisions, tested without a GPU: fakes only where kvbench meets the machine (torch.cuda's
answers, pynvml) or transformers' own decision to compile, never inside kvbench."""

import functools
import gc
import multiprocessing

import pytest

from kvbench.core.devices import Devices, compute_capability
from kvbench.core.errors import KvbenchError
from kvbench.hardware.memory import MemoryProbe, MemoryReading
from kvbench.measure.generation import TokenClock, measure_generation, prepare_generation
from kvbench.measure.loading import build_model, prompt_ids
from kvbench.measure.models import bfloat16_note, prepare_model, resolve_dtype
from kvbench.measure.prompts import build_batch
from kvbench.measure.support import unsupported_reason
from kvbench.model.cells import Cell
from kvbench.model.memory_figures import MemoryFigures
from kvbench.model.settings import BenchConfig
from kvbench.model.validation import validate
from kvbench.render.cells import memory_difference
from kvbench.runner.benchmark import Benchmark, run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import make_result, tiny_config
from tests.fakes import cuda_properties, open_fake_nvml


@pytest.fixture
def a_t4(monkeypatch, fake_nvml):
    """torch answering like a machine with one GPU of compute capability 7.5 (a T4), NVML like its driver."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: cuda_properties())
    fake_nvml()


# Memory that means what it says


class RecordingProbe:
    """A probe on a GPU that only notes when it starts and stops."""

    def __init__(self, events: list[str]) -> None:
        self.devices = Devices(("cuda:0",))
        self.events = events

    def start(self) -> None:
        self.events.append("probe start")

    def stop(self) -> MemoryReading:
        self.events.append("probe stop")
        return MemoryReading(MemoryFigures())


def test_memory_is_freed_before_every_measured_run_outside_the_timed_span(tiny_gpt2_dir, monkeypatch):
    import torch

    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"synchronize {device}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty cache"))

    def full_collection(phase, info):
        if phase == "start" and info["generation"] == 2:
            events.append("gc")

    def timed(call):
        events.append("timer start")
        output = call()
        events.append("timer stop")
        return output, 0.5

    prepared = prepare_model(str(tiny_gpt2_dir), "auto")
    loaded = build_model(prepared, dtype="auto", attn_implementation="auto", device="cpu", seed=0)
    ids, _ = prompt_ids(prepared, "what is kv caching ?", None, 0)
    batch = build_batch([ids], prefix_tokens=None, ragged=False, pad_token_id=0)
    generation = prepare_generation(
        loaded, Cell(str(tiny_gpt2_dir), 4, 1, "auto", "dynamic", "auto"), batch, TokenClock(lambda: None)
    )
    gc.callbacks.append(full_collection)
    try:
        for run, mode in enumerate(["cached", "uncached", "cached"]):
            measure_generation(generation, mode, run, RecordingProbe(events), timed)
    finally:
        gc.callbacks.remove(full_collection)
    one_run = ["gc", "synchronize cuda:0", "empty cache", "probe start", "timer start", "timer stop", "probe stop"]
    assert events == one_run * 3


def test_the_cache_memory_cost_is_allocated_bytes_not_reserved_or_nvml():
    """After both modes' warmups the allocator keeps the larger need in both: NVML and reserved peaks
    agree whatever the cache costs. Only allocated bytes tell the modes apart."""
    result = make_result()
    for run in result.runs:
        run.vram_process_peak_bytes = 900 * 2**20  # the same in both modes, as the allocator's cache makes it
        run.torch_peak_reserved_bytes = 800 * 2**20
        run.torch_peak_allocated_bytes = (600 if run.mode == "cached" else 500) * 2**20
    assert memory_difference(result, result.cells[0].id) == (100 * 2**20, "allocated by torch")


def test_resident_memory_is_not_presented_as_the_cache_cost():
    result = make_result()  # a CPU-like file: peak RSS only
    assert memory_difference(result, result.cells[0].id) is None


# The sampler and a failing generate()


def test_a_failing_generate_stops_the_probe_and_close_neither_stalls_nor_leaks():
    opener = functools.partial(open_fake_nvml, ["cuda:0"], used=[100])
    earlier = set(multiprocessing.active_children())
    probe = MemoryProbe(Devices(("cpu",)), interval_s=0.001, opener=opener)

    def failing(mode):
        raise MemoryError("out of memory inside generate()")

    try:
        with pytest.raises(MemoryError):
            measure_generation(failing, "cached", 0, probe, lambda call: (call(), 1.0))
        probe.start()  # the probe is still usable for the next run
        assert probe.stop().totals.vram_samples >= 1
    finally:
        (sampler,) = set(multiprocessing.active_children()) - earlier
        probe.close()
    # It ended on its own when asked (exit code 0), not stalled until close() had to terminate it (-15).
    assert sampler.exitcode == 0
    assert not [child for child in multiprocessing.active_children() if child.name == "kvbench-memory-sampler"]


# What is timed


def test_compiling_needs_a_warmup():
    with pytest.raises(KvbenchError, match="'compile' needs 'warmup' of at least 1"):
        validate(BenchConfig(compile=True, warmup=0))
    validate(BenchConfig(compile=True, warmup=1))


@pytest.mark.parametrize("compile", [False, True])
def test_generate_compiles_only_when_asked(tiny_llama_dir, monkeypatch, compile):
    """transformers decides to compile a static cache's forward pass in _valid_auto_compile_criteria
    (on a GPU); what kvbench tells it arrives there as generation_config.disable_compile."""
    from transformers.generation.utils import GenerationMixin

    told: list[object] = []
    decide = GenerationMixin._valid_auto_compile_criteria

    def spy(self, model_kwargs, generation_config):
        told.append(generation_config.disable_compile)
        return decide(self, model_kwargs, generation_config)

    monkeypatch.setattr(GenerationMixin, "_valid_auto_compile_criteria", spy)
    result = run_benchmark(tiny_config(tiny_llama_dir, cache_implementation=["static"], runs=1, warmup=1, compile=compile))
    # The dynamic cache's untimed pass its output is compared with, then warmup (the cached one fed that pass's
    # tokens) and measured, both modes.
    assert len(told) == 5
    assert all(bool(disabled) is not compile for disabled in told)
    assert result.cells[0].model["compile"] is compile


# dtype and attention on an older GPU


def test_the_compute_capability_is_read_once_from_torch(a_t4):
    assert compute_capability("cuda:0") == (7, 5)
    assert compute_capability("cpu") is None


def test_auto_takes_float16_for_a_bfloat16_checkpoint_below_capability_8():
    from transformers import LlamaConfig

    config = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype("auto", config, "cuda:0", (7, 5)) == "float16"
    assert resolve_dtype("auto", config, "cuda:0", (8, 0)) == "bfloat16"
    assert resolve_dtype("bfloat16", config, "cuda:0", (7, 5)) == "bfloat16"  # asked for: kept, with a note
    assert "7.5 is emulated" in bfloat16_note(["bfloat16"], (7, 5))
    assert bfloat16_note(["bfloat16"], (9, 0)) is None and bfloat16_note(["float16"], (7, 5)) is None


def test_flash_attention_needs_capability_8():
    cell = Cell("gpt2", 8, 1, "float16", "dynamic", "flash_attention_2")
    assert "compute capability 8.0 or newer (this GPU has 7.5)" in unsupported_reason(cell, "cuda:0", (7, 5))
    assert "compute capability 8.0" in unsupported_reason(cell, "cpu", None)


def test_a_t4_run_notes_emulated_bfloat16_and_skips_flash_attention(tiny_llama_dir, a_t4):
    """The whole run on a (faked) T4: the capability is decided once and reaches the notes, the skip
    reason and the environment record. No cell loads a model, so nothing touches the missing GPU."""
    config = tiny_config(tiny_llama_dir, device="cuda", dtype=["bfloat16"], attn_implementation=["flash_attention_2"])
    result = Benchmark(config).run()
    assert result.environment["gpu_compute_capability"] == "7.5"
    assert any("bfloat16 on a GPU of compute capability 7.5" in note for note in result.notes)
    assert result.cells[0].status == "skipped"
    assert "this GPU has 7.5" in result.cells[0].reason


# Cache implementations that offload to a GPU


OFFLOADED = ["offloaded", "offloaded_static"]


def test_on_a_cpu_offloaded_caches_are_recorded_as_skipped_with_the_reason(tiny_llama_dir, tmp_path):
    config = tiny_config(tiny_llama_dir, cache_implementation=["dynamic", *OFFLOADED], runs=1)
    run_benchmark(config, output=tmp_path / "r.json")
    stored = read_result(tmp_path / "r.json")
    assert [(cell.settings.cache_implementation, cell.status) for cell in stored.cells] == [
        ("dynamic", "measured"),
        ("offloaded", "skipped"),
        ("offloaded_static", "skipped"),
    ]
    for cell in stored.cells[1:]:
        cache = cell.settings.cache_implementation
        assert cell.reason == f"cache_implementation={cache} offloads to a GPU and needs a CUDA device"
        assert not stored.runs_of(cell.id, "cached") and not stored.runs_of(cell.id, "uncached")


class CapturedGenerate:
    """A real model's generate(), its keyword arguments noted and the call not made: on this CPU an
    offloading cache would fail (torch has no CUDA to offload from)."""

    def __init__(self) -> None:
        self.kwargs: list[dict] = []

    def __call__(self, *args, **kwargs):
        self.kwargs.append(kwargs)


@pytest.mark.parametrize("cache", [*OFFLOADED, "quantized"])
def test_on_a_gpu_a_cache_is_planned_for_measuring_and_generate_is_told_its_settings(
    cache, tiny_llama_dir, a_t4, quanto_planned
):
    """quanto_planned: generate() is captured below, so quanto never runs."""
    from kvbench.model.caches import cache_config

    config = tiny_config(tiny_llama_dir, device="cuda", cache_implementation=[cache], quantized_nbits=[2], warmup=1)
    benchmark = Benchmark(config)
    ((cell_result, action),) = benchmark.plan().cells
    assert action == "measure"
    # The same cell's generate() on the real tiny model (held on the CPU, as nothing else can hold it here).
    cell = cell_result.settings
    prepared = prepare_model(str(tiny_llama_dir), "auto")
    loaded = build_model(prepared, dtype="auto", attn_implementation="auto", device="cpu", seed=0)
    batch = benchmark.measurer.batch_of(cell, pad_token_id=0)
    generation = prepare_generation(loaded, cell, batch, TokenClock(lambda: None), False, cache_config(config, cell))
    loaded.model.generate = captured = CapturedGenerate()
    generation("cached")
    generation("uncached")
    cached, uncached = captured.kwargs
    assert cached["cache_implementation"] == cache and cached["use_cache"] is True
    if cache == "quantized":
        assert cached["cache_config"] == {"backend": "quanto", "nbits": 2, "q_group_size": 64, "residual_length": 128}
    else:
        assert "cache_config" not in cached
    assert "cache_implementation" not in uncached and uncached["use_cache"] is False
