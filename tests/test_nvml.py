"""Finding torch's GPU among NVML's, with a fake NVML and fake torch device properties: the edge where
a machine without a GPU has neither."""

import pytest

from kvbench.core.devices import Devices
from kvbench.hardware.memory import MemoryProbe
from kvbench.hardware.nvml import gpu_facts, gpu_uuids
from tests.fakes import cuda_properties

FIRST = {"uuid": "GPU-11111111-aaaa-bbbb-cccc-000000000001", "pci_bus_id": "00000000:01:00.0"}
SECOND = {"uuid": "GPU-22222222-aaaa-bbbb-cccc-000000000002", "pci_bus_id": "00000000:41:00.0"}


@pytest.fixture
def torch_sees(monkeypatch):
    """torch.cuda.get_device_properties answering with the given properties for each index."""
    import torch

    def install(*properties):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties[index])

    return install


def test_a_mig_instance_is_found_by_its_mig_uuid(fake_nvml, torch_sees):
    mig = "MIG-5a5a5a5a-0000-1111-2222-333333333333"
    fake_nvml(gpus=[{**FIRST, "mig": True, "mig_uuids": [mig]}])
    torch_sees(cuda_properties(uuid=mig.removeprefix("MIG-")))  # torch gives the UUID bare
    assert gpu_uuids(["cuda:0"], environ={}) == ({"cuda:0": mig}, None)


def test_a_torch_uuid_with_its_prefix_is_used_as_is(fake_nvml, torch_sees):
    fake_nvml(gpus=[FIRST, SECOND])
    torch_sees(cuda_properties(uuid=SECOND["uuid"]))
    assert gpu_uuids(["cuda:0"], environ={}) == ({"cuda:0": SECOND["uuid"]}, None)


def test_a_renumbering_cuda_visible_devices_is_followed(fake_nvml, torch_sees):
    """torch without UUIDs, CUDA_VISIBLE_DEVICES naming NVML's second GPU by a UUID prefix: torch's
    cuda:0 is NVML's GPU 1, never NVML's GPU 0."""
    fake_nvml(gpus=[FIRST, SECOND])
    torch_sees(cuda_properties())
    uuids, reason = gpu_uuids(["cuda:0"], environ={"CUDA_VISIBLE_DEVICES": "GPU-2222"})
    assert (uuids, reason) == ({"cuda:0": SECOND["uuid"]}, None)


def test_an_index_that_may_name_another_gpu_is_not_guessed(fake_nvml, torch_sees):
    fake_nvml(gpus=[FIRST, SECOND])
    torch_sees(cuda_properties())
    uuids, reason = gpu_uuids(["cuda:0"], environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert uuids == {}
    assert reason.startswith("cannot tell which NVML GPU is cuda:0")


def test_the_pci_bus_id_finds_the_gpu_when_torch_has_no_uuid(fake_nvml, torch_sees):
    fake_nvml(gpus=[FIRST, SECOND])
    torch_sees(cuda_properties(pci_domain_id=0, pci_bus_id=0x41, pci_device_id=0))
    assert gpu_uuids(["cuda:0"], environ={"CUDA_VISIBLE_DEVICES": "1"}) == ({"cuda:0": SECOND["uuid"]}, None)


def test_the_pci_bus_id_of_a_gpu_in_mig_mode_is_refused(fake_nvml, torch_sees):
    fake_nvml(gpus=[{**FIRST, "mig": True, "mig_uuids": ["MIG-a", "MIG-b"]}])
    torch_sees(cuda_properties(pci_domain_id=0, pci_bus_id=1, pci_device_id=0))
    uuids, reason = gpu_uuids(["cuda:0"], environ={})
    assert uuids == {} and "MIG mode" in reason


def test_a_gpu_that_cannot_be_identified_leaves_vram_unmeasured(fake_nvml, torch_sees, monkeypatch):
    """The probe's own path: no UUID from torch, an index in CUDA_VISIBLE_DEVICES. VRAM is reported
    unmeasured with the reason, not sampled from NVML's GPU 0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    fake_nvml(gpus=[FIRST, SECOND])
    torch_sees(cuda_properties())
    probe = MemoryProbe(Devices(("cuda:0",)), interval_s=0.01)
    probe.close()
    assert probe.unavailable["vram"].startswith("cannot tell which NVML GPU is cuda:0")


def test_gpu_facts_for_reproducing_a_result(fake_nvml, torch_sees):
    gpu = {**FIRST, "mig": False, "sm_clock_mhz": 1590, "memory_clock_mhz": 5001, "power_limit_mw": 70000}
    fake_nvml(gpus=[gpu])
    properties = cuda_properties(uuid=FIRST["uuid"].removeprefix("GPU-"))
    assert gpu_facts("cuda:0", properties, environ={}) == {
        "gpu_driver": "550.54.15",
        "cuda_driver_version": "12.4",
        "gpu_uuid": FIRST["uuid"],
        "gpu_sm_clock_mhz": 1590,
        "gpu_memory_clock_mhz": 5001,
        "gpu_power_limit_w": 70.0,
        "gpu_mig_mode": False,
    }


def test_gpu_facts_leave_out_what_nvml_cannot_read(fake_nvml):
    fake_nvml(gpus=[FIRST])  # no clocks, power limit or MIG mode to read
    facts = gpu_facts("cuda:0", cuda_properties(uuid=FIRST["uuid"]), environ={})
    assert facts == {"gpu_driver": "550.54.15", "cuda_driver_version": "12.4", "gpu_uuid": FIRST["uuid"]}
    unidentified = gpu_facts("cuda:0", cuda_properties(), environ={})
    assert "gpu_uuid" not in unidentified and "cannot tell" in unidentified["gpu_uuid_unavailable"]


def test_gpu_facts_without_nvml_are_empty(fake_nvml):
    fake_nvml(available=False)
    assert gpu_facts("cuda:0", cuda_properties(uuid="x"), environ={}) == {}


def test_each_gpu_is_identified_once_per_process(fake_nvml, torch_sees, monkeypatch):
    """The samplers, the environment record and every cell's placement ask which GPU cuda:0 is: NVML is
    searched the first time only, and a failure to identify is remembered with its reason too."""
    nvml = fake_nvml(gpus=[FIRST, SECOND])
    second = cuda_properties(pci_domain_id=0, pci_bus_id=0x41, pci_device_id=0)
    torch_sees(second)
    searches = []
    original = type(nvml).nvmlDeviceGetHandleByPciBusId
    monkeypatch.setattr(
        type(nvml), "nvmlDeviceGetHandleByPciBusId", lambda self, bus: searches.append(bus) or original(self, bus)
    )
    for _ in range(3):
        assert gpu_uuids(["cuda:0"], environ={}) == ({"cuda:0": SECOND["uuid"]}, None)
    assert gpu_facts("cuda:0", second, environ={})["gpu_uuid"] == SECOND["uuid"]
    assert len(searches) == 1
    # Another CUDA_VISIBLE_DEVICES is another question.
    gpu_uuids(["cuda:0"], environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert len(searches) == 2
