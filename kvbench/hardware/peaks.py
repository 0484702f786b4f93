"""A device's reachable peaks, measured: copy bandwidth and matrix-multiply throughput from torch, in this
process or in a fresh one (so the measuring process keeps no CUDA context or cached memory from them), and
kept in a cache file for the next run on the same machine, device, type and software."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
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


# Where kvbench keeps what it measured once per machine: $KVBENCH_CACHE_DIR, else $XDG_CACHE_HOME/kvbench,
# else ~/.cache/kvbench.
CACHE_FILE = "device-peaks.json"


def cache_directory() -> Path:
    chosen = os.environ.get("KVBENCH_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kvbench"


def peaks_key(environment: dict[str, Any], device: str) -> str:
    """What peaks measured once hold for: this machine, the device and its name, the matrix type measured
    there, and the software that times them."""
    from kvbench.core.version import __version__

    parts = {
        "host": platform.node(),
        "cpu": environment.get("cpu"),
        "device": device,
        "device_name": environment.get("device_name"),
        "matmul_dtype": "float16" if is_gpu(device) else "float32",
        "torch": environment.get("torch"),
        "kvbench": __version__,
    }
    return json.dumps(parts, sort_keys=True)


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable or damaged file is no cache (it is written anew)."""
    from kvbench.storage.validation import measured_peaks_problem

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(key, str) and measured_peaks_problem(value) is None}


def cached_peaks(key: str) -> dict[str, Any] | None:
    """The peaks measured before for `key`, marked with the file they came from; None if there are none."""
    path = cache_directory() / CACHE_FILE
    found = _read_cache(path).get(key)
    return {**found, "cached_in": str(path)} if found is not None else None


def remember_peaks(key: str, peaks: dict[str, Any]) -> str | None:
    """Keep `peaks` for the next run; written beside and renamed over, so a reader never sees half a file.
    Returns why they could not be kept (a read-only home), or None."""
    directory = cache_directory()
    path = directory / CACHE_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        entries = {**_read_cache(path), key: {**peaks, "cached_in": None}}
        temporary = path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        return f"the peaks could not be kept in {path} ({error.strerror or error}): the next run measures them again"
    return None
