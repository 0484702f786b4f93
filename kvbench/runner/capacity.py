"""`kvbench capacity`: the longest prompt at batch 1 and the largest batch at a given prompt that really fit, for
each cache implementation, found by measurement (kvbench.runner.capacity_search), each probe one generation in
a measuring process; beside the what-fits extrapolation for the same memory. On a CPU a probe fits when its
process's measured peak stays within the budget; on a GPU when it does not run out of the device's memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kvbench.analysis.cache_choice import Missing, what_fits
from kvbench.core.errors import KvbenchError
from kvbench.core.kvsize import BYTES_PER_ELEMENT
from kvbench.core.units import format_bytes
from kvbench.core.version import __version__
from kvbench.launch.probes import Measured, ProcessProber
from kvbench.model.capacity import BATCH, CONTEXT, SEARCHES, CapacityReport, Probe, Search
from kvbench.model.cells import Cell, expand
from kvbench.model.jobs import CellJob
from kvbench.model.records import CellResult
from kvbench.model.settings import MOST_TOKENS, BenchConfig
from kvbench.runner.capacity_search import DEFAULT_RESOLUTION, search

# The prompt a batch search runs at when none is given: at most this, and what the model's limit allows.
DEFAULT_CONTEXT = 1024
# Where the searches start: a prompt of this many tokens, a batch of one.
CONTEXT_START = 256
BATCH_START = 1
# The largest batch probed when no --most-batch is given: past it, memory is not what limits the batch.
DEFAULT_MOST_BATCH = 4096
# New tokens per probe: capacity is about what fits, not how fast, and the prefill holds the most.
DEFAULT_NEW_TOKENS = 8


@dataclass
class CapacityRequest:
    """What `kvbench capacity` is asked: the model and how it runs, the memory a probe must stay within, and
    which searches, how far and how finely."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    caches: Sequence[str] = ("dynamic",)
    attn_implementation: str = "auto"
    weights: str = "auto"
    memory_budget: int | None = None  # bytes; a CPU needs one
    context: int | None = None  # the prompt of the batch search; None: DEFAULT_CONTEXT, or what the model allows
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    find: Sequence[str] = SEARCHES
    most_context: int | None = None  # None: the model's position limit
    most_batch: int = DEFAULT_MOST_BATCH
    resolution: float = DEFAULT_RESOLUTION
    quantized: dict[str, Any] | None = None  # quantized_backend, quantized_nbits, ... as BenchConfig names them
    output: Path | None = None
    force: bool = False
    command: str = ""


@dataclass(frozen=True)
class MemoryLimit:
    """What a probe must stay within: a budget its measured peak must not exceed, and, on a GPU, the device's
    memory, which it must not run out of. A probe that runs out of memory never fits."""

    budget_bytes: int | None
    device_bytes: int | None = None

    @property
    def memory_bytes(self) -> int:
        """The memory the extrapolation is solved against: the budget, else the device's."""
        memory = self.budget_bytes if self.budget_bytes is not None else self.device_bytes
        assert memory is not None, "a limit has a budget or a device's memory"
        return memory

    def fits(self, measured: Measured) -> bool:
        if measured.out_of_memory or measured.failure is not None:
            return False
        if self.budget_bytes is None:
            return True
        if measured.peak_bytes is None:
            raise KvbenchError(
                "the measuring process's peak memory could not be read here (peak RSS needs Linux's /proc), so no"
                " probe can be held to --memory-budget; run kvbench capacity on Linux, or on a GPU without a budget"
            )
        return measured.peak_bytes <= self.budget_bytes


def capacity_config(request: CapacityRequest) -> BenchConfig:
    """The settings every probe shares, checked as `kvbench run` checks them: one cached generation per probe,
    no warmup, no comparison."""
    from kvbench.model.experiment import build_config

    overrides: dict[str, Any] = {
        "model": [request.model],
        "device": request.device,
        "dtype": [request.dtype],
        "cache_implementation": list(request.caches),
        "attn_implementation": [request.attn_implementation],
        "weights": request.weights,
        "max_new_tokens": [request.max_new_tokens],
        "modes": ["cached"],
        "runs": 1,
        "warmup": 0,
        "device_peaks": False,
        **(request.quantized or {}),
    }
    return build_config(None, overrides)


