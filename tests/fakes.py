"""A small fake of the slice of pynvml kvbench uses, for machines without an NVIDIA driver. It lives in
its own module so kvbench's sampling process (spawned, so it imports afresh) can build one too.

Its errors and their messages follow nvidia-ml-py's own: NVMLError subclasses for failed calls, and
NVMLLibraryMismatchError, a plain Exception, where an unversioned call (nvmlDeviceGetComputeRunningProcesses
is one) meets a driver without the function it wraps."""

from __future__ import annotations

import os
import types

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2

# One GPU, as NVML describes it: its UUID, PCI bus id, MIG mode, MIG instances (by UUID), clocks, power limit.
ONE_GPU = {"uuid": "GPU-0f0e0d0c-0000-1111-2222-333344445555", "pci_bus_id": "00000000:01:00.0"}


class FakeNvml(types.ModuleType):
    """The slice of pynvml that kvbench calls, answering like the GPUs described (by default one GPU with
    this process on it). A handle is "gpuN" for the Nth physical GPU and "gpuN/migM" for its Mth MIG
    instance."""

    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    class NVMLError_NotFound(NVMLError):
        def __str__(self) -> str:
            return "Not Found"

    class NVMLError_NotSupported(NVMLError):
        def __str__(self) -> str:
            return "Not Supported"

    class NVMLLibraryMismatchError(Exception):
        pass

    def __init__(
        self,
        available: bool = True,
        used: list[int] | None = None,
        process_bytes: int | list[int] = 0,
        pid: int | None = None,
        gpus: list[dict] | None = None,
        processes_mismatch: bool = False,
        memory_fails_after: int | None = None,
        crash: bool = False,
        energy_mj: list[int] | None = None,
        reads_file: str | None = None,
    ):
        super().__init__("pynvml")
        self.available = available
        self.used = list(used or [100])
        # Walked like `used`, one value per process listing, then the last one kept.
        self.process_bytes = process_bytes if isinstance(process_bytes, list) else [process_bytes]
        self.pid = os.getpid() if pid is None else pid  # the process said to be using the GPU
        self.gpus = [dict(gpu) for gpu in (gpus or [ONE_GPU])]
        # A driver older than nvidia-ml-py's v3 process list: the call raises the mismatch error.
        self.processes_mismatch = processes_mismatch
        # Memory readings that start failing (a GPU fallen off the bus) after this many.
        self.memory_fails_after = memory_fails_after
        # The process reading memory dies on its first reading (a driver fault, the OOM killer).
        self.crash = crash
        self.calls = 0
        self.energy_mj = list(energy_mj) if energy_mj is not None else None  # None: a GPU older than Volta
        self.energy_calls = 0
        self.process_list_calls = 0
        # A byte appended per memory reading: how a test sees, across processes, that sampling has happened.
        self.reads_file = reads_file

    def nvmlInit(self) -> None:
        if not self.available:
            raise self.NVMLError_LibraryNotFound()

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if index >= len(self.gpus):
            raise self.NVMLError_NotFound()
        return f"gpu{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        for index, gpu in enumerate(self.gpus):
            if gpu["uuid"] == uuid:
                return f"gpu{index}"
            for instance, mig in enumerate(gpu.get("mig_uuids", [])):
                if mig == uuid:
                    return f"gpu{index}/mig{instance}"
        raise self.NVMLError_NotFound()

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> str:
        for index, gpu in enumerate(self.gpus):
            if gpu["pci_bus_id"] == bus_id:
                return f"gpu{index}"
        raise self.NVMLError_NotFound()

    def _gpu(self, handle: str) -> dict:
        return self.gpus[int(handle.split("/")[0][3:])]

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        gpu = self._gpu(handle)
        if "/mig" in handle:
            return gpu["mig_uuids"][int(handle.split("/mig")[1])]
        return gpu["uuid"]

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        if "mig" not in self._gpu(handle):
            raise self.NVMLError_NotSupported()  # as on GPUs before Ampere
        mode = int(self._gpu(handle)["mig"])
        return [mode, mode]

    def _reading(self, handle: str, key: str) -> int:
        value = self._gpu(handle).get(key)
        if value is None:
            raise self.NVMLError_NotSupported()
        return value

    def nvmlDeviceGetClockInfo(self, handle: str, clock_type: int) -> int:
        gpu = self._gpu(handle)
        if clock_type == NVML_CLOCK_SM and "sm_clocks_mhz" in gpu:
            # A clock that changes under load: walks through the scripted readings, then stays on the last.
            clocks = gpu["sm_clocks_mhz"]
            gpu["sm_clock_reads"] = gpu.get("sm_clock_reads", 0) + 1
            return clocks[min(gpu["sm_clock_reads"] - 1, len(clocks) - 1)]
        return self._reading(handle, "sm_clock_mhz" if clock_type == NVML_CLOCK_SM else "memory_clock_mhz")

    def nvmlDeviceGetMaxClockInfo(self, handle: str, clock_type: int) -> int:
        return self._reading(handle, "max_sm_clock_mhz")

    def nvmlDeviceGetApplicationsClock(self, handle: str, clock_type: int) -> int:
        return self._reading(handle, "application_sm_clock_mhz")

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return self._reading(handle, "clock_event_reasons")

    def nvmlDeviceGetPowerManagementLimit(self, handle: str) -> int:
        return self._reading(handle, "power_limit_mw")

    def nvmlDeviceGetMemoryInfo(self, handle: str):
        if self.crash:
            os._exit(1)
        if self.memory_fails_after is not None and self.calls >= self.memory_fails_after:
            raise self.NVMLError("Unknown Error")
        # Walks through the scripted readings, then stays on the last one.
        value = self.used[min(self.calls, len(self.used) - 1)]
        self.calls += 1
        if self.reads_file is not None:
            with open(self.reads_file, "ab") as reads:
                reads.write(b".")
        return types.SimpleNamespace(used=value, total=80 * 2**30, free=80 * 2**30 - value)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str):
        self.process_list_calls += 1
        if self.processes_mismatch:
            # nvidia-ml-py's wording when the driver lacks nvmlDeviceGetComputeRunningProcesses_v3.
            raise self.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib version."
                " Either use matching pyNVML and NVML lib versions or use a versioned function such as"
                " nvmlDeviceGetComputeRunningProcesses_v2"
            )
        used = self.process_bytes[min(self.process_list_calls - 1, len(self.process_bytes) - 1)]
        return [types.SimpleNamespace(pid=self.pid, usedGpuMemory=used)]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        # Millijoules since the driver loaded; walks through the scripted readings like the memory ones.
        if self.energy_mj is None:
            raise self.NVMLError_NotSupported()
        value = self.energy_mj[min(self.energy_calls, len(self.energy_mj) - 1)]
        self.energy_calls += 1
        return value


def open_fake_nvml(devices: list[str], **kwargs) -> tuple[FakeNvml, dict[str, str]]:
    """Stands in for kvbench.hardware.nvml.open_by_uuid in the sampling process."""
    fake = FakeNvml(**kwargs)
    if not fake.available:
        fake.nvmlInit()
    return fake, {device: f"gpu{index}" for index, device in enumerate(devices)}


def cuda_properties(uuid: str | None = None, **extra) -> types.SimpleNamespace:
    """What torch.cuda.get_device_properties answers, for one GPU; without `uuid` like torch releases
    before mid-2024, which had no such attribute."""
    properties = types.SimpleNamespace(name="Fake T4", total_memory=16 * 2**30, major=7, minor=5, **extra)
    if uuid is not None:
        properties.uuid = uuid
    return properties
