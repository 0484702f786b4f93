"""The GPU path, round two: decisions a run makes about the GPU, tested on a CPU with torch.cuda's and
NVML's answers faked (tests/fakes.py) and real tiny models."""

from dataclasses import asdict

import pytest

from kvbench.model.costs import MeasuredPeaks
from kvbench.runner.benchmark import Benchmark, run_benchmark
from tests.conftest import tiny_config
from tests.fakes import cuda_properties

PEAKS = MeasuredPeaks(
    device="cpu",
    copy_bandwidth_bytes_per_s=1e10,
    copy_buffer_bytes=2**26,
    matmul_flops_per_s=1e11,
    matmul_dtype="float32",
    matmul_size=1024,
    seconds_spent_s=2.0,
)


@pytest.fixture
def an_h200(monkeypatch, fake_nvml):
    """torch answering like a machine with one GPU of compute capability 9.0, NVML like its driver."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    properties = cuda_properties()
    properties.name, properties.major, properties.minor = "Fake H200", 9, 0
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    fake_nvml()


def test_a_dry_run_on_a_gpu_that_runs_flash_attention_plans_to_measure_it(tiny_gpt2_dir, an_h200, tmp_path, monkeypatch):
    config = tiny_config(tiny_gpt2_dir, device="cuda", attn_implementation=["flash_attention_2", "sdpa"])
    [(_, without_package), _] = Benchmark(config).plan().cells
    assert without_package == "skip: attn_implementation=flash_attention_2 needs the flash-attn package"
    # The package installed (an empty one: the plan only looks for it).
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    steps = [what for _, what in Benchmark(config).plan().cells]
    assert steps == ["measure", "measure"]


def test_a_dry_run_on_a_cpu_still_skips_flash_attention(tiny_gpt2_dir):
    config = tiny_config(tiny_gpt2_dir, attn_implementation=["flash_attention_2"])
    [(_, what)] = Benchmark(config).plan().cells
    assert what.startswith("skip: attn_implementation=flash_attention_2 needs a GPU of compute capability 8.0")


# Device peaks and the GPU's description belong where the cells are measured


def no_timing_here(*args, **kwargs):
    pytest.fail("device peaks were timed in the process that writes the results file")


def test_cells_in_fresh_processes_have_their_device_peaks_timed_in_one_too(tiny_gpt2_dir, monkeypatch):
    """Timed in this process, they would leave a CUDA context and cached memory on the measured GPU for the
    whole sweep."""
    monkeypatch.setattr("kvbench.hardware.peaks.measure_device_peaks", no_timing_here)
    result = run_benchmark(tiny_config(tiny_gpt2_dir, isolation="process", runs=1, device_peaks=True))
    peaks = result.environment["device_peaks"]
    assert peaks["device"] == "cpu" and peaks["matmul_flops_per_s"] > 0 and peaks["copy_bandwidth_bytes_per_s"] > 0
    assert "device_peaks" not in result.unmeasured
    assert [cell.status for cell in result.cells] == ["measured"]


def test_cells_in_this_process_still_have_their_peaks_timed_here(tiny_gpt2_dir, monkeypatch):
    timed = []
    monkeypatch.setattr("kvbench.hardware.peaks.measure_device_peaks", lambda device, **_: timed.append(device) or PEAKS)
    result = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, device_peaks=True))
    kept = result.environment["device_peaks"]
    assert timed == ["cpu"] and kept == {**asdict(PEAKS), "measured_at": kept["measured_at"]} and kept["measured_at"]


def ray_config(model_dir, device):
    return tiny_config(model_dir, launcher="ray", device=device, device_peaks=True, runs=1)


def test_a_ray_head_without_cuda_plans_a_gpu_sweep(tiny_gpt2_dir):
    benchmark = Benchmark(ray_config(tiny_gpt2_dir, "cuda"))
    assert [what for _, what in benchmark.plan().cells] == ["measure"]
    environment = benchmark.result.environment
    assert environment["device"] == "cuda" and "gpu_name" not in environment


def test_a_ray_head_with_a_gpu_does_not_describe_its_own_as_the_measured_one(tiny_gpt2_dir, an_h200):
    benchmark = Benchmark(ray_config(tiny_gpt2_dir, "cuda"))
    assert "gpu_name" not in benchmark.result.environment and benchmark.capability is None


def test_a_ray_sweep_times_no_device_peaks_on_the_head_and_says_why(tiny_gpt2_dir, monkeypatch):
    """--device auto is each task's to resolve: the head timed peaks on "auto", which is no device."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'kvbench[ray]'")
    # Ray starts its workers at nice 15, which beside a busy neighbour starves them for minutes.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    result = run_benchmark(ray_config(tiny_gpt2_dir, "auto"))
    assert [cell.status for cell in result.cells] == ["measured"]
    assert "device_peaks" not in result.environment
    assert result.unmeasured["device_peaks"].startswith("not measured: the cells ran on other machines")
