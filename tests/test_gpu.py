"""Real CUDA, real NVML and torch's CUDA memory peaks. Run with `pytest -m gpu` on a GPU machine;
skipped elsewhere."""

import pytest

from kvbench.memory import MemoryProbe, nvml_identities, open_nvml
from kvbench.runner import run_benchmark
from tests.conftest import tiny_config

pytestmark = pytest.mark.gpu


def test_nvml_opens_on_the_gpu():
    identities, reason = nvml_identities(["cuda:0"])
    assert reason is None
    module, handles = open_nvml(identities)
    assert module.nvmlDeviceGetMemoryInfo(handles["cuda:0"]).total > 0


def test_cuda_run_measures_vram_and_allocator_peaks(tiny_llama_dir, tmp_path):
    config = tiny_config(tiny_llama_dir, device="cuda", max_new_tokens=[32], runs=3, warmup=1)
    result = run_benchmark(config, output=tmp_path / "gpu.json")
    assert result.environment["gpu_name"]
    assert result.environment["cuda_version"]
    assert "vram" not in result.unmeasured and "torch_cuda_peaks" not in result.unmeasured
    for run in result.runs:
        assert run.torch_peak_allocated_bytes > 0
        assert run.torch_peak_reserved_bytes >= run.torch_peak_allocated_bytes
        assert run.vram_device_peak_bytes >= run.vram_device_baseline_bytes > 0
        assert run.vram_samples >= 1
        assert run.new_tokens == 32
    # float32 greedy decoding of the same model: the cache must not change a single token.
    assert result.cells[0].outputs_match is True, result.cells[0].first_divergence


def test_cached_is_faster_on_the_gpu_at_length(tmp_path):
    """GPT-2's architecture at 256 new tokens: the cache must win clearly on any GPU."""
    config = tiny_config("gpt2", device="cuda", weights="random", max_new_tokens=[256], runs=3, warmup=1)
    result = run_benchmark(config)
    cell = result.cells[0].id
    assert result.summary_of(cell, "uncached").mean_s > 1.5 * result.summary_of(cell, "cached").mean_s


def test_allocator_peak_grows_with_batch(tiny_llama_dir):
    """More sequences hold more KV cache: the per-run allocator peak must say so."""
    config = tiny_config(tiny_llama_dir, device="cuda", max_new_tokens=[64], batch_size=[1, 64], runs=1, modes=["cached"])
    result = run_benchmark(config)
    small, large = (result.runs_of(cell.id, "cached")[0] for cell in result.cells)
    assert large.torch_peak_allocated_bytes > small.torch_peak_allocated_bytes


def test_probe_reads_real_nvml():
    import torch

    probe = MemoryProbe(["cuda:0"], interval_s=0.001)
    probe.start()
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    reading = probe.stop()
    probe.close()
    del block
    assert reading.torch_peak_allocated_bytes >= 256 * 2**20
    assert reading.vram_device_peak_bytes > 0


def test_device_map_spreads_over_every_gpu_and_reports_each(tiny_llama_dir):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("a device map over GPUs needs at least two (this machine has one)")
    config = tiny_config(tiny_llama_dir, device="cuda", device_map="balanced", runs=1)
    result = run_benchmark(config)
    devices = result.cells[0].model["devices"]
    assert len(devices) >= 2 and all(device.startswith("cuda") for device in devices)
    assert set(result.runs[0].per_device) == set(devices)
