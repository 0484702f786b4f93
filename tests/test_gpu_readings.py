"""What the GPU did while the runs were timed: its SM clock (not the idle one read before them), the
reasons it was held down, and how coarsely NVML's energy counter moves, on the fake NVML."""

from __future__ import annotations

import functools
import types

import pytest

from kvbench.core.devices import Devices
from kvbench.hardware.energy import counter_resolution, energy_uncertainty
from kvbench.hardware.gpu_clocks import reason_names
from kvbench.hardware.memory import MemoryProbe, NvmlSampler
from kvbench.render.cells import energy_words
from tests.fakes import ONE_GPU, FakeNvml, open_fake_nvml

# An H200 at rest reads 345 MHz; under load it runs at up to 1980, held lower here by its power cap.
LOADED_GPU = {
    **ONE_GPU,
    "sm_clock_mhz": 345,
    "sm_clocks_mhz": [1980, 1755, 1980, 1980],
    "max_sm_clock_mhz": 1980,
    "application_sm_clock_mhz": 1755,
    "clock_event_reasons": 0x4,
}


def test_the_sm_clock_is_sampled_while_the_run_is_timed():
    nvml = FakeNvml(gpus=[LOADED_GPU])
    sampler = NvmlSampler(nvml, {"cuda:0": "gpu0"}, pid=-1)
    sampler.begin()
    for _ in range(4):
        sampler.sample()
    clocks = sampler.reading().clocks
    assert clocks == {
        "sm_min_mhz": 1755,
        "sm_median_mhz": 1980,
        "sm_max_mhz": 1980,
        "sm_application_mhz": 1755,
        "reasons": ["sw_power_cap"],
        "samples": 4,
    }


def test_a_run_records_the_clocks_its_sampling_process_saw():
    """Through the probe's own sampling process (spawned, as on a GPU): the run's clocks reach its reading."""
    opener = functools.partial(open_fake_nvml, ["cuda:0"], gpus=[LOADED_GPU])
    probe = MemoryProbe(Devices(("cpu",)), interval_s=0.001, opener=opener)
    try:
        probe.start()
        reading = probe.stop()
    finally:
        probe.close()
    assert reading.gpu_clocks["sm_min_mhz"] >= 1755 and reading.gpu_clocks["sm_max_mhz"] == 1980
    assert reading.gpu_clocks["reasons"] == ["sw_power_cap"]


def test_clock_reasons_are_named():
    assert reason_names(0x1 | 0x40) == ["gpu_idle", "hw_thermal_slowdown"]
    assert reason_names(0) == [] and reason_names(0x1000) == ["0x1000"]


def test_a_gpu_without_clock_readings_records_none():
    nvml = FakeNvml()  # no clocks, no reasons: NVML answers Not Supported
    sampler = NvmlSampler(nvml, {"cuda:0": "gpu0"}, pid=-1)
    sampler.begin()
    sampler.sample()
    assert sampler.reading().clocks is None


def test_the_energy_counters_resolution_comes_from_its_distinct_readings():
    # Sampled every 10 ms, a counter that moves 12 J every 100 ms (as NVML's did on an H200).
    readings = [(i * 0.01, 1000.0 + 12.0 * (i // 10)) for i in range(45)]
    resolution = counter_resolution(readings)
    assert resolution.step_j == 12.0 and resolution.period_s == pytest.approx(0.1)
    assert counter_resolution(readings[:15]) is None  # one change: nothing to go by
    assert counter_resolution(None) is None


def test_the_sampler_reads_the_energy_counter_at_each_sample():
    nvml = FakeNvml(energy_mj=[1_000_000, 1_000_000, 1_012_000, 1_012_000, 1_024_000])
    sampler = NvmlSampler(nvml, {"cuda:0": "gpu0"}, pid=-1)
    sampler.begin()
    for _ in range(4):
        sampler.sample()
    assert [joules for _, joules in sampler.reading().energy_j] == [1000, 1000, 1012, 1012, 1024]


def _runs(joules, step=12.0, period=0.1):
    return [types.SimpleNamespace(energy_j=joules, energy_counter_step_j=step, energy_counter_period_s=period)] * 3


def test_energy_finer_than_the_counter_is_flagged_or_withheld():
    """A 0.3 s run at ~120 W sees three or four 12 J updates: its energy is known to ±25-33%."""
    assert energy_uncertainty(_runs(36.0)) == (12.0, pytest.approx(1 / 3), 0.1)
    flagged = energy_words(0.28, _runs(36.0))
    assert flagged == "0.28 J/token ±33% (prefill included; NVML's energy counter moves in 12 J steps, every 100 ms)"
    withheld = energy_words(0.05, _runs(6.0))
    assert withheld.startswith("energy per token not resolved (NVML's energy counter moves in 12 J steps")
    # A run of thousands of joules, as GPT-2's 1000 tokens on the H200: the step is noise.
    assert energy_words(0.89, _runs(5900.0)) == "0.89 J/token (prefill included)"
    # A file from before, or RAPL: nothing known of the step.
    assert energy_words(0.89, _runs(36.0, step=None)) == "0.89 J/token (prefill included)"


def test_a_run_record_keeps_the_clocks_and_the_counters_resolution():
    import torch

    from kvbench.hardware.memory import MemoryReading
    from kvbench.measure.generation import measure_generation
    from kvbench.model.cells import Cell
    from kvbench.model.memory_figures import MemoryFigures

    clocks = {"sm_min_mhz": 1755, "sm_median_mhz": 1980, "sm_max_mhz": 1980, "samples": 30}
    energy = [(i * 0.01, 12.0 * (i // 10)) for i in range(31)]
    probe = types.SimpleNamespace(
        devices=Devices(("cpu",)),
        start=lambda: None,
        stop=lambda: MemoryReading(MemoryFigures(), gpu_clocks=clocks, energy_samples_j=energy),
    )
    cell = Cell("gpt2", 4, 1, "float16", "dynamic", "auto")
    output = types.SimpleNamespace(sequences=torch.zeros(1, 6, dtype=torch.long))

    class Generate:  # a generation of 4 tokens after a 2-token prompt, as kvbench's Generation answers
        clock = types.SimpleNamespace(times_s=[0.1, 0.2, 0.25, 0.3], allocated_by_position=[])
        prompt_tokens, last_copy_s = 2, None

        def __init__(self):
            self.cell = cell

        def __call__(self, mode):
            return output

        def prefill_tokens(self, mode):
            return None

    record, _ = measure_generation(Generate(), "cached", 0, probe, lambda work: (work(), 0.3))
    assert record.gpu_clocks == clocks
    assert (record.energy_counter_step_j, record.energy_counter_period_s) == (12.0, pytest.approx(0.1))
