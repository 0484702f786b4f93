import functools
import os
import time

import pytest

from kvbench.core.devices import Devices
from kvbench.hardware.memory import (
    PROCESS_READ_EVERY,
    MemoryProbe,
    NvmlSampler,
    PeakRss,
    SamplerUnavailable,
    SamplingProcess,
)
from kvbench.hardware.nvml import gpu_uuids
from tests.fakes import FakeNvml, open_fake_nvml


def test_nvml_missing_library_is_reported_not_raised(fake_nvml):
    fake_nvml(available=False)
    uuids, reason = gpu_uuids(["cuda:0"])
    assert uuids == {}
    assert reason == "NVML is unavailable (NVML Shared Library Not Found)"


def test_real_pynvml_on_this_machine_reports_why():
    """On a machine without an NVIDIA driver the real library must give a reason, not an exception."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    uuids, reason = gpu_uuids(["cuda:0"])
    assert uuids == {} and reason.startswith("NVML is unavailable")


def test_cpu_probe_says_what_it_cannot_measure():
    probe = MemoryProbe(Devices(("cpu",)), interval_s=0.01)
    assert "not a CUDA GPU" in probe.unavailable["vram"]
    assert "not a CUDA GPU" in probe.unavailable["torch_cuda_peaks"]
    probe.start()
    reading = probe.stop().totals
    assert reading.peak_rss_bytes > 0
    assert reading.vram_device_peak_bytes is None


def test_sampler_can_be_turned_off():
    probe = MemoryProbe(Devices(("cpu",)), interval_s=0.01, sample_vram=False)
    assert "turned off" in probe.unavailable["vram"]


def test_sampler_keeps_baseline_and_peaks():
    fake = FakeNvml(used=[100, 300, 700, 200], process_bytes=50)
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0"}, pid=os.getpid())
    sampler.begin()
    for _ in range(2):
        sampler.sample()
    # While generate() runs only device memory is read: the process list is read once, at the end.
    assert fake.process_list_calls == 0 and sampler.reading().peak_process_bytes is None
    sampler.sample(final=True)
    reading = sampler.reading()
    assert reading.baseline == {"cuda:0": 100}
    assert reading.peak == {"cuda:0": 700}
    assert reading.peak_process_bytes == 50 and fake.process_list_calls == 1
    assert reading.samples == 3 and reading.process_unavailable is None


def test_the_process_peak_is_the_largest_reading_not_the_last():
    # The allocator gave 780 bytes back before generate() returned (a retried allocation, or no caching).
    fake = FakeNvml(used=[100], process_bytes=[300, 900, 120])
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0"}, pid=os.getpid())
    sampler.begin()
    for _ in range(2 * PROCESS_READ_EVERY):
        sampler.sample()
    sampler.sample(final=True)
    assert fake.process_list_calls == 3
    assert sampler.reading().peak_process_bytes == 900


def test_sampler_explains_a_process_it_cannot_see():
    sampler = NvmlSampler(FakeNvml(used=[100]), {"cuda:0": "gpu0"}, pid=-1)
    sampler.begin()
    sampler.sample(final=True)
    assert sampler.reading().peak_process_bytes is None
    assert "not in NVML's process list" in sampler.reading().process_unavailable


def test_sampler_covers_every_gpu_a_model_spans():
    fake = FakeNvml(used=[100, 200, 500, 300], process_bytes=40)
    sampler = NvmlSampler(fake, {"cuda:0": "gpu0", "cuda:1": "gpu1"}, pid=os.getpid())
    sampler.begin()
    sampler.sample(final=True)  # baselines were 100 and 200; now 500 and 300
    reading = sampler.reading()
    assert reading.peak == {"cuda:0": 500, "cuda:1": 300}
    assert (sum(reading.baseline.values()), reading.peak_device_bytes) == (300, 800)
    assert reading.peak_process_bytes == 80  # this process on both GPUs


def wait_for_readings(reads_file, count: int) -> None:
    """Until the sampling process has read memory `count` times: its pace is the machine's, not the test's."""
    deadline = time.monotonic() + 300  # a safety net for a stuck sampler, never a speed check
    while not (reads_file.exists() and reads_file.stat().st_size >= count):
        assert time.monotonic() < deadline, "the sampling process never read memory"
        time.sleep(0.01)


def test_sampling_process_samples_while_running(tmp_path):
    # The fake GPU runs this test's process, which the sampling process must find in the list.
    reads = tmp_path / "reads"
    opener = functools.partial(
        open_fake_nvml,
        ["cuda:0"],
        used=[100, 300, 700, 200],
        process_bytes=50,
        pid=os.getpid(),
        reads_file=str(reads),
    )
    sampler = SamplingProcess(opener, interval_s=0.001)
    try:
        sampler.start()
        wait_for_readings(reads, 4)  # the baseline, and 300, 700, 200 while running
        reading = sampler.stop()
    finally:
        sampler.close()
    assert reading.baseline == {"cuda:0": 100}
    assert reading.peak == {"cuda:0": 700}
    assert reading.samples >= 4
    assert reading.peak_process_bytes == 50


def test_sampling_process_that_cannot_open_nvml_says_why():
    opener = functools.partial(open_fake_nvml, ["cuda:0"], available=False)
    with pytest.raises(SamplerUnavailable, match="NVML Shared Library Not Found"):
        SamplingProcess(opener, interval_s=0.01)


def test_peak_rss_resets_between_runs():
    rss = PeakRss()
    if rss.unavailable:
        pytest.skip(rss.unavailable)
    rss.reset()
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    high = rss.peak_bytes()
    del block
    rss.reset()
    low = rss.peak_bytes()
    assert high - low > 150 * 2**20


def test_sampling_process_survives_an_nvml_library_mismatch():
    """nvidia-ml-py raises NVMLLibraryMismatchError, a plain Exception, from the process list on drivers
    without its v3 call: the sampler records why and goes on measuring the device."""
    opener = functools.partial(open_fake_nvml, ["cuda:0"], used=[100, 700], processes_mismatch=True)
    sampler = SamplingProcess(opener, interval_s=0.001)
    try:
        for _ in range(2):  # the process is still there for the next run
            assert sampler.start()
            reading = sampler.stop()  # its final reading alone sees the 700
            assert reading is not None and reading.samples >= 1
            assert reading.peak == {"cuda:0": 700}
            assert reading.peak_process_bytes is None
            assert "NVMLLibraryMismatchError" in reading.process_unavailable
    finally:
        sampler.close()


def test_sampling_process_survives_device_memory_failing():
    # The baseline reads; every reading after it fails, the final one included, however few were taken.
    opener = functools.partial(open_fake_nvml, ["cuda:0"], used=[100], memory_fails_after=1)
    sampler = SamplingProcess(opener, interval_s=0.001)
    try:
        sampler.start()
        reading = sampler.stop()
        assert reading is not None
        assert "cannot read device memory" in reading.device_unavailable
        assert sampler.start() and sampler.stop() is not None
    finally:
        sampler.close()


def probed_run(running_s: float = 0.0, **fake):
    """One run measured by a MemoryProbe whose sampling process reads a fake NVML; the probe, closed, and
    its reading."""
    opener = functools.partial(open_fake_nvml, ["cuda:0"], **fake)
    probe = MemoryProbe(Devices(("cpu",)), interval_s=0.001, opener=opener)
    try:
        probe.start()
        time.sleep(running_s)
        return probe, probe.stop()
    finally:
        probe.close()


def test_a_failed_device_memory_reading_leaves_no_timeline():
    """After NVML stops answering, the sampler's readings are zeros: not a VRAM timeline to store."""
    probe, reading = probed_run(used=[100], memory_fails_after=1)
    assert "cannot read device memory" in probe.unavailable["vram_device"]
    assert reading.timeline is None and reading.timeline_source is None


