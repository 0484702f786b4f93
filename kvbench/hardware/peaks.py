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


def tf32_enabled() -> bool:
    """Whether float32 matrix products in this process may run on TF32 tensor cores: torch's precision
    setting below "highest", or NVIDIA's override variable, which turns them on whatever torch says.
    torch's default is off; kvbench never turns it on, so cells run as the peaks were measured."""
    import torch

    return torch.get_float32_matmul_precision() != "highest" or os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1"


def peak_dtypes(device: str, cell_dtypes: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The types whose matrix throughput bounds the cells: each cell's, "auto" read as what it resolves to
    (float32 on a CPU; on a GPU the checkpoint's 16-bit type, unknown before loading, so both). The first
    is the one older files recorded alone: float16 on a GPU (the tensor cores' type), float32 on a CPU."""
    cuda = is_gpu(device)
    wanted = {"float16", "bfloat16", "float32"} if cuda else {"float32"}
    if cell_dtypes:
        wanted = set()
        for dtype in cell_dtypes:
            wanted |= ({"float16", "bfloat16"} if cuda else {"float32"}) if dtype == "auto" else {dtype}
    first = "float16" if cuda else "float32"
    order = (first, *sorted({"float16", "bfloat16", "float32"} - {first}))
    return tuple(dtype for dtype in order if dtype in wanted)


def measure_device_peaks(device: str = "cpu", seconds: float = 2.0, dtypes: tuple[str, ...] | None = None) -> MeasuredPeaks:
    """Copy bandwidth and GEMM throughput reachable from torch on `device`, in about `seconds`: the product
    in each of `dtypes` (peak_dtypes' choice when None), since a cell's arithmetic runs in its own type and
    float32 on a GPU is an order of magnitude slower than float16. Copy buffers are far larger than any CPU
    cache. A type this device cannot multiply in is left out."""
    import torch

    cuda = is_gpu(device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    started = time.perf_counter()
    dtypes = dtypes or peak_dtypes(device)

    buffer_bytes = (256 if cuda else 64) * 2**20
    source = torch.ones(buffer_bytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    copy_rate = _best_rate(lambda: target.copy_(source), 2 * buffer_bytes, seconds / 2, synchronize)  # noqa: F821 - run before the del
    del source, target

    size = 4096 if cuda else 1024
    rates: dict[str, float] = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        try:
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            out = torch.empty(size, size, device=device, dtype=dtype)
            budget = seconds / 2 / len(dtypes)
            rates[name] = _best_rate(lambda: torch.matmul(a, b, out=out), 2 * size**3, budget, synchronize)  # noqa: B023 - run in this iteration
        except RuntimeError:
            continue  # no kernel for this type here: no bound in it rather than another type's
    if not rates:
        raise RuntimeError(f"no matrix product in {', '.join(dtypes)} runs on {device}")
    first = next(iter(rates))
    return MeasuredPeaks(
        device=device,
        copy_bandwidth_bytes_per_s=copy_rate,
        copy_buffer_bytes=buffer_bytes,
        matmul_flops_per_s=rates[first],
        matmul_dtype=first,
        matmul_size=size,
        seconds_spent_s=time.perf_counter() - started,
        matmul_flops_by_dtype=rates,
        tf32=tf32_enabled() if cuda else None,
    )


# The device peaks timed in a process of their own: its CUDA context and cached memory go when it exits.
_PEAKS_PROCESS = (
    "import json, sys; from dataclasses import asdict; from kvbench.hardware.peaks import measure_device_peaks;"
    " print(json.dumps(asdict(measure_device_peaks(sys.argv[1], dtypes=tuple(sys.argv[2].split(','))))))"
)


def device_peaks_in_fresh_process(device: str, dtypes: tuple[str, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """measure_device_peaks(device, dtypes=dtypes) in a fresh interpreter importing this kvbench: (the
    peaks, None) or (None, why they could not be measured)."""
    completed = subprocess.run(
        [sys.executable, "-c", _PEAKS_PROCESS, device, ",".join(dtypes)],
        capture_output=True,
        text=True,
        env=child_environment(),
        check=False,
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


def peaks_key(environment: dict[str, Any], device: str, dtypes: tuple[str, ...]) -> str:
    """What peaks measured once hold for: this machine, the device and its name, the matrix types measured
    there and whether float32's may use TF32, and the software that times them."""
    from kvbench.core.version import __version__

    parts = {
        "host": platform.node(),
        "cpu": environment.get("cpu"),
        "device": device,
        "device_name": environment.get("device_name"),
        "matmul_dtypes": list(dtypes),
        "tf32": tf32_enabled() if is_gpu(device) else None,
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
