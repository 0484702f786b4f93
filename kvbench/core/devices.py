"""Which devices a benchmark uses, decided once and handed to timing, memory and the environment record."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvbench.core.errors import KvbenchError

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def valid_device_name(name: str) -> bool:
    """Whether a --device value is one kvbench understands (auto, cpu, cuda, cuda:N)."""
    return _DEVICE_NAME.fullmatch(name) is not None


def is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def cuda_index(device: str) -> int:
    """The N of "cuda:N"; plain "cuda" is the first GPU."""
    return int(device.split(":")[1]) if ":" in device else 0


@dataclass(frozen=True)
class Devices:
    """Every device a loaded model occupies, in the order its modules use them: the first takes the inputs."""

    names: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.names[0]

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if is_gpu(name))

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        return ", ".join(self.names)


def resolve_device(requested: str) -> str:
    """ "auto", "cpu", "cuda" or "cuda:N" to "cpu" or "cuda:N", checking that the GPU exists."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    index = cuda_index(requested)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        found = f"{count} CUDA device(s)" if count else "no CUDA device (or torch was built without CUDA)"
        raise KvbenchError(f"device {requested} is not available: this machine has {found}; use --device cpu")
    return f"cuda:{index}"


def compute_capability(*devices: str) -> tuple[int, int] | None:
    """The lowest CUDA compute capability among `devices` (a model spread over GPUs runs at the pace of
    its weakest), or None where none is a GPU. Decided here once and handed to what depends on it:
    the dtype `auto` picks, and whether bfloat16 and flash attention run natively."""
    gpus = [device for device in devices if is_gpu(device)]
    if not gpus:
        return None
    import torch

    major, minor = min(tuple(torch.cuda.get_device_capability(cuda_index(device))) for device in gpus)
    return major, minor


def native_bfloat16(capability: tuple[int, int] | None) -> bool:
    """bfloat16 runs natively from compute capability 8.0 (Ampere); below, it is emulated and slow."""
    return capability is not None and capability >= (8, 0)
