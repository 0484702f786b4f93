import sys

import pytest

from kvbench.memory import MemoryProbe, NvmlSampler, PeakRss, open_nvml


def test_nvml_missing_library_is_reported_not_raised(fake_nvml):
    fake_nvml(available=False)
    module, handles, reason = open_nvml(["cuda:0"])
    assert module is None and handles == {}
    assert reason == "NVML is unavailable (NVML Shared Library Not Found)"


def test_real_pynvml_on_this_machine_reports_why(monkeypatch):
    """On a machine without an NVIDIA driver the real library must give a reason, not an exception."""
    pytest.importorskip("pynvml")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr("kvbench.memory._nvml_handle", lambda nvml, device: None)
    _, _, reason = open_nvml(["cuda:0"])
    assert reason is not None and "NVML" in reason


def test_cpu_probe_says_what_it_cannot_measure():
    probe = MemoryProbe(["cpu"], interval_s=0.01)
    assert "not a CUDA GPU" in probe.unavailable["vram"]
    assert "not a CUDA GPU" in probe.unavailable["torch_cuda_peaks"]
    probe.start()
    reading = probe.stop()
    assert reading.peak_rss_bytes > 0
    assert reading.vram_device_peak_bytes is None


def test_sampler_can_be_turned_off():
    probe = MemoryProbe(["cpu"], interval_s=0.01, sample_vram=False)
    assert "turned off" in probe.unavailable["vram"]


def test_sampler_records_baseline_peak_and_process_memory(fake_nvml):
    import time

    fake = fake_nvml(used=[100, 300, 700, 200], process_bytes=50)
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0"}, interval_s=0.001)
    sampler.start()
    deadline = time.monotonic() + 5
    while fake.calls < 4 and time.monotonic() < deadline:
        time.sleep(0.002)
    sampler.stop()
    assert sampler.baseline_bytes == 100
    assert sampler.peak_device_bytes == 700
    assert sampler.peak_process_bytes == 50
    assert sampler.samples >= 3
    assert sampler.process_unavailable is None


def test_sampler_explains_a_process_it_cannot_see(fake_nvml):
    fake = fake_nvml(used=[100])
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0"}, interval_s=0.001, pid=-1)
    sampler.start()
    sampler.stop()
    assert sampler.peak_process_bytes is None
    assert "not in NVML's process list" in sampler.process_unavailable


def test_peak_rss_resets_between_runs():
    rss = PeakRss()
    if rss.unavailable:
        pytest.skip(rss.unavailable)
    rss.reset()
    block = bytearray(200 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
    high = rss.peak_bytes()
    del block
    rss.reset()
    low = rss.peak_bytes()
    assert high - low > 150 * 2**20


def test_sampler_covers_every_gpu_a_model_spans(fake_nvml):
    fake = fake_nvml(used=[100, 200, 500, 300], process_bytes=40)
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0", "cuda:1": "gpu1"}, interval_s=60)
    sampler.start()  # baselines: 100 (gpu0), 200 (gpu1)
    sampler.stop()  # the final sample: 500 (gpu0), 300 (gpu1)
    assert sampler.baseline == {"cuda:0": 100, "cuda:1": 200}
    assert sampler.peak == {"cuda:0": 500, "cuda:1": 300}
    assert (sampler.baseline_bytes, sampler.peak_device_bytes) == (300, 800)
    assert sampler.peak_process_bytes == 80  # this process on both GPUs
