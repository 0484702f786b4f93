"""Memory measured around one generate(): NVML VRAM samples (from a separate process), torch allocator
peaks and peak RSS.

Each source that cannot be read says why, so a run on a machine without a GPU still completes and
reports what it did not measure.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kvbench.core.devices import Devices
from kvbench.hardware.gpu_clocks import ClockSamples
from kvbench.hardware.nvml import gpu_uuids, open_by_uuid
from kvbench.model.memory_figures import MemoryFigures

_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class MemoryReading:
    """What the probe saw around one generate(): the totals, and each GPU's own figures when a model
    spans several."""

    totals: MemoryFigures
    per_device: dict[str, MemoryFigures] | None = None
    # (seconds since the run's start, bytes) as sampled: device-wide VRAM summed over the GPUs, or on a
    # CPU this process's RSS; None when nothing sampled.
    timeline: list[tuple[float, int]] | None = None
    timeline_source: str | None = None
    gpu_clocks: dict[str, Any] | None = None  # the SM clock while the run was timed; None off a GPU
    energy_samples_j: list[tuple[float, float]] | None = None  # NVML's energy counter at each sample


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


@dataclass
class SamplerReading:
    """What the sampler saw during one generate(), per device."""

    baseline: dict[str, int]
    peak: dict[str, int]
    peak_process_bytes: int | None  # this process's VRAM on all its devices, its peak over the run's readings
    samples: int
    process_unavailable: str | None
    # Why device-wide VRAM could not be read (baseline and peaks are then not to be used).
    device_unavailable: str | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    clocks: dict[str, Any] | None = None  # the SM clock during the run (ClockSamples.summary)
    # (seconds since start, joules) of NVML's energy counter summed over the GPUs, at each sample: how
    # coarsely it moves (kvbench.hardware.energy.counter_resolution).
    energy_j: list[tuple[float, float]] = field(default_factory=list)

    @property
    def peak_device_bytes(self) -> int:
        """The sum of each device's own peak."""
        return sum(self.peak.values())


# How often, in samples, NvmlSampler lists the GPU's processes for this process's own VRAM.
PROCESS_READ_EVERY = 10


class NvmlSampler:
    """Device-wide and per-process VRAM readings on every GPU a model spans: a baseline, then peaks."""

    def __init__(self, pynvml: Any, handles: dict[str, Any], pid: int) -> None:
        self._nvml = pynvml
        self._handles = handles
        self._pid = pid

    def begin(self) -> None:
        """Start a measurement: read the baseline, forget the last peaks."""
        self.device_unavailable: str | None = None
        self.baseline = {device: self._used(handle) for device, handle in self._handles.items()}
        self.peak = dict(self.baseline)
        self.peak_process_bytes: int | None = None
        self.process_unavailable: str | None = None
        self.samples = 0
        self._started = time.monotonic()
        self.timeline: list[tuple[float, int]] = [(0.0, sum(self.baseline.values()))]
        self.clocks = ClockSamples()
        self.clocks.begin(self._nvml, self._handles)
        self.energy_j: list[tuple[float, float]] = []
        self._read_energy()

    def _read_energy(self) -> None:
        """The energy counter over the GPUs, kept only when every GPU has one (Volta and newer)."""
        try:
            total_mj = sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) for handle in self._handles.values())
        except Exception:  # noqa: BLE001 - no counter: no resolution to estimate, never the sampler's end
            return
        self.energy_j.append((time.monotonic() - self._started, total_mj / 1000))

    def _used(self, handle: Any) -> int:
        """Device-wide VRAM in use; 0 once a reading has failed, which device_unavailable explains."""
        if self.device_unavailable is None:
            try:
                return self._nvml.nvmlDeviceGetMemoryInfo(handle).used
            except Exception as error:  # noqa: BLE001 - pynvml raises plain Exceptions too: never end the sampler
                self.device_unavailable = f"NVML cannot read device memory ({type(error).__name__}: {error})"
        return 0

    def _process_bytes(self, handle: Any) -> int | None:
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception as error:  # noqa: BLE001 - e.g. NVMLLibraryMismatchError (a plain Exception) on old drivers
            self.process_unavailable = f"NVML cannot list GPU processes ({type(error).__name__}: {error})"
            return None
        for process in processes:
            if process.pid == self._pid:
                used = process.usedGpuMemory
                if used is None:
                    self.process_unavailable = "NVML does not report per-process memory on this system"
                return used
        self.process_unavailable = "this process is not in NVML's process list (a container may hide host process ids)"
        return None

    def sample(self, final: bool = False) -> None:
        """Device-wide VRAM on every GPU; every PROCESS_READ_EVERY samples, and with `final` (once generate() has
        returned), also this process's, whose peak is the largest of those readings. Its VRAM is what torch's
        caching allocator holds, which it mostly keeps until the run is over (free_memory empties it before the
        run), but gives back to retry an allocation that failed, or at once with PYTORCH_NO_CUDA_MEMORY_CACHING:
        read only at the end, that peak would be missed. Listing every GPU process each 10 ms would add driver
        calls beside the timed run; every 10th sample (100 ms at the default interval) is the compromise."""
        used_total = 0
        for device, handle in self._handles.items():
            used = self._used(handle)
            used_total += used
            self.peak[device] = max(self.peak[device], used)
        if final or (self.samples + 1) % PROCESS_READ_EVERY == 0:
            process_total: int | None = 0
            for handle in self._handles.values():
                process = self._process_bytes(handle)
                process_total = None if process is None or process_total is None else process_total + process
            if process_total is None or self.process_unavailable is not None:
                self.peak_process_bytes = None
            else:
                self.peak_process_bytes = max(self.peak_process_bytes or 0, process_total)
        self.clocks.sample(self._nvml, self._handles)
        self._read_energy()
        self.samples += 1
        self.timeline.append((time.monotonic() - self._started, used_total))

    def reading(self) -> SamplerReading:
        return SamplerReading(
            dict(self.baseline),
            dict(self.peak),
            self.peak_process_bytes,
            self.samples,
            self.process_unavailable,
            self.device_unavailable,
            list(self.timeline),
            self.clocks.summary(),
            list(self.energy_j),
        )


