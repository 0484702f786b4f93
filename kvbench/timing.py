"""One wall-clock timer per device, chosen once: perf_counter, fenced by CUDA synchronisation on a GPU."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def make_timer(devices: list[str]) -> Callable[[Callable[[], T]], tuple[T, float]]:
    """Returns timed(fn) -> (fn's result, seconds). On CUDA, kernels still queued would otherwise
    finish outside the timed span, so every GPU in use is synchronised before starting and stopping."""
    gpus = [device for device in devices if device.startswith("cuda")]
    if gpus:
        import torch

        def synchronize() -> None:
            for device in gpus:
                torch.cuda.synchronize(device)
    else:

        def synchronize() -> None:
            pass

    def timed(fn: Callable[[], T]) -> tuple[T, float]:
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        return result, time.perf_counter() - start

    return timed