def test_probe_reports_an_nvml_failure_as_unmeasured_not_as_an_error():
    probe, reading = probed_run(processes_mismatch=True)
    assert reading.totals.vram_samples >= 1
    assert "NVMLLibraryMismatchError" in probe.unavailable["vram_process"]


def test_probe_outlives_a_sampling_process_that_died():
    probe, reading = probed_run(crash=True)
    assert reading.totals.vram_samples is None
    assert "ended unexpectedly" in probe.unavailable["vram"]


def test_free_memory_collects_every_generation(monkeypatch):
    import gc

    from kvbench.hardware.memory import free_memory

    generations = []

    def note(phase, info):
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(note)
    try:
        free_memory(Devices(("cpu",)))
    finally:
        gc.callbacks.remove(note)
    assert 2 in generations


def test_the_heap_before_a_cell_is_out_of_the_collectors_reach_while_it_is_measured(tiny_gpt2_dir):
    """The collection before each timed run must not walk the model and libraries (it left the caches cold
    for the generate() that followed): a real run's objects are frozen while its cell is measured, and
    within reach again when the cell ends."""
    import gc

    from kvbench.model.events import Observer
    from kvbench.runner.benchmark import run_benchmark
    from tests.conftest import tiny_config

    class FrozenAtEachRun(Observer):
        def __init__(self):
            self.counts = []

        def generation_started(self, label, generation):
            self.counts.append(gc.get_freeze_count())

    watcher = FrozenAtEachRun()
    run_benchmark(tiny_config(tiny_gpt2_dir, runs=2), observer=watcher)
    assert len(watcher.counts) >= 4 and min(watcher.counts) > 10_000
    assert gc.get_freeze_count() == 0


def test_a_heap_the_caller_froze_stays_frozen():
    import gc

    from kvbench.hardware.memory import frozen_heap

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
