"""One wall-clock timer per device, chosen once: perf_counter, fenced by CUDA synchronisation on a GPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kvbench.core.devices import Devices

T = TypeVar("T")


def synchronizer(devices: Devices) -> Callable[[], None]:
    """A function that waits for every GPU in use to finish its queued kernels; on a CPU, nothing to wait for."""
    if not devices.on_gpu:
        return lambda: None
    import torch

    def synchronize() -> None:
        for device in devices.gpus:
            torch.cuda.synchronize(device)

    return synchronize


def make_timer(
    devices: Devices, clock: Callable[[], float] = time.perf_counter
) -> Callable[[Callable[[], T]], tuple[T, float]]:
    """Returns timed(fn) -> (fn's result, seconds). On CUDA, kernels still queued would otherwise
    finish outside the timed span, so every GPU in use is synchronised before starting and stopping.
    `clock` is replaceable so tests can script it."""
    synchronize = synchronizer(devices)

    def timed(fn: Callable[[], T]) -> tuple[T, float]:
        synchronize()
        start = clock()
        result = fn()
        synchronize()
        return result, clock() - start

    return timed
