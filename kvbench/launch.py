"""Which launcher measures a run's cells: the one registry of launchers, read by the run."""

from __future__ import annotations

from collections.abc import Callable

from kvbench.config import BenchConfig
from kvbench.launchers import InProcess, Launcher, LocalProcesses
from kvbench.ray_launcher import RayLauncher


def _local(config: BenchConfig) -> Launcher:
    if config.isolation == "process" or config.processes > 1:
        return LocalProcesses(config)
    return InProcess()


# By --launcher: each makes the launcher for a run's settings. A new launcher is a module and a line here.
LAUNCHERS: dict[str, Callable[[BenchConfig], Launcher]] = {
    "local": _local,
    "ray": RayLauncher,
}


def make_launcher(config: BenchConfig) -> Launcher:
    return LAUNCHERS[config.launcher](config)
