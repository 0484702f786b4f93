"""Cells as Ray tasks (--launcher ray): each asks the cluster for the GPUs it needs, measures in a fresh
process on the node Ray gives it, and streams its records back to this process, which alone writes the
results file. Ray is an optional extra (pip install 'kvbench[ray]'), imported only here, only when used."""

from __future__ import annotations

import importlib.util
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvbench.core.errors import KvbenchError, MeasuringStopped
from kvbench.launch.base import CellWork, Deliver, Launcher, MeasuredIn
from kvbench.launch.workers import WorkerProcess, jobs_in_fresh_processes
from kvbench.model.events import CellChanged, CellEnded, Event, Failed
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellState
from kvbench.model.settings import BenchConfig

if TYPE_CHECKING:
    from kvbench.measure.measurer import Measurer

# How long a cluster's address may take to accept a connection. Ray's own client retries for minutes,
# deaf to Ctrl-C and SIGTERM while it waits inside its C++ core.
RAY_CONNECT_TIMEOUT_S = 5.0
# A cluster whose processes were killed leaves its tasks' results waiting for ever, until Ray's client gives
# up after 60 s and ends this process with a message of its own. Its GCS and this node's raylet are asked
# once a second whether they accept a connection; refusing for this long, the cluster is gone (a GCS that
# restarts is back sooner).
CLUSTER_GONE_AFTER_S = 5.0
CLUSTER_CHECK_EVERY_S = 1.0


