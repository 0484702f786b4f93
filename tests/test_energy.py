import os
from pathlib import Path

import pytest

from kvbench.core.metrics import joules_per_token
from kvbench.hardware.energy import RAPL_ROOT, NvmlEnergy, RaplEnergy, energy_reader
from tests.fakes import FakeNvml


def test_nvml_energy_is_the_counter_difference_in_joules():
    # Scripted millijoule readings: one when the reader checks the counter, then start and stop.
    reader = NvmlEnergy(FakeNvml(energy_mj=[1_000, 5_000, 17_500]), {"cuda:0": "gpu0"})
    assert reader.unavailable is None
    reader.start()
    reading = reader.stop()
    assert reading.source == "nvml"
    assert reading.joules == pytest.approx(12.5)
    assert reading.per_domain_joules == {"cuda:0": pytest.approx(12.5)}
    assert joules_per_token(reading.joules, new_tokens=25, batch_size=2) == pytest.approx(0.25)


def test_nvml_sums_every_gpu_a_model_spans():
    # Readings alternate between the two GPUs: check, then start (0, 0), then stop (3000, 7000) mJ.
    fake = FakeNvml(energy_mj=[0, 0, 0, 0, 3_000, 7_000])
    reader = NvmlEnergy(fake, {"cuda:0": "gpu0", "cuda:1": "gpu1"})
    reader.start()
    assert reader.stop().joules == pytest.approx(10.0)


def test_gpu_without_an_energy_counter_says_why():
    reader = NvmlEnergy(FakeNvml(energy_mj=None), {"cuda:0": "gpu0"})
    assert "Volta" in reader.unavailable and "Not Supported" in reader.unavailable
    reader.start()
    reading = reader.stop()
    assert reading.joules is None and reading.unavailable == reader.unavailable


def test_nvml_counter_going_backwards_is_not_reported_as_energy():
    reader = NvmlEnergy(FakeNvml(energy_mj=[5_000, 5_000, 1_000]), {"cuda:0": "gpu0"})
    reader.start()
    reading = reader.stop()
    assert reading.joules is None and "went backwards" in reading.unavailable


def test_runs_shorter_than_the_counter_tick_average_to_the_truth_and_all_zero_is_unmeasured():
    """NVML's counter ticks every few ms: of runs shorter than a tick, some read one tick and some none.
    Keeping the zeros keeps the mean true; a mode whose every run read 0 J reports no energy at all."""
    from kvbench.model.records import serving_metrics
    from tests.conftest import make_result

    reader = NvmlEnergy(FakeNvml(energy_mj=[1_000, 5_000, 5_000]), {"cuda:0": "gpu0"})
    reader.start()
    assert reader.stop().joules == 0.0 and reader.run_problem is None
    result = make_result({"cached": [1.0, 1.0, 1.0, 1.0]}, max_new_tokens=10)
    for run, joules in zip(result.runs, [2.0, 0.0, 2.0, 0.0]):  # a 2 J tick, caught by half the runs
        run.energy_j = joules
    assert serving_metrics(result.runs)["energy_j_per_token"] == pytest.approx(0.1)
    for run in result.runs:
        run.energy_j = 0.0
    assert serving_metrics(result.runs)["energy_j_per_token"] is None


def test_a_counter_that_fails_mid_run_says_why_for_that_run():
    fake = FakeNvml(energy_mj=[1_000, 5_000])
    reader = NvmlEnergy(fake, {"cuda:0": "gpu0"})
    reader.start()
    fake.energy_mj = None  # the counter stops answering
    reading = reader.stop()
    assert reading.joules is None and "could not be read" in reader.run_problem


def test_a_mig_instance_has_no_energy_counter_of_its_own(fake_nvml, monkeypatch):
    monkeypatch.setattr("kvbench.hardware.nvml.gpu_uuids", lambda devices: ({"cuda:0": "MIG-5c3a"}, None))
    monkeypatch.setattr("kvbench.hardware.nvml.open_by_uuid", lambda uuids: pytest.fail("must not open the parent GPU"))
    reader = energy_reader(["cuda:0"])
    assert reader.source == "nvml" and "per MIG instance" in reader.unavailable


def test_missing_nvml_library_is_the_reason_for_a_gpu(fake_nvml):
    fake_nvml(available=False)
    reader = energy_reader(["cuda:0"])
    assert reader.source == "nvml"
    assert reader.unavailable == "NVML is unavailable (NVML Shared Library Not Found)"
    reader.start()
    assert reader.stop().joules is None


def test_this_machines_cpu_energy_is_read_or_explained():
    reader = energy_reader(["cpu"])
    assert reader.source == "rapl"
    if not os.path.isdir(RAPL_ROOT):
        assert reader.unavailable == f"RAPL is not exposed by this kernel or machine ({RAPL_ROOT} does not exist)"
    reader.start()
    reading = reader.stop()
    assert (reading.joules is None) == (reading.unavailable is not None)


def _zone(root: Path, entry: str, name: str, energy_uj: int, range_uj: int = 262_143_328_850) -> Path:
    zone = root / entry
    zone.mkdir()
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return zone


def test_rapl_reads_package_zones_only(tmp_path):
    package0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    package1 = _zone(tmp_path, "intel-rapl:1", "package-1", 50_000_000)
    core = _zone(tmp_path, "intel-rapl:0:0", "core", 0)  # inside package 0 already
    psys = _zone(tmp_path, "intel-rapl:2", "psys", 0)  # the whole platform, package included
    reader = RaplEnergy(str(tmp_path))
    assert reader.unavailable is None
    reader.start()
    (package0 / "energy_uj").write_text("3500000\n")
    (package1 / "energy_uj").write_text("51000000\n")
    (core / "energy_uj").write_text("900000000\n")
    (psys / "energy_uj").write_text("900000000\n")
    reading = reader.stop()
    assert reading.source == "rapl"
    assert reading.per_domain_joules == {
        "intel-rapl:0 (package-0)": pytest.approx(2.5),
        "intel-rapl:1 (package-1)": pytest.approx(1.0),
    }
    assert reading.joules == pytest.approx(3.5)


def test_rapl_counter_wraps_at_its_range(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000, range_uj=1_000_000_000)
    reader = RaplEnergy(str(tmp_path))
    reader.start()
    (zone / "energy_uj").write_text("2000000\n")
    # 1,000,000 uJ to the wrap and 2,000,000 after it.
    assert reader.stop().joules == pytest.approx(3.0)


def test_rapl_absent_or_empty_says_why(tmp_path):
    assert "does not exist" in RaplEnergy(str(tmp_path / "missing")).unavailable
    assert "no intel-rapl package zone" in RaplEnergy(str(tmp_path)).unavailable


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_rapl_readable_only_by_root_says_so(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", 1)
    (zone / "energy_uj").chmod(0o000)
    reader = RaplEnergy(str(tmp_path))
    assert "readable only by root" in reader.unavailable
    reader.start()
    assert reader.stop().joules is None


def test_joules_per_token_needs_energy_and_tokens():
    assert joules_per_token(None, 10, 1) is None
    assert joules_per_token(5.0, 0, 1) is None
    assert joules_per_token(6.0, 3, 2) == pytest.approx(1.0)
