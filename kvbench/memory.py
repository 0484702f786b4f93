"""Memory measured around one generate(): NVML VRAM samples, torch allocator peaks and peak RSS.

Each source that cannot be read says why, so a run on a machine without a GPU still completes and
reports what it did not measure.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class MemoryReading:
    """Memory figures for one generate() call; None where the source was unavailable. GPU figures are
    totals over the devices a model spans; `per_device` breaks them down when there are several."""

    peak_rss_bytes: int | None = None
    torch_peak_allocated_bytes: int | None = None
    torch_peak_reserved_bytes: int | None = None
    vram_device_baseline_bytes: int | None = None
    vram_device_peak_bytes: int | None = None
    vram_process_peak_bytes: int | None = None
    vram_samples: int | None = None
    per_device: dict[str, dict[str, int | None]] | None = None


class PeakRss:
    """Peak resident memory of this process since the last reset (Linux VmHWM, reset via clear_refs)."""

    def __init__(self) -> None:
        self.unavailable: str | None = None
        try:
            self._read_hwm()
            with open(_PROC_CLEAR_REFS, "w") as handle:
                handle.write("5")
        except (OSError, ValueError) as error:
            self.unavailable = f"peak RSS needs Linux /proc with a resettable VmHWM ({error})"

    @staticmethod
    def _read_hwm() -> int:
        with open(_PROC_STATUS) as handle:
            match = re.search(r"VmHWM:\s+(\d+) kB", handle.read())
        if match is None:
            raise ValueError("no VmHWM line in /proc/self/status")
        return int(match.group(1)) * 1024

    def reset(self) -> None:
        if self.unavailable is None:
            with open(_PROC_CLEAR_REFS, "w") as handle:
                handle.write("5")

    def peak_bytes(self) -> int | None:
        return None if self.unavailable else self._read_hwm()


def open_nvml(devices: list[str]) -> tuple[Any, dict[str, Any], str | None]:
    """(pynvml module, {device: handle}, None) or (None, {}, the reason NVML cannot be used)."""
    gpus = [device for device in devices if device.startswith("cuda")]
    if not gpus:
        return None, {}, f"the device is {', '.join(devices)}, not a CUDA GPU"
    try:
        import pynvml
    except ImportError:
        return None, {}, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        return pynvml, {device: _nvml_handle(pynvml, device) for device in gpus}, None
    except pynvml.NVMLError as error:
        return None, {}, f"NVML is unavailable ({error})"


def _nvml_handle(pynvml: Any, device: str) -> Any:
    """NVML numbers GPUs physically while CUDA_VISIBLE_DEVICES renumbers them for torch: match by UUID."""
    import torch

    index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class NvmlSampler:
    """Samples device-wide and this process's VRAM, on every GPU a model spans, on a background thread
    at a fixed interval.

    A thread, not a process: NVML calls go through ctypes, which releases the GIL, and each sample costs
    microseconds against an interval of milliseconds (benchmarks/sampler_overhead.py measures the cost).
    """

    def __init__(self, pynvml: Any, handles: dict[str, Any], interval_s: float, pid: int | None = None) -> None:
        self._nvml = pynvml
        self._handles = handles
        self.interval_s = interval_s
        self._pid = os.getpid() if pid is None else pid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.process_unavailable: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.baseline: dict[str, int] = {}
        self.peak: dict[str, int] = {device: 0 for device in self._handles}
        self.peak_process_bytes: int | None = None
        self.samples = 0

    @property
    def baseline_bytes(self) -> int | None:
        return sum(self.baseline.values()) if self.baseline else None

    @property
    def peak_device_bytes(self) -> int:
        """The sum of each device's own peak."""
        return sum(self.peak.values())

    def _used(self, handle: Any) -> int:
        return self._nvml.nvmlDeviceGetMemoryInfo(handle).used

    def _process_bytes(self, handle: Any) -> int | None:
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self._nvml.NVMLError as error:
            self.process_unavailable = f"NVML cannot list GPU processes ({error})"
            return None
        for process in processes:
            if process.pid == self._pid:
                used = process.usedGpuMemory
                if used is None:
                    self.process_unavailable = "NVML does not report per-process memory on this system"
                return used
        self.process_unavailable = (
            "this process is not in NVML's process list (a container may hide host process ids)"
        )
        return None

    def _sample(self) -> None:
        process_total: int | None = 0
        for device, handle in self._handles.items():
            self.peak[device] = max(self.peak[device], self._used(handle))
            process = self._process_bytes(handle)
            process_total = None if process is None or process_total is None else process_total + process
        if process_total is not None:
            self.peak_process_bytes = max(self.peak_process_bytes or 0, process_total)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._reset()
        self.baseline = {device: self._used(handle) for device, handle in self._handles.items()}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kvbench-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # One last sample so a generate shorter than the interval still has a peak.
        self._sample()


class MemoryProbe:
    """Everything kvbench can measure about memory on the devices a model uses, around one run."""

    def __init__(self, devices: list[str], interval_s: float, sample_vram: bool = True) -> None:
        self.devices = devices
        self.unavailable: dict[str, str] = {}
        self._rss = PeakRss()
        if self._rss.unavailable:
            self.unavailable["peak_rss"] = self._rss.unavailable
        self._gpus = [device for device in devices if device.startswith("cuda")]
        if not self._gpus:
            self.unavailable["torch_cuda_peaks"] = f"the device is {', '.join(devices)}, not a CUDA GPU"
        self._sampler: NvmlSampler | None = None
        if not sample_vram:
            self.unavailable["vram"] = "VRAM sampling was turned off (--no-memory-sampling)"
            return
        pynvml, handles, reason = open_nvml(devices)
        if reason is not None:
            self.unavailable["vram"] = reason
        else:
            self._sampler = NvmlSampler(pynvml, handles, interval_s)

    def start(self) -> None:
        self._rss.reset()
        if self._gpus:
            import torch

            for device in self._gpus:
                torch.cuda.reset_peak_memory_stats(device)
        if self._sampler is not None:
            self._sampler.start()

    def stop(self) -> MemoryReading:
        reading = MemoryReading(peak_rss_bytes=self._rss.peak_bytes())
        per_device: dict[str, dict[str, int | None]] = {device: {} for device in self._gpus}
        if self._gpus:
            import torch

            for device in self._gpus:
                per_device[device]["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
                per_device[device]["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
            reading.torch_peak_allocated_bytes = sum(d["torch_peak_allocated_bytes"] for d in per_device.values())
            reading.torch_peak_reserved_bytes = sum(d["torch_peak_reserved_bytes"] for d in per_device.values())
        if self._sampler is not None:
            self._sampler.stop()
            reading.vram_device_baseline_bytes = self._sampler.baseline_bytes
            reading.vram_device_peak_bytes = self._sampler.peak_device_bytes
            reading.vram_process_peak_bytes = self._sampler.peak_process_bytes
            reading.vram_samples = self._sampler.samples
            for device in self._gpus:
                per_device[device]["vram_device_baseline_bytes"] = self._sampler.baseline.get(device)
                per_device[device]["vram_device_peak_bytes"] = self._sampler.peak.get(device)
            if self._sampler.process_unavailable:
                self.unavailable["vram_process"] = self._sampler.process_unavailable
        if len(per_device) > 1:
            reading.per_device = per_device
        return reading