class RssSampler:
    """The CPU's counterpart of NvmlSampler, run in the sampling process: the measured process's
    resident memory over time, read from /proc/<pid>/statm (one system call per reading, as NVML's is one
    ioctl). Only the timeline is kept: the process's own VmHWM already gives the peak."""

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/statm"
        self._page_bytes = os.sysconf("SC_PAGE_SIZE")
        self._read()  # fail now, in the opener, when /proc is not there

    def _read(self) -> int:
        with open(self._path) as statm:
            return int(statm.read().split()[1]) * self._page_bytes

    def begin(self) -> None:
        self._started = time.monotonic()
        self.samples = 0
        self.timeline: list[tuple[float, int]] = []
        try:
            self.timeline.append((0.0, self._read()))
        except (OSError, ValueError, IndexError):
            pass  # the measured process is ending (a --cell-timeout stops it): there is nothing to sample

    def sample(self, final: bool = False) -> None:
        try:
            self.timeline.append((time.monotonic() - self._started, self._read()))
        except (OSError, ValueError, IndexError):
            return  # the measured process is ending; the run's reading is what was sampled so far
        self.samples += 1

    def reading(self) -> SamplerReading:
        return SamplerReading({}, {}, None, self.samples, None, None, list(self.timeline))


def resident_bytes(pid: int) -> int | None:
    """Another process's resident memory now (/proc/<pid>/statm); None where there is no /proc or it is gone."""
    try:
        return RssSampler(pid)._read()
    except (OSError, ValueError, IndexError):
        return None


def open_rss_sampler(pid: int) -> RssSampler:
    return RssSampler(pid)


def downsample(timeline: list[tuple[float, int]] | None, points: int = 100) -> list[list[float]] | None:
    """At most `points` readings (plus the highest), evenly spread over the run: enough to draw memory
    against time without a results file that grows with the sampling rate."""
    if not timeline:
        return None
    if len(timeline) > points:
        step = len(timeline) / points
        kept = {int(i * step) for i in range(points - 1)} | {len(timeline) - 1}
        readings = timeline
        kept.add(max(range(len(readings)), key=lambda i: readings[i][1]))
        timeline = [readings[i] for i in sorted(kept)]
    return [[round(t, 4), int(used)] for t, used in timeline]


class SamplerUnavailable(Exception):
    pass


# Run in the sampling process: gives (pynvml, a handle per device) for VRAM, or a sampler of its own (an
# RssSampler on a CPU).
Opener = Callable[[], Any]


