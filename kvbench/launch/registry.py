"""Which launcher measures a run's cells: the one registry of launchers, read by the run."""

from __future__ import annotations

from collections.abc import Callable

from kvbench.launch.base import Launcher
from kvbench.launch.in_process import InProcess
from kvbench.launch.processes import LocalProcesses
from kvbench.launch.ray_tasks import RayLauncher
from kvbench.model.settings import BenchConfig


def _local(config: BenchConfig) -> type[Launcher]:
    if config.isolation != "none" or config.processes > 1:
        return LocalProcesses
    return InProcess


# By --launcher (the setting's choices, kvbench.model.settings.LAUNCHERS): the launcher for a run's settings.
# A new launcher is a module, a line here and its name among those choices.
LAUNCHERS: dict[str, Callable[[BenchConfig], type[Launcher]]] = {
    "local": _local,
    "ray": lambda config: RayLauncher,
}


def launcher_for(config: BenchConfig) -> type[Launcher]:
    """The launcher class a run's settings ask for: it resolves the device, then is made for it."""
    return LAUNCHERS[config.launcher](config)