class CapacityRun:
    """One `kvbench capacity`: made, it checks everything that can be known before loading the model (one
    KvbenchError line each); `run` probes, writing the report to its output after every probe, so an
    interrupted run keeps what it measured. `measure` measures one probe's job (by default in a measuring
    process, ProcessProber); `limit` overrides the memory a probe must stay within (by default the budget on a
    CPU, the device's memory on a GPU); `on_probe` hears of each probe as it is measured."""

    def __init__(
        self,
        request: CapacityRequest,
        *,
        measure: Callable[[CellJob], Measured] | None = None,
        limit: MemoryLimit | None = None,
        on_probe: Callable[[Search, Probe], None] | None = None,
    ) -> None:
        from kvbench.core.devices import compute_capability, is_gpu, resolve_device
        from kvbench.measure.loading import parameter_count
        from kvbench.measure.models import prepare_model, resolve_dtype

        _check(request)
        self.request = request
        self.on_probe = on_probe
        self.output = _checked_output(request.output, request.force)
        config = capacity_config(request)
        device = resolve_device(config.device)
        # A sampling process beside each measuring one reads a GPU's memory through NVML; a CPU's peak RSS is the
        # measuring process's own.
        config.memory_sampling = is_gpu(device)
        self.config, self.device = config, device
        self.limit = limit if limit is not None else _limit_for(device, request.memory_budget)
        prepared = prepare_model(
            request.model, config.weights, trust_remote_code=config.trust_remote_code, revision=config.revision
        )
        positions = prepared.max_positions
        new_tokens = request.max_new_tokens
        self.most_context = _most_context(request, positions)
        # The longest prompt the model takes with the new tokens after it.
        self.prompt_limit = positions - new_tokens if positions is not None else None
        self.context = _context(request, positions, prepared.name)
        dtype = resolve_dtype(config.dtype[0], prepared.resolved.config, device, compute_capability(device))
        parameters = parameter_count(prepared)
        weights = parameters * BYTES_PER_ELEMENT[dtype]
        limit = self.limit
        memory = limit.memory_bytes
        what = "--memory-budget" if limit.budget_bytes is not None else f"{device}'s memory"
        if weights >= memory:
            raise KvbenchError(
                f"{what} ({format_bytes(memory)}) is not more than {prepared.name}'s weights alone ({parameters:,}"
                f" parameters x {BYTES_PER_ELEMENT[dtype]} bytes in {dtype} = {format_bytes(weights)}); give a"
                " larger --memory-budget, a smaller --dtype or a smaller model"
            )
        self.measure = measure or ProcessProber()
        self.report = CapacityReport(
            model=prepared.name,
            device=device,
            dtype=dtype,
            max_new_tokens=new_tokens,
            memory_bytes=memory,
            memory_source=(
                f"--memory-budget {format_bytes(memory)}" if limit.budget_bytes is not None else f"{device}'s memory"
            ),
            budget_bytes=limit.budget_bytes,
            out_of_memory_decides=limit.device_bytes is not None,
            weight_bytes=weights,
            parameters=parameters,
            position_limit=positions,
            command=request.command,
            kvbench_version=__version__,
            created=datetime.now().astimezone().isoformat(timespec="seconds"),
            notes=list(prepared.notes),
        )

    def run(self) -> CapacityReport:
        """Every search of every cache implementation, in order; the report is written after each probe."""
        try:
            for base in expand(self.config):
                for find in self.request.find:
                    self._search(base, find)
            self.report.complete = True
            self._save()
        except BaseException:
            # Ctrl-C or a failure: no measuring process outlives the command; what was measured is written.
            kill = getattr(self.measure, "kill", None)
            if kill is not None:
                kill()
            raise
        close = getattr(self.measure, "close", None)
        if close is not None:
            close()
        return self.report

    def _search(self, base: Cell, find: str) -> Search:
        request, new_tokens = self.request, self.request.max_new_tokens
        if find == CONTEXT:
            run = Search(base.cache_name, CONTEXT, 1, None, CONTEXT_START, self.most_context[0], self.most_context[1])
        else:
            most = request.most_batch
            run = Search(base.cache_name, BATCH, None, self.context, BATCH_START, most, f"--most-batch {most:,}")
        self.report.searches.append(run)
        fitted: dict[int, CellResult] = {}

        def probe(value: int) -> Probe:
            if find == CONTEXT:
                cell = replace(base, prompt_tokens=value, batch_size=1)
            else:
                cell = replace(base, prompt_tokens=self.context, batch_size=value)
            job = CellJob(self.config, cell, runs=1, sweep=True, compare_outputs=False)
            measured = self.measure(job)
            result = Probe(
                value=value,
                fits=self.limit.fits(measured),
                peak_bytes=measured.peak_bytes,
                peak_source=measured.peak_source,
                out_of_memory=measured.out_of_memory,
                failure=measured.failure,
                pid=measured.pid,
                kv_cache_bytes=measured.cell.kv_cache_measured_bytes if measured.cell is not None else None,
                seconds=round(measured.seconds, 3) if measured.seconds is not None else None,
            )
            if result.fits and measured.cell is not None:
                fitted[value] = measured.cell
            self.report.processes_started = getattr(self.measure, "started", self.report.processes_started)
            return result

        def probed(result: Probe) -> None:
            self._save()
            if self.on_probe is not None:
                self.on_probe(run, result)

        search(run, probe, request.resolution, probed)
        self._extrapolate(run, fitted.get(run.largest) if run.largest is not None else None, new_tokens)
        self._save()
        return run

    def _extrapolate(self, run: Search, cell: CellResult | None, new_tokens: int) -> None:
        """The what-fits figure for the same memory, from the largest probe that fit: its cache's measured bytes
        and its model's recorded sizes (kvbench.analysis.footprint)."""
        if cell is None:
            run.estimate_missing = "no probe fit, so the cache was never measured"
            return
        fitted = what_fits(cell, (self._extrapolation_memory(),), self.config.quantized_residual_length)
        if isinstance(fitted, Missing):
            run.estimate_missing = fitted.reason
            return
        (fit,) = fitted.fits
        if run.find == BATCH:
            run.estimate = fit.largest_batch
            return
        # In prompt tokens, as the search counts them: the cache holds the prompt and all new tokens but the last.
        prompt = max(fit.longest_context - (new_tokens - 1), 0)
        if self.prompt_limit is not None and (prompt >= self.prompt_limit or fitted.limited_by_model):
            prompt, run.estimate_at_limit = self.prompt_limit, True
        run.estimate = prompt

    def _extrapolation_memory(self) -> int:
        """The memory the what-fits count is solved against: a GPU's, or the budget; on a CPU the budget less
        what the measuring process held before it loaded the model (the interpreter, torch and transformers),
        which a peak RSS includes and the count does not."""
        report = self.report
        baseline = getattr(self.measure, "baseline_bytes", None)
        memory = report.memory_bytes
        if not report.out_of_memory_decides and isinstance(baseline, int) and 0 < baseline < memory:
            report.process_baseline_bytes = baseline
            memory -= baseline
        report.extrapolated_for_bytes = memory
        return memory

    def _save(self) -> None:
        if self.output is not None:
            from kvbench.storage.writer import write_document

            write_document(self.report.document(), self.output)