def _sampling_loop(conn: Any, opener: Opener, pid: int, interval_s: float) -> None:
    """The sampling process: on "start" take a baseline, sample every interval until "stop", reply. A
    failing NVML reading is recorded in the reading (NvmlSampler catches it), never the end of the loop.
    Whenever the measuring process has gone (killed at its --cell-timeout, perhaps while this one was still
    starting), this one ends quietly: what it prints would reach the run's output as a traceback."""
    # Ctrl-C at a terminal reaches the whole process group: the measuring process alone handles it, and
    # stops this one (or this one ends when its pipe does).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        opened = opener()
        # An opener gives (pynvml, handles) for the GPU, or a sampler of its own (RssSampler on a CPU).
        if isinstance(opened, tuple):
            pynvml, handles = opened
            sampler = NvmlSampler(pynvml, handles, pid)
        else:
            sampler = opened
    except Exception as error:  # noqa: BLE001 - any failure to open is reported, not raised, over the pipe
        try:
            conn.send(("error", f"{type(error).__name__}: {error}"))
        except OSError:
            pass  # no one is left to tell
        return
    try:
        conn.send(("ready", None))
        while conn.recv() == "start":
            sampler.begin()
            conn.send("started")
            while not conn.poll(interval_s):
                sampler.sample()
            conn.recv()
            # One last sample, so a generate() shorter than the interval still has a peak.
            sampler.sample(final=True)
            conn.send(sampler.reading())
    except (EOFError, OSError):
        pass  # the measuring process has gone (killed, or interrupted): so does its sampler


