"""The machine and software a run happened on, collected in one place for the results file."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from kvbench.core.devices import Devices, cuda_index


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(root: Path, *arguments: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The commit of the kvbench checkout in use and whether its working tree differs from it (a changed or
    new file not ignored), so a result can be tied to the code that made it, or said not to be: a run from
    a dirty tree ran code no commit holds. Both None outside a git checkout."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    state: dict[str, Any] = {"kvbench_git_commit": None, "kvbench_git_dirty": None}
    if not (root / ".git").exists():
        return state
    head = _git(root, "rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return state
    state["kvbench_git_commit"] = head.stdout.strip()
    status = _git(root, "status", "--porcelain")
    if status is not None and status.returncode == 0:
        state["kvbench_git_dirty"] = bool(status.stdout.strip())
    return state


def _gpu(device: str) -> dict[str, Any]:
    """What a GPU result needs to be reproduced: which GPU (its UUID), what it can do (compute
    capability), the software between kvbench and it (CUDA and driver versions), which GPUs the process
    could see, and the clocks, power limit and MIG mode it started with (those NVML can read)."""
    import torch

    from kvbench.core.devices import compute_capability
    from kvbench.hardware import nvml

    properties = torch.cuda.get_device_properties(cuda_index(device))
    capability = compute_capability(device)
    info: dict[str, Any] = {
        "gpu_name": properties.name,
        "gpu_memory_bytes": properties.total_memory,
        "gpu_compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "cuda_version": torch.version.cuda,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_driver": None,
    }
    info.update(nvml.gpu_facts(device, properties))
    return info


def device_memory_bytes(device: str) -> int:
    """A GPU's total memory, as torch reports it (the figure `kvbench capacity` extrapolates against)."""
    import torch

    return int(torch.cuda.get_device_properties(cuda_index(device)).total_memory)


def placement(devices: Devices) -> dict[str, Any]:
    """Where a cell is being measured: this host and process, its devices, and each GPU's identity (the
    UUID tells two GPUs of the same model apart, across hosts too)."""
    where: dict[str, Any] = {"host": platform.node(), "pids": [os.getpid()], "devices": list(devices.names)}
    if devices.on_gpu:
        where["gpus"] = []
        for device in devices.gpus:
            facts = _gpu(device)
            where["gpus"].append(
                {"device": device, "name": facts["gpu_name"], "uuid": facts.get("gpu_uuid"), "driver": facts["gpu_driver"]}
            )
    return where


def collect(devices: Devices, gpu_here: bool = True) -> dict[str, Any]:
    """The machine and software of a run; `devices` are those the benchmark was asked to use. Without
    `gpu_here` the GPUs are other machines' (--launcher ray): each cell's place names the GPU it ran on."""
    import torch

    device = devices.primary
    environment: dict[str, Any] = {
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": cpu_name() if device == "cpu" else None,
    }
    if devices.on_gpu and gpu_here:
        gpu = _gpu(device)
        environment.update(gpu)
        environment["device_name"] = gpu["gpu_name"]
    return environment
