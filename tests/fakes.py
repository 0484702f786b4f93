"""A small fake of the slice of pynvml kvbench uses, for machines without an NVIDIA driver. It lives in
its own module so kvbench's sampling process (spawned, so it imports afresh) can build one too."""

from __future__ import annotations

import os
import types


class FakeNvml(types.ModuleType):
    """The slice of pynvml that kvbench calls, answering like one GPU with this process on it."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    class NVMLError_NotSupported(NVMLError):
        def __str__(self) -> str:
            return "Not Supported"

    def __init__(
        self,
        available: bool = True,
        used: list[int] | None = None,
        process_bytes: int = 0,
        pid: int | None = None,
        energy_mj: list[int] | None = None,
    ):
        super().__init__("pynvml")
        self.available = available
        self.used = list(used or [100])
        self.process_bytes = process_bytes
        self.pid = os.getpid() if pid is None else pid  # the process said to be using the GPU
        self.calls = 0
        self.energy_mj = list(energy_mj) if energy_mj is not None else None  # None: a GPU older than Volta
        self.energy_calls = 0

    def nvmlInit(self) -> None:
        if not self.available:
            raise self.NVMLError_LibraryNotFound()

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str):
        # Walks through the scripted readings, then stays on the last one.
        value = self.used[min(self.calls, len(self.used) - 1)]
        self.calls += 1
        return types.SimpleNamespace(used=value, total=80 * 2**30, free=80 * 2**30 - value)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str):
        return [types.SimpleNamespace(pid=self.pid, usedGpuMemory=self.process_bytes)]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        # Millijoules since the driver loaded; walks through the scripted readings like the memory ones.
        if self.energy_mj is None:
            raise self.NVMLError_NotSupported()
        value = self.energy_mj[min(self.energy_calls, len(self.energy_mj) - 1)]
        self.energy_calls += 1
        return value


def open_fake_nvml(devices: list[str], **kwargs) -> tuple[FakeNvml, dict[str, str]]:
    """Stands in for kvbench.memory.open_nvml in the sampling process."""
    fake = FakeNvml(**kwargs)
    if not fake.available:
        fake.nvmlInit()
    return fake, {device: f"gpu{index}" for index, device in enumerate(devices)}
