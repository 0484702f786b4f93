"""A quantized cache's kernels built before the cells, in a phase of their own: optimum-quanto compiles its
CUDA extension with nvcc on first use, a minute or more on a fresh machine, which inside a cell would be timed
as a generation or cut off by the cell's time limit. A build killed midway leaves torch's lock file behind, and
every later build waits on it forever; the build here clears it, saying so."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvbench.core.child import child_environment
from kvbench.core.devices import is_gpu

# torch.utils.cpp_extension's FileBaton: a file created when a build starts and deleted when it ends, so a
# build killed midway (SIGKILL, a time limit) leaves it, and the next one polls for its deletion forever.
TORCH_LOCK = "lock"
# kvbench's own lock beside it: an flock, which the system releases when its holder dies, however it dies.
GUARD = "kvbench-build.flock"
# The quantized backends whose kernels are built on first use, and how this module builds them.
BUILT_ON_FIRST_USE = ("quanto",)


def kernels_to_build(cache_implementations: list[str], quantized_backend: str, device: str) -> list[str]:
    """The backends whose kernels a sweep's cells would build in their first generation: quanto's, on a GPU."""
    if "quantized" in cache_implementations and quantized_backend in BUILT_ON_FIRST_USE and is_gpu(device):
        return [quantized_backend]
    return []


@contextmanager
def build_guard(build_directory: Path) -> Iterator[str | None]:
    """Held while a build runs in `build_directory`. Every build kvbench starts holds it, so under it torch's
    lock file can only be one a killed build left: it is removed, and what was done is yielded (None when
    there was nothing to clear). A build outside kvbench (your own script loading quanto at the same moment)
    does not take this guard; run none beside a sweep that builds."""
    build_directory.mkdir(parents=True, exist_ok=True)
    with open(build_directory / GUARD, "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            lock = build_directory / TORCH_LOCK
            cleared = None
            if lock.exists():
                lock.unlink(missing_ok=True)
                cleared = (
                    f"removed a stale build lock, {lock}, left by a build stopped before it finished (the build"
                    " would otherwise wait for it forever)"
                )
            yield cleared
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def build_quanto_cuda() -> dict[str, Any]:
    """optimum-quanto's CUDA extension, built (or, built before, loaded) in this process under the guard."""
    import torch

    if not torch.cuda.is_available():
        return {"built": False, "why": "no CUDA device"}
    from optimum.quanto.library.extensions import get_extension

    extension = get_extension("quanto_cuda")
    with build_guard(Path(extension.build_directory)) as cleared:
        extension.lib  # noqa: B018 (the property builds and loads the extension)
    return {"built": True, "cleared": cleared}


_BUILD_PROCESS = (
    "import json; from kvbench.measure.kernel_build import build_quanto_cuda; print(json.dumps(build_quanto_cuda()))"
)


@dataclass(frozen=True)
class KernelBuild:
    """What a build phase did: its seconds, the lines it has for the user, and why it failed (None if it did not)."""

    seconds: float
    lines: list[str]
    problem: str | None


def build_in_fresh_process(
    backend: str, run: Callable[..., Any] = subprocess.run, clock: Callable[[], float] = time.perf_counter
) -> KernelBuild:
    """The backend's kernels built in a fresh interpreter (so this process takes no CUDA context), timed."""
    started = clock()
    completed = run(
        [sys.executable, "-c", _BUILD_PROCESS], capture_output=True, text=True, env=child_environment(), check=False
    )
    seconds = clock() - started
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"])[-1]
        return KernelBuild(seconds, [], f"{backend}'s kernels could not be built before the cells ({last})")
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    lines = [f"{backend}: {outcome['cleared']}"] if outcome.get("cleared") else []
    if outcome.get("built"):
        lines.append(f"{backend}'s CUDA kernels built (or loaded, if built before) in {seconds:.1f} s, before the cells")
    return KernelBuild(seconds, lines, None)