def check_reachable(address: str | None, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse at once, in one line, a host:port (or ray://host:port) that nothing answers on."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or no address: Ray finds the cluster (or starts one) itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        why = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise KvbenchError(
            f"no Ray cluster answers at --ray-address {address} ({why}; waited at most {timeout_s:g} s);"
            " start one there with `ray start --head`, or correct the address"
        ) from None


def _answers(address: str, timeout_s: float) -> str | None:
    """None where a host:port accepts a connection, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as error:
        return getattr(error, "strerror", None) or str(error) or type(error).__name__


class ClusterWatch:
    """Whether the Ray cluster this process joined is still there: its GCS and this node's raylet accept
    connections. Asked after every wait for results; it checks at most once per CLUSTER_CHECK_EVERY_S."""

    def __init__(self, ray: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.addresses = _cluster_addresses(ray)
        self.clock = clock
        self.checked_at = -math.inf
        self.refused_since: float | None = None
        self.refusal = ""

    def check(self, at_once: bool = False) -> None:
        """Raise MeasuringStopped where the cluster has refused connections for CLUSTER_GONE_AFTER_S (at once:
        now, with no wait, as after a task died)."""
        now = self.clock()
        if not at_once and now - self.checked_at < CLUSTER_CHECK_EVERY_S:
            return
        self.checked_at = now
        refusals = [f"its {name} at {address}: {why}" for name, address in self.addresses if (why := _answers(address, 1.0))]
        if not refusals:
            self.refused_since = None
            return
        if self.refused_since is None:
            self.refused_since = now
        if at_once or now - self.refused_since >= CLUSTER_GONE_AFTER_S:
            waited = "after a task died" if at_once else f"for {now - self.refused_since:.0f} s"
            raise MeasuringStopped(
                f"the Ray cluster stopped answering while measuring ({waited}, {'; '.join(refusals)}): its"
                " processes were stopped or killed"
            )


def _cluster_addresses(ray: Any) -> list[tuple[str, str]]:
    """The GCS's and this node's raylet's host:port, as far as this Ray tells them (a Ray client connection,
    ray://, has neither here: its cluster is not watched)."""
    addresses = []
    try:
        context = ray.get_runtime_context()
        addresses.append(("GCS", context.gcs_address))
        node_id = context.get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("NodeManagerPort"):
                addresses.append(("raylet", f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"))
    except Exception:  # noqa: BLE001 - internals that differ between Ray versions and connection kinds
        pass
    return [(name, address) for name, address in addresses if isinstance(address, str) and ":" in address]


def _import_ray() -> Any:
    try:
        import ray
    except Exception as error:  # noqa: BLE001 - a broken install raises whatever its first import does
        if importlib.util.find_spec("ray") is None:
            raise KvbenchError("--launcher ray needs Ray; pip install 'kvbench[ray]'") from None
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise KvbenchError(
            f"--launcher ray cannot import Ray ({type(error).__name__}: {first_line}); reinstall it:"
            " pip install --force-reinstall 'kvbench[ray]'"
        ) from None
    if getattr(ray, "__file__", None) is None or not hasattr(ray, "remote"):
        # A folder named ray and no Ray in it imports as an empty package: what `pip uninstall ray` leaves
        # behind (its caches), or a folder of the user's own in the current directory.
        where = ", ".join(str(folder) for folder in getattr(ray, "__path__", ())) or "the import path"
        raise KvbenchError(
            f"--launcher ray needs Ray, and the ray that imports is a folder with no Ray in it ({where}); pip"
            " install 'kvbench[ray]', or run where no such folder is on the path"
        )
    return ray


def cell_task(jobs: list[CellJob], timeout_s: float | None) -> Iterator[Event]:
    """Runs as a Ray task: the cell's measuring processes on this node, one after another, their events
    streamed back as Ray yields them. The node's id goes with the place the cell ran."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    live: set[WorkerProcess] = set()
    try:
        for event in jobs_in_fresh_processes(jobs, timeout_s, live):
            if isinstance(event, CellChanged) and event.cell.ran_on:
                event = CellChanged(replace(event.cell, ran_on={**event.cell.ran_on, "ray_node_id": node}))
            yield event
    finally:
        # Cancelled (Ctrl-C in the parent): the measuring process must not outlive its task.
        for worker in list(live):
            worker.kill()


class RayLauncher(Launcher):
    """Every cell submitted at once as a Ray task; Ray runs as many at a time as the cluster has room for."""

    name = "ray"
    measures_in = MeasuredIn.OTHER_MACHINES

    def __init__(self, config: BenchConfig, device: str, here: Measurer | None = None) -> None:
        super().__init__(config, device, here)
        # Checked with the run's other settings, before anything is written.
        check_reachable(config.ray_address)
        # Imported now, before the results file is made (and by a dry run), not once it is time to measure:
        # a Ray that is installed but does not import is found here too.
        _import_ray()

    @classmethod
    def resolve_device(cls, requested: str) -> str:
        """Left to each task: "auto" is a GPU where Ray gave the task one, and the GPUs a task sees are the
        ones Ray assigned it (numbered from 0)."""
        if requested.startswith("cuda:") and requested != "cuda:0":
            raise KvbenchError(f"--launcher ray assigns the GPUs; use --device cuda or auto, not {requested}")
        return requested

    def resources(self, ray: Any) -> dict[str, Any]:
        """What each cell's task asks Ray for."""
        config = self.config
        if config.gpus_per_cell is not None:
            gpus = config.gpus_per_cell
        elif config.device == "cpu":
            gpus = 0
        elif config.device == "auto":
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        else:
            gpus = 1
        # Ray may reuse its worker processes: the measuring process each task starts is the fresh one.
        options: dict[str, Any] = {"num_gpus": gpus}
        if gpus == 0:
            # A CPU cell takes a whole node's cores (the smallest node's count), so no other cell runs
            # beside it and shares the cores it is timed on.
            sizes = [node["Resources"].get("CPU", 1) for node in ray.nodes() if node.get("Alive")]
            options["num_cpus"] = min(sizes) if sizes else 1
        else:
            options["num_cpus"] = 1
        if config.accelerator_type is not None:
            options["accelerator_type"] = config.accelerator_type
        return options

    def measure(self, work: Sequence[CellWork], deliver: Deliver) -> None:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            # No address: start a local instance (or join the one RAY_ADDRESS names).
            handler = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=self.config.ray_address, include_dashboard=False, log_to_driver=False)
            except Exception as error:  # noqa: BLE001 - Ray raises many types for an address it cannot reach
                where = f"join Ray at {self.config.ray_address}" if self.config.ray_address else "start Ray"
                first_line = (str(error).strip().splitlines() or [""])[0]
                raise KvbenchError(
                    f"--launcher ray cannot {where} ({type(error).__name__}: {first_line}); check --ray-address"
                ) from None
            # ray.init makes SIGTERM exit at once (sys.exit(15)): kvbench's handler stops the run as Ctrl-C
            # does, with its message and exit code 130.
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)
        try:
            self._measure(ray, work, deliver)
        finally:
            if started_here:
                ray.shutdown()

    def _measure(self, ray: Any, work: Sequence[CellWork], deliver: Deliver) -> None:
        task = ray.remote(cell_task)
        options = self.resources(ray)
        streams: dict[Any, int] = {}
        for item in work:
            cell = item.jobs[0].cell
            stream = task.options(**options, name=f"kvbench {cell.id}").remote(item.jobs, self.config.cell_timeout)
            streams[stream] = item.key
        watch = ClusterWatch(ray)
        try:
            while streams:
                ready, _ = ray.wait(list(streams), num_returns=1, timeout=0.5)
                for stream in ready:
                    key = streams[stream]
                    try:
                        event = ray.get(next(stream))
                    except StopIteration:
                        deliver(key, CellEnded())
                        del streams[stream]
                        continue
                    except ray.exceptions.RayError as error:
                        # The whole cluster gone: the run stops, and the cell is measured again on --resume.
                        watch.check(at_once=True)
                        # The task itself died (its node lost, its worker killed): the cell fails alone.
                        deliver(key, Failed(CellState.ERROR, f"the Ray task failed: {str(error).strip().splitlines()[0]}"))
                        deliver(key, CellEnded())
                        del streams[stream]
                        continue
                    deliver(key, event)
                watch.check()
        finally:
            # Ctrl-C or an error: cells not finished are cancelled; those finished are already saved.
            for stream in streams:
                ray.cancel(stream)
