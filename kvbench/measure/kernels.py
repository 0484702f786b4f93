"""A cache backend that compiles its kernels on first use, built before the cell's warmup as a phase of its
own: optimum-quanto compiles its CPU extension with the machine's C++ compiler the first time a quantized cache
unpacks (2:17 on the 2-core AMD EPYC VM), and would otherwise do it inside the first generation, with nothing
on the screen moving. The build runs in a thread while this one says, about once a second, that it goes on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvbench.model.cells import Cell
from kvbench.model.events import Emit, PhaseAlive, PhaseStarted
from kvbench.model.phases import KERNEL_BUILD

# How long the build is taken to last until it ends, for the time left: quanto's CPU extension on the 2-core
# AMD EPYC VM (docs/results.md).
KERNEL_BUILD_GUESS_S = 137.0
ALIVE_EVERY_S = 1.0


@dataclass(frozen=True)
class KernelBuild:
    """A build still to do: what it is in words, and the call that does it."""

    what: str
    build: Callable[[], Any]


def _quanto_cpu_extension() -> Any | None:
    try:
        from optimum.quanto.library.extensions import get_extension, is_extension_available
    except ImportError:
        return None
    return get_extension("quanto_cpp") if is_extension_available("quanto_cpp") else None


def _built_for_this_torch(extension: Any) -> bool:
    """quanto's own test: a build directory whose recorded torch version is this one (it rebuilds otherwise)."""
    import torch

    version_file = os.path.join(extension.build_directory, "pytorch_version.txt")
    try:
        with open(version_file) as recorded:
            return recorded.read().rstrip() == torch.__version__
    except OSError:
        return False


def pending_build(cell: Cell, quantized_backend: str, device_type: str) -> KernelBuild | None:
    """The kernels a cell's cache backend would build in its first generation, None where there are none
    to build (another cache or backend, a GPU, or kernels already built for this torch)."""
    if cell.cache_implementation != "quantized" or quantized_backend != "quanto" or device_type != "cpu":
        return None
    extension = _quanto_cpu_extension()
    if extension is None or extension._lib is not None or _built_for_this_torch(extension):
        return None
    return KernelBuild("building optimum-quanto's CPU kernels (first use)", lambda: extension.lib)


def build_kernels(build: KernelBuild, emit: Emit, alive_every_s: float = ALIVE_EVERY_S) -> None:
    """Run the build in a thread, emitting PhaseStarted, then PhaseAlive about every `alive_every_s` until it
    ends; its error, if any, is raised here, as the first generation would have raised it."""
    emit(PhaseStarted(KERNEL_BUILD, build.what, KERNEL_BUILD_GUESS_S))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            build.build()
        except BaseException as error:  # noqa: BLE001 - handed to the measuring thread, raised there
            errors.append(error)

    thread = threading.Thread(target=run, name="kernel-build", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(alive_every_s)
        emit(PhaseAlive())
    if errors:
        raise errors[0]
