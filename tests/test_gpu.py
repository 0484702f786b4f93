"""Real CUDA, real NVML and torch's CUDA memory peaks. Run with `pytest -m gpu` on a GPU machine;
skipped elsewhere. Each test can fail on a wrong GPU path: none asserts what holds by construction
(a peak at least its baseline, a sample count of at least one)."""

import pytest

from kvbench.core.devices import Devices
from kvbench.hardware.memory import MemoryProbe, free_memory
from kvbench.hardware.nvml import gpu_uuids, open_by_uuid, torch_uuid
from kvbench.runner.benchmark import run_benchmark
from tests.conftest import tiny_config

pytestmark = pytest.mark.gpu


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_nvml_handle_is_torchs_gpu():
    """Every GPU torch sees is found in NVML as itself: the UUID NVML gives its handle is torch's."""
    import torch

    for index in range(torch.cuda.device_count()):
        uuid = torch_uuid(torch.cuda.get_device_properties(index))
        if uuid is None:
            pytest.skip("this torch reports no GPU UUID to compare NVML's with")
        device = f"cuda:{index}"
        uuids, reason = gpu_uuids([device])
        assert reason is None
        pynvml, handles = open_by_uuid(uuids)
        found = _text(pynvml.nvmlDeviceGetUUID(handles[device]))
        assert found in (uuid, f"GPU-{uuid}", f"MIG-{uuid}")


def test_loading_a_model_shows_in_vram_and_this_process_is_found():
    """A probe started before GPT-2 small (random weights, float32) is loaded must see at least the
    weights' bytes come into use on the device, in torch's allocator, and in this process's own VRAM."""
    import torch

    from kvbench.measure import loading, models

    devices = Devices(("cuda:0",))
    # Whatever earlier tests left in torch's cache would hold the weights without NVML seeing a change.
    free_memory(devices)
    probe = MemoryProbe(devices, interval_s=0.005)
    try:
        assert "vram" not in probe.unavailable, probe.unavailable
        probe.start()
        loaded = loading.build_model(
            models.prepare_model("gpt2", "random"), dtype="float32", attn_implementation="auto", device="cuda:0", seed=0
        )
        torch.cuda.synchronize()
        reading = probe.stop().totals
    finally:
        probe.close()
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert weight_bytes > 400 * 2**20  # GPT-2 small: 124M parameters
    assert reading.torch_peak_allocated_bytes >= weight_bytes
    assert reading.vram_device_peak_bytes - reading.vram_device_baseline_bytes >= weight_bytes
    assert reading.vram_process_peak_bytes is not None, probe.unavailable.get("vram_process")
    assert reading.vram_process_peak_bytes >= weight_bytes


def test_cuda_run_records_the_gpu_and_its_memory(tiny_llama_dir):
    import torch

    config = tiny_config(tiny_llama_dir, device="cuda", max_new_tokens=[32], runs=3, warmup=1)
    result = run_benchmark(config)
    environment = result.environment
    uuid = torch_uuid(torch.cuda.get_device_properties(0))
    if uuid is not None:
        assert environment["gpu_uuid"] in (uuid, f"GPU-{uuid}", f"MIG-{uuid}")
    major, minor = torch.cuda.get_device_capability(0)
    assert environment["gpu_compute_capability"] == f"{major}.{minor}"
    assert environment["cuda_version"] and environment["gpu_driver"]
    assert "vram" not in result.unmeasured and "torch_cuda_peaks" not in result.unmeasured
    for run in result.runs:
        assert run.torch_peak_allocated_bytes > 0
        assert run.vram_process_peak_bytes is not None, result.unmeasured.get("vram_process")
        assert run.new_tokens == 32
    # float32 greedy decoding of the same model: the cache must not change a single token.
    assert result.cells[0].outputs_match is True, result.cells[0].first_divergence


def test_per_token_times_are_recorded_for_every_step_on_a_gpu():
    """Per-token times through CUDA synchronisation: one per new token, in order, for both modes. How they
    grow with position is physics measured by a benchmark, not asserted by a test: on a busy host the
    cached steps are bound by kernel launches and their late/early ratio moves with the host's load."""
    config = tiny_config("gpt2", device="cuda", weights="random", dtype=["float32"], max_new_tokens=[64], runs=1)
    result = run_benchmark(config)
    cell = result.cells[0].id
    for mode in ("cached", "uncached"):
        (run,) = result.runs_of(cell, mode)
        assert len(run.token_times_s) == 64 and run.token_times_s == sorted(run.token_times_s)
        summary = result.summary_of(cell, mode)
        assert summary.early_token_ms > 0 and summary.late_token_ms > 0


def test_allocator_peak_grows_with_batch(tiny_llama_dir):
    """More sequences hold more KV cache: the per-run allocator peak must say so, whatever ran before."""
    config = tiny_config(tiny_llama_dir, device="cuda", max_new_tokens=[64], batch_size=[64, 1], runs=1, modes=["cached"])
    result = run_benchmark(config)
    large, small = (result.runs_of(cell.id, "cached")[0] for cell in result.cells)
    assert large.torch_peak_allocated_bytes > small.torch_peak_allocated_bytes
    # Memory is freed before each run: the batch-64 cell's cached blocks do not colour the batch-1 cell.
    assert small.torch_peak_reserved_bytes < large.torch_peak_reserved_bytes


def test_probe_reads_real_nvml():
    import torch

    devices = Devices(("cuda:0",))
    free_memory(devices)
    probe = MemoryProbe(devices, interval_s=0.001)
    try:
        probe.start()
        block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda:0")
        torch.cuda.synchronize()
        reading = probe.stop().totals
    finally:
        probe.close()
    del block
    assert reading.torch_peak_allocated_bytes >= 256 * 2**20
    assert reading.vram_device_peak_bytes - reading.vram_device_baseline_bytes >= 256 * 2**20


def test_device_map_spans_two_gpus_and_reports_each():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("a device map over GPUs needs at least two; this machine has one")
    # TinyLlama's 22 layers (2.2 GB in float16): "balanced" has to put layers on every GPU.
    config = tiny_config("tinyllama-1.1b", device="cuda", weights="random", dtype=["float16"], device_map="balanced", runs=1)
    result = run_benchmark(config)
    cell = result.cells[0]
    assert cell.status == "measured", cell.reason
    devices = cell.model["devices"]
    assert len(set(devices)) >= 2, cell.model["device_map"]
    assert all(device.startswith("cuda") for device in devices)
    for run in result.runs:
        assert set(run.per_device) == set(devices)
        assert all(figures["torch_peak_allocated_bytes"] > 0 for figures in run.per_device.values())
