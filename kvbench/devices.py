"""Which devices a benchmark uses, decided once and handed to timing, memory and the environment record."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvbench.errors import KvbenchError

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
    """"auto", "cpu", "cuda" or "cuda:N" to "cpu" or "cuda:N", checking that the GPU exists."""
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