class SamplingProcess:
    """Samples VRAM from a separate process at a fixed interval while generate() runs.

    A process, not a thread: generate() is Python-bound between GPU kernels, and a sampling thread would
    take the GIL from it at every sample; a process takes nothing but a core, which GPU hosts have to
    spare. On a 2-core CPU, with no core to spare, benchmarks/sampler_overhead.py measured the two designs
    within each other's noise, each slowing generation by a few percent (benchmarks/README.md).
    """

    def __init__(self, opener: Opener, interval_s: float, pid: int | None = None) -> None:
        # spawn, not fork: forking a process that holds CUDA state is unsafe.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_sampling_loop,
            args=(child, opener, os.getpid() if pid is None else pid, interval_s),
            name="kvbench-memory-sampler",
            daemon=True,
        )
        # SIGINT blocked in this thread while it starts the child: the child inherits the mask through exec,
        # so a Ctrl-C during its start-up (imports) waits there until it ignores SIGINT, never a traceback.
        # This process still gets its own Ctrl-C: another thread takes it, or this one on unblocking.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        status, reason = self._conn.recv()
        if status != "ready":
            self._process.join()
            raise SamplerUnavailable(reason)

    def start(self) -> bool:
        """Take the baseline; False if the sampling process has gone."""
        try:
            self._conn.send("start")
            self._conn.recv()  # the baseline is taken before generation begins
        except (EOFError, OSError):
            return False
        return True

    def stop(self) -> SamplerReading | None:
        """The reading since start(); None if the sampling process has gone."""
        try:
            self._conn.send("stop")
            return self._conn.recv()
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send("exit")
            except OSError:
                pass
            self._process.join(timeout=5)
        if self._process.is_alive():  # stuck mid-measurement: do not leave it behind
            self._process.terminate()
            self._process.join(timeout=5)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Every object alive now (the model, torch, transformers: hundreds of thousands) out of the cyclic
    collector's reach until the block ends. free_memory's collection before each run then walks only what
    the runs made since; a full walk of the heap there left the CPU's caches cold for the timed
    generate(), about 2 ms slower each (a tenth of a tiny model's 8-token generation, end to end). A heap
    the caller froze already is left as the caller has it."""
    if gc.get_freeze_count():
        yield
        return
    try:
        gc.collect()
        gc.freeze()
        yield
    finally:
        # Back within reach: a later cell may load another model, and this one must be free to go.
        gc.unfreeze()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_between_cells(devices: Devices) -> None:
    """Before a cell measured in a process that measured another: what the last cell freed goes back to the
    system, the heap glibc keeps included (otherwise the resident set, and so the peak RSS, of every run
    after a larger cell reads its leftovers), and the CUDA allocator's blocks. Between a cell's own runs the
    heap stays, warm, as in a process of its own (trimmed, each run would fault its pages in again)."""
    free_memory(devices)
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def free_memory(devices: Devices) -> None:
    """Give back what earlier runs left before the next is measured: unreachable objects, and on a GPU
    the blocks torch's caching allocator keeps (once queued work has finished). Otherwise a run's NVML
    baseline and reserved peak are those of whatever ran before it: the other mode, a larger batch."""
    gc.collect()
    if devices.on_gpu:
        import torch

        for device in devices.gpus:
            torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class MemoryProbe:
    """Everything kvbench can measure about memory on the devices a model uses, around one run."""

    def __init__(
        self,
        devices: Devices,
        interval_s: float,
        sample_vram: bool = True,
        *,
        opener: Opener | None = None,
    ) -> None:
        """`opener` opens NVML in the sampling process; by default the real NVML, on the GPUs found by
        UUID (tests give a fake)."""
        self.devices = devices
        self.unavailable: dict[str, str] = {}
        self._rss = PeakRss()
        if self._rss.unavailable:
            self.unavailable["peak_rss"] = self._rss.unavailable
        if not devices.on_gpu:
            self.unavailable["torch_cuda_peaks"] = f"the device is {devices.describe()}, not a CUDA GPU"
        self._sampler: SamplingProcess | None = None
        self.timeline_source: str | None = None
        self._rss_only = False  # the sampling process reads RSS: a timeline, no VRAM figures
        if not sample_vram:
            self.unavailable["vram"] = "VRAM sampling was turned off (--no-memory-sampling)"
            return
        reason = None
        if opener is None:
            uuids, reason = gpu_uuids(list(devices.names))
            opener = functools.partial(open_by_uuid, uuids)
        self.timeline_source = "device VRAM (NVML)"
        if reason is not None and not devices.on_gpu:
            # No VRAM to sample: the sampling process reads this process's RSS instead, for the timeline.
            self.unavailable["vram"] = reason
            reason, self.timeline_source = None, "this process's RSS (/proc statm)"
            self._rss_only = True
            opener = functools.partial(open_rss_sampler, os.getpid())
        if reason is None:
            try:
                self._sampler = SamplingProcess(opener, interval_s)
            except SamplerUnavailable as error:
                reason = f"the {self.timeline_source} sampling process could not start ({error})"
        if reason is not None:
            self.unavailable["vram" if devices.on_gpu else "memory_timeline"] = reason

    def start(self) -> None:
        self._rss.reset()
        if self.devices.on_gpu:
            import torch

            for device in self.devices.gpus:
                torch.cuda.reset_peak_memory_stats(device)
        if self._sampler is not None and not self._sampler.start():
            self._sampler_gone()

    def _sampler_gone(self) -> None:
        """The sampling process has ended: VRAM goes unmeasured from here on, and the run goes on."""
        assert self._sampler is not None
        self._sampler.close()
        self._sampler = None
        self.unavailable["vram"] = "the NVML sampling process ended unexpectedly; VRAM was not sampled"

    def stop(self) -> MemoryReading:
        per_device = {device: MemoryFigures() for device in self.devices.gpus}
        if per_device:
            import torch

            for device, figures in per_device.items():
                figures.torch_peak_allocated_bytes = torch.cuda.max_memory_allocated(device)
                figures.torch_peak_reserved_bytes = torch.cuda.max_memory_reserved(device)
        samples = process_peak = None
        sampled = self._sampler.stop() if self._sampler is not None else None
        if self._sampler is not None and sampled is None:
            self._sampler_gone()
        timeline = sampled.timeline if sampled is not None else None
        if sampled is not None and sampled.device_unavailable:
            timeline = None  # its readings after the failure are zeros, not memory
        if sampled is not None and self._rss_only:
            sampled = None  # the CPU's RSS sampler: a timeline, no VRAM figures
        if sampled is not None:
            # NVML's process list answers for this process on all its GPUs at once.
            samples, process_peak = sampled.samples, sampled.peak_process_bytes
            for device, figures in per_device.items():
                if sampled.device_unavailable is None:
                    figures.vram_device_baseline_bytes = sampled.baseline.get(device)
                    figures.vram_device_peak_bytes = sampled.peak.get(device)
            if sampled.device_unavailable:
                self.unavailable["vram_device"] = sampled.device_unavailable
            if sampled.process_unavailable:
                self.unavailable["vram_process"] = sampled.process_unavailable
        totals = _sum_over_devices(per_device.values())
        totals.peak_rss_bytes = self._rss.peak_bytes()
        totals.vram_samples = samples
        totals.vram_process_peak_bytes = process_peak
        source = self.timeline_source if timeline else None
        clocks = sampled.clocks if sampled is not None else None
        energy_samples = sampled.energy_j if sampled is not None else None
        return MemoryReading(
            totals, per_device if len(per_device) > 1 else None, timeline or None, source, clocks, energy_samples or None
        )

    def close(self) -> None:
        """End the sampling process (it would also end with this one)."""
        if self._sampler is not None:
            self._sampler.close()


def _sum_over_devices(per_device: Iterable[MemoryFigures]) -> MemoryFigures:
    """Totals over the GPUs a model spans; a figure no device reported stays None."""
    per_device = list(per_device)
    totals = MemoryFigures()
    for name in MemoryFigures.names():
        present = [getattr(f, name) for f in per_device if getattr(f, name) is not None]
        setattr(totals, name, sum(present) if present else None)
    return totals