def _check(request: CapacityRequest) -> None:
    """The request's own numbers and names, before anything is loaded."""
    for name, value in (
        ("--max-new-tokens", request.max_new_tokens),
        ("--context", request.context),
        ("--most-context", request.most_context),
        ("--most-batch", request.most_batch),
    ):
        if value is not None and value < 1:
            raise KvbenchError(f"{name} must be at least 1, not {value}")
    unknown = [find for find in request.find if find not in SEARCHES]
    if unknown:
        raise KvbenchError(f"--find cannot be {unknown[0]!r}; use context, batch, or both")
    if not 0 <= request.resolution < 1:
        raise KvbenchError(f"--resolution must be a share from 0 up to 1 (0.015625 is 1/64), not {request.resolution}")


def default_output(model: str) -> Path:
    """Where a capacity report goes without --output: a folder of its own under results/, so `compare results/`
    and the run estimate, which read the results files there, never take it for one."""
    name = model.replace("/", "_").lstrip(".") or "model"
    return Path("results") / "capacity" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def _checked_output(output: Path | None, force: bool) -> Path | None:
    """Where the report goes, checked before anything is measured: a .json that can be written and that is not
    there already, unless --force."""
    if output is None:
        return None
    from kvbench.storage.writer import check_writable

    path = check_writable(output)
    if path.exists() and not force:
        raise KvbenchError(f"{path} exists; kvbench capacity replaces a file only with --force, or choose another --output")
    return path


def _most_context(request: CapacityRequest, positions: int | None) -> tuple[int, str]:
    """The longest prompt the context search may probe, and what sets it: the model's position limit less the
    new tokens, or --most-context where lower."""
    allowed = positions - request.max_new_tokens if positions is not None else MOST_TOKENS
    if allowed < 1:
        raise KvbenchError(
            f"{request.model} takes {positions} positions, no more than --max-new-tokens {request.max_new_tokens}"
            " alone; use fewer new tokens"
        )
    reason = f"the model's limit of {positions:,} positions" if positions is not None else "kvbench's longest prompt"
    if request.most_context is not None and request.most_context < allowed:
        return request.most_context, f"--most-context {request.most_context:,}"
    return allowed, reason


def _context(request: CapacityRequest, positions: int | None, name: str) -> int:
    """The prompt the batch search runs at: --context, checked against the model's position limit."""
    new_tokens = request.max_new_tokens
    if request.context is None:
        return min(DEFAULT_CONTEXT, positions - new_tokens) if positions is not None else DEFAULT_CONTEXT
    if positions is not None and request.context + new_tokens > positions:
        raise KvbenchError(
            f"--context {request.context:,} and {new_tokens} new tokens are beyond {name}'s limit of {positions:,}"
            f" positions; use --context {positions - new_tokens:,} or less"
        )
    return request.context


def _limit_for(device: str, budget: int | None) -> MemoryLimit:
    """The memory a probe must stay within on `device`: a CPU needs a budget (its own memory is shared and
    swaps); a GPU's is the device's, and a budget too where one is given."""
    from kvbench.core.devices import is_gpu

    if is_gpu(device):
        from kvbench.hardware.environment import device_memory_bytes

        return MemoryLimit(budget, device_memory_bytes(device))
    if budget is None:
        raise KvbenchError(
            "kvbench capacity on a CPU needs --memory-budget SIZE, the most memory one generation's process may"
            " take (its peak RSS), such as --memory-budget 4GiB"
        )
    return MemoryLimit(budget)
