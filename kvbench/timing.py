"""One wall-clock timer per device, chosen once: perf_counter, fenced by CUDA synchronisation on a GPU."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def make_timer(device: str) -> Callable[[Callable[[], T]], tuple[T, float]]:
    """Returns timed(fn) -> (fn's result, seconds). On CUDA, kernels still queued would otherwise
    finish outside the timed span, so the device is synchronised before starting and before stopping."""
    if device.startswith("cuda"):
        import torch

        def synchronize() -> None:
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
