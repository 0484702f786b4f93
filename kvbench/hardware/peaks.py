"""A device's reachable peaks, measured: copy bandwidth and matrix-multiply throughput from torch, in this
process or in a fresh one (so the measuring process keeps no CUDA context or cached memory from them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from kvbench.core.child import child_environment
from kvbench.core.devices import is_gpu
from kvbench.model.costs import MeasuredPeaks


def _best_rate(work: Any, amount: float, budget_s: float, synchronize: Any) -> float:
    """Best amount/time over repeats within the budget: the reachable rate, not a noisy average."""
    work()  # warm up (allocator, kernels, thread pool)
    synchronize()
    best = 0.0
    deadline = time.perf_counter() + budget_s
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        work()
        synchronize()
        elapsed = time.perf_counter() - start
        if elapsed > 0:
            best = max(best, amount / elapsed)
        repeats += 1
    return best


def measure_device_peaks(device: str = "cpu", seconds: float = 2.0) -> MeasuredPeaks:
    """Copy bandwidth and GEMM throughput reachable from torch on `device`, in about `seconds`: float32 on a
    CPU, float16 on CUDA (the tensor cores' type). Copy buffers are far larger than any CPU cache."""
    import torch

    cuda = is_gpu(device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    started = time.perf_counter()

    buffer_bytes = (256 if cuda else 64) * 2**20
    source = torch.ones(buffer_bytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    copy_rate = _best_rate(lambda: target.copy_(source), 2 * buffer_bytes, seconds / 2, synchronize)  # noqa: F821 - run before the del
    del source, target

    dtype = torch.float16 if cuda else torch.float32
    size = 4096 if cuda else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    matmul_rate = _best_rate(lambda: torch.matmul(a, b, out=out), 2 * size**3, seconds / 2, synchronize)

    return MeasuredPeaks(
        device=device,
        copy_bandwidth_bytes_per_s=copy_rate,
        copy_buffer_bytes=buffer_bytes,
        matmul_flops_per_s=matmul_rate,
        matmul_dtype=str(dtype).removeprefix("torch."),
        matmul_size=size,
        seconds_spent_s=time.perf_counter() - started,
    )


# The device peaks timed in a process of their own: its CUDA context and cached memory go when it exits.
_PEAKS_PROCESS = (
    "import json, sys; from dataclasses import asdict; from kvbench.hardware.peaks import measure_device_peaks;"
    " print(json.dumps(asdict(measure_device_peaks(sys.argv[1]))))"
)


def device_peaks_in_fresh_process(device: str) -> tuple[dict[str, Any] | None, str | None]:
    """measure_device_peaks(device) in a fresh interpreter importing this kvbench: (the peaks, None) or
    (None, why they could not be measured)."""
    completed = subprocess.run(
        [sys.executable, "-c", _PEAKS_PROCESS, device], capture_output=True, text=True, env=child_environment(), check=False
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"]
        return None, f"not measured: the process timing them failed ({lines[-1]})"
    return json.loads(completed.stdout.strip().splitlines()[-1]), None
