"""The measured data: each run, each cell, a benchmark's result, and each mode's summary over its runs."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, TypeVar

from kvbench.core.metrics import joules_per_token, mode_metrics, run_metrics
from kvbench.core.stats import median_gap_ms, outlier_indices, summarize
from kvbench.model.cells import SWEEP_AXES, Cell
from kvbench.model.memory_figures import MemoryFigures
from kvbench.model.modes import CACHED, UNCACHED

Derived = TypeVar("Derived")

# The results file's version (its history is in kvbench.storage.document, which reads every version).
SCHEMA_VERSION = 1


class CellState(str, Enum):
    """Where a cell stands; the states a results file may hold, written as their values."""

    PENDING = "pending"  # not started
    INCOMPLETE = "incomplete"  # started, not finished (interrupted, or being measured)
    MEASURED = "measured"
    # Not measurable, with the reason: not supported here, out of memory, failed, past --cell-timeout.
    SKIPPED = "skipped"
    OOM = "oom"
    ERROR = "error"
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        """Not measurable: its reason says why, and the cell keeps no runs but those of its measuring
        processes that finished before the failure (--processes N)."""
        return self in (CellState.SKIPPED, CellState.OOM, CellState.ERROR, CellState.TIMEOUT)

    @property
    def to_retry(self) -> bool:
        """Failed in a way another try may fix (an error, a timeout): the run did not do all it was asked."""
        return self.failed and not self.finished

    @property
    def finished(self) -> bool:
        """Kept as it is by --resume; an error or a timeout may pass on another try, so is measured again."""
        return self in (CellState.MEASURED, CellState.SKIPPED, CellState.OOM)


@dataclass
class RunRecord(MemoryFigures):
    """One measured generate() call, with the memory figures measured around it."""

    cell: str
    mode: str
    run: int
    latency_s: float
    new_tokens: int
    prompt_tokens: int
    batch_size: int
    tokens_per_s: float
    time_to_first_token_s: float | None
    # When each new token arrived, in seconds from the start of generate().
    token_times_s: list[float] = field(default_factory=list)
    # With a model spread over several GPUs: the memory figures of each device.
    per_device: dict[str, dict[str, int | None]] | None = None
    # The process that measured the run, so statistics can tell runs of one process from another's.
    host: str | None = None
    pid: int | None = None
    # (end-to-end - first token) / (new tokens - 1): the mean time per token after the first (TPOT).
    time_per_output_token_s: float | None = None
    energy_j: float | None = None  # the device's (or CPU package's) energy over the run; None: see unmeasured
    # NVML's energy counter as sampled during the run: its median step between distinct readings and the
    # time between them; energy_j can be off by up to one step (None: too few changes, or not NVML).
    energy_counter_step_j: float | None = None
    energy_counter_period_s: float | None = None
    # The SM clock while the run was timed (min, median; the GPU's max and application clocks; the clock
    # event reasons NVML gave; the samples): kvbench.hardware.gpu_clocks. None off a GPU.
    gpu_clocks: dict[str, Any] | None = None
    # [seconds since the run's start, bytes], at most ~100 readings: VRAM on a GPU, RSS on a CPU.
    memory_timeline: list[list[float]] | None = None
    memory_timeline_source: str | None = None
    # [new token position, bytes torch had allocated] every few tokens, on a CUDA device only.
    allocated_by_position: list[list[int]] | None = None
    # The prompt tokens the first step computed, over the batch, where not prompt_tokens x batch_size: the
    # real tokens of a ragged batch (not its padding), the tokens after a reused prefix.
    prefill_tokens: int | None = None
    # The prefix mode: seconds copying the shared prefix's cache for this generation, within latency_s and
    # time_to_first_token_s (a request's copy is part of what it costs).
    prefix_copy_s: float | None = None


@dataclass
class CellResult:
    """One sweep point: its settings, what was loaded, its state, and what the two modes generated."""

    settings: Cell
    status: CellState = CellState.PENDING
    reason: str | None = None
    model: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    prompt_source: str | None = None  # "tokenized" or "synthetic"
    kv_cache_bytes: int | None = None  # theoretical, at prompt + new tokens, for the whole batch
    outputs_match: bool | None = None
    first_divergence: int | None = None  # index of the first new token that differs between modes
    stop_reason: str | None = None  # with --target-rse: why measuring stopped where it did
    generated_text: dict[str, str] | None = None  # each mode's first measured output, where there is a tokenizer
    # Where it was measured: launcher, host, the measuring processes' ids, devices, and each GPU's name,
    # UUID and driver.
    ran_on: dict[str, Any] | None = None
    # The cache object of the first measured cached run, its tensors' bytes walked (kvsize), beside the
    # theory at the positions it actually holds (prompt + new - 1: the last token is never fed back).
    kv_cache_measured_bytes: int | None = None
    kv_cache_positions: int | None = None
    kv_cache_theory_bytes: int | None = None
    kv_cache_class: str | None = None
    kv_cache_agrees: bool | None = None  # within 1%
    kv_cache_note: str | None = None  # why measured and theory may differ, or why nothing was measured
    # The measured bytes by the device holding them: an offloaded cache keeps most layers on the CPU.
    kv_cache_bytes_by_device: dict[str, int] | None = None
    # A cache implementation other than the dynamic one against the dynamic cache, on the same model and
    # prompt, from untimed passes after the timed runs: the share of greedy new tokens (over the batch) that
    # agree and the first position where they differ; then, with both fed the dynamic cache's tokens, so
    # every position has the same prefix, the share of positions whose most likely next token agrees and the
    # mean KL divergence KL(dynamic || this cache) of the next-token distributions, in nats.
    agreement_token_share: float | None = None
    agreement_first_divergence: int | None = None
    agreement_top1_share: float | None = None
    agreement_kl_mean_nats: float | None = None
    agreement_note: str | None = None  # why the agreement was not measured
    # Seconds each phase of measuring the cell took (kvbench.model.phases); a phase another cell paid for it
    # (a measuring process it reused) is absent.
    phases_s: dict[str, float] | None = None
    # Each row's prompt length in real tokens, and the share of the padded batch's prompt positions that are
    # padding: a ragged batch (--ragged, --prompts) only.
    prompt_tokens_by_row: list[int] | None = None
    padding_share: float | None = None
    # The prefix mode: the bytes of the shared prefix's cache held between generations (computed once, one
    # row's, widened to the batch by each copy), and its first measured output against the cached mode's.
    prefix_cache_bytes: int | None = None
    prefix_outputs_match: bool | None = None
    prefix_first_divergence: int | None = None

    @property
    def id(self) -> str:
        return self.settings.id

    def label(self) -> str:
        """The cell's short name, with the dtype it actually ran in when "auto" was asked for."""
        return self.settings.label((self.model or {}).get("dtype"))


def _serving(distribution: str | None = None, percentile: int | None = None) -> Any:
    """A serving metric (kvbench.core.metrics, vLLM's definitions): the mean, or the given percentile, of one of
    a mode's distributions (a ModeMetrics field); `distribution` None for a figure computed on its own."""
    statistic = "mean" if percentile is None else f"p{percentile}"
    return field(default=None, metadata={"serving": True, "distribution": distribution, "statistic": statistic})


@dataclass
class ModeSummary(MemoryFigures):
    """One mode of one cell over its runs; always computed from the runs, never trusted from a file."""

    cell: str
    mode: str
    n: int
    mean_s: float
    std_s: float | None
    min_s: float
    median_s: float
    max_s: float
    tokens_per_s: float
    time_to_first_token_s: float | None
    # Median gap between tokens over the first and the last tenth of the generation: flat when cached,
    # growing with position when every step recomputes the whole sequence.
    early_token_ms: float | None
    late_token_ms: float | None
    outlier_runs: list[int] = field(default_factory=list)  # `run` numbers with outlying latency
    # Serving metrics (kvbench.core.metrics; vLLM's definitions): percentiles over runs, ITL over every gap.
    # Marked so that every table of them (compare's CSV and JSON) takes the whole set.
    # Prefill and the first step.
    ttft_p50_s: float | None = _serving("ttft_s", percentile=50)
    ttft_p90_s: float | None = _serving("ttft_s", percentile=90)
    ttft_p99_s: float | None = _serving("ttft_s", percentile=99)
    # Decode: the mean per token after the first, and every gap between tokens.
    tpot_mean_s: float | None = _serving("tpot_s")
    itl_p50_s: float | None = _serving("itl_s", percentile=50)
    itl_p90_s: float | None = _serving("itl_s", percentile=90)
    itl_p99_s: float | None = _serving("itl_s", percentile=99)
    # The whole call.
    e2e_p50_s: float | None = _serving("e2e_s", percentile=50)
    e2e_p90_s: float | None = _serving("e2e_s", percentile=90)
    e2e_p99_s: float | None = _serving("e2e_s", percentile=99)
    prefill_tokens_per_s: float | None = _serving("prefill_tokens_per_s")
    decode_tokens_per_s: float | None = _serving("decode_tokens_per_s")
    decode_tokens_per_s_p50: float | None = _serving("decode_tokens_per_s", percentile=50)  # robust to one stalled run
    energy_j_per_token: float | None = _serving()  # the whole generate(), prefill included; mean over runs


SERVING_FIELDS = tuple(f.name for f in fields(ModeSummary) if f.metadata.get("serving"))


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_mode(cell: str, mode: str, runs: Sequence[RunRecord]) -> ModeSummary:
    """One mode of one cell over its runs: latency statistics, throughput, token gaps, memory, outliers."""
    latencies = [run.latency_s for run in runs]
    latency = summarize(latencies)
    ttft = [run.time_to_first_token_s for run in runs if run.time_to_first_token_s is not None]
    memory = MemoryFigures.over_runs(runs)
    serving: dict[str, Any] = serving_metrics(runs)
    return ModeSummary(
        cell=cell,
        mode=mode,
        n=latency.n,
        mean_s=latency.mean,
        std_s=latency.std,
        min_s=latency.min,
        median_s=latency.median,
        max_s=latency.max,
        tokens_per_s=sum(r.new_tokens * r.batch_size for r in runs) / sum(latencies),
        time_to_first_token_s=statistics.fmean(ttft) if ttft else None,
        early_token_ms=_median_or_none([median_gap_ms(r.token_times_s, 0.0, 0.1) for r in runs]),
        late_token_ms=_median_or_none([median_gap_ms(r.token_times_s, 0.9, 1.0) for r in runs]),
        outlier_runs=[runs[i].run for i in outlier_indices(latencies)],
        **{name: getattr(memory, name) for name in MemoryFigures.names()},
        **serving,
    )


def serving_metrics(runs: Sequence[RunRecord]) -> dict[str, float | None]:
    """ModeSummary's TTFT, TPOT, ITL, end-to-end and rate figures (kvbench.core.metrics), and energy per token.
    Empty when a run has no per-token times (a file from before they were kept): nothing to compute from."""
    figures: dict[str, float | None] = {}
    energies = [
        joules for run in runs if (joules := joules_per_token(run.energy_j, run.new_tokens, run.batch_size)) is not None
    ]
    # Every run at 0 J: each was shorter than the counter's update period, which says nothing of its energy.
    figures["energy_j_per_token"] = statistics.fmean(energies) if any(energies) else None
    try:
        metrics = mode_metrics(
            [
                # Token times are stored rounded to the microsecond: the last may read a hair past the end.
                run_metrics(
                    run.token_times_s,
                    max([run.latency_s, *run.token_times_s[-1:]]),
                    run.prompt_tokens,
                    run.batch_size,
                    run.prefill_tokens,
                )
                for run in runs
            ]
        )
    except ValueError:
        return figures
    for item in fields(ModeSummary):
        source = item.metadata.get("distribution")
        if source is not None:
            distribution = getattr(metrics, source)
            figures[item.name] = getattr(distribution, item.metadata["statistic"]) if distribution is not None else None
    return figures


@dataclass
class BenchmarkResult:
    environment: dict[str, Any]
    config: dict[str, Any]
    command: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    complete: bool = False
    kvbench_version: str = ""
    schema_version: int = SCHEMA_VERSION
    unmeasured: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cells: list[CellResult] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def modes(self) -> list[str]:
        return list(self.config.get("modes", []))

    def __post_init__(self) -> None:
        # Figures derived from the runs (summaries, explanations), kept until the runs change; not fields,
        # so never written.
        self._derived: dict[Any, Any] = {}
        self._derived_at: tuple[int, ...] | None = None

    def add_runs(self, runs: Iterable[RunRecord]) -> None:
        """Store measured runs; every figure derived from the earlier runs is recomputed when next asked."""
        self.runs.extend(runs)

    def derived(self, key: Any, compute: Callable[[], Derived]) -> Derived:
        """`compute()`, done once for these runs: a later call with the same key returns the same value until
        a run is added (or the runs are replaced)."""
        # The records' identities: adding, dropping or replacing a run, here or directly on the list, is
        # caught. A record edited in place is not (records are replaced, never edited), nor are cells or
        # environment.
        now = tuple(map(id, self.runs))
        if now != self._derived_at:
            self._derived, self._derived_at = {}, now
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def measured_nothing(self) -> bool:
        """No run recorded and no cell settled yet: what a run that stopped before measuring holds."""
        unstarted = (CellState.PENDING, CellState.INCOMPLETE)
        return not self.runs and all(cell.status in unstarted for cell in self.cells)

    def cells_to_retry(self) -> list[CellResult]:
        """The cells that errored or ran out of time: --resume measures them again."""
        return [cell for cell in self.cells if CellState(cell.status).to_retry]

    def cell(self, cell_id: str) -> CellResult:
        return next(cell for cell in self.cells if cell.id == cell_id)

    def runs_of(self, cell_id: str, mode: str) -> list[RunRecord]:
        return [run for run in self.runs if run.cell == cell_id and run.mode == mode]

    def summary_of(self, cell_id: str, mode: str) -> ModeSummary | None:
        def compute() -> ModeSummary | None:
            runs = self.runs_of(cell_id, mode)
            return summarize_mode(cell_id, mode, runs) if runs else None

        return self.derived(("summary", cell_id, mode), compute)

    @property
    def summary(self) -> list[ModeSummary]:
        """Every cell's modes, summarised from the runs."""
        found = (self.summary_of(cell.id, mode) for cell in self.cells for mode in self.modes)
        return [summary for summary in found if summary is not None]

    def speedup(self, cell_id: str) -> float | None:
        """How many times faster cached generation was than uncached in a cell, by mean latency."""
        cached, uncached = self.summary_of(cell_id, CACHED.name), self.summary_of(cell_id, UNCACHED.name)
        if cached is None or uncached is None:
            return None
        return uncached.mean_s / cached.mean_s

    def _settings_by_cell(self) -> dict[str, dict[str, Any]]:
        """Each cell's sweep settings as columns: the dtype it resolved to, the prompt length it ran with."""
        columns = {}
        for cell in self.cells:
            settings = asdict(cell.settings)
            settings["dtype"] = (cell.model or {}).get("dtype", cell.settings.dtype)
            if cell.prompt_tokens is not None:
                settings["prompt_tokens"] = cell.prompt_tokens
            columns[cell.id] = settings
        return columns

    def runs_frame(self):
        """The runs as a pandas DataFrame, one row per measured generate(): its cell, mode and number, its
        cell's settings (model, max_new_tokens, batch_size, dtype, cache_implementation, attn_implementation,
        prompt_tokens), then the run's own figures; NaN where a figure was not measured. The nested per-token times and
        per-device memory are in the JSON file only."""
        nested = ("token_times_s", "per_device", "memory_timeline", "allocated_by_position", "gpu_clocks")
        own = [f.name for f in fields(RunRecord) if f.name not in MemoryFigures.names() and f.name not in nested]
        settings = self._settings_by_cell()
        columns = [*own, *MemoryFigures.names()]
        rows = [{**settings[run.cell], **{name: getattr(run, name) for name in columns}} for run in self.runs]
        # The CSV of runs begins "cell,mode,run," as it always has: how kvbench knows a CSV for its own.
        return _frame(rows, [*own[:3], *SWEEP_AXES, *columns], _numeric_fields(Cell, RunRecord))

    def summary_frame(self):
        """One row per cell and mode: the cell and mode, the cell's settings (as in runs_frame), then the mode's summary
        (kvbench.model.records.ModeSummary's fields); NaN where a figure was not measured."""
        settings = self._settings_by_cell()
        rows = [{**settings[summary.cell], **asdict(summary)} for summary in self.summary]
        columns = ["cell", "mode", *SWEEP_AXES, *(f.name for f in fields(ModeSummary))]
        return _frame(rows, columns, _numeric_fields(Cell, ModeSummary))


def _frame(rows: list[dict[str, Any]], columns: list[str], numeric: set[str]):
    """A DataFrame with these columns in order; a column of numbers holds NaN, not None, where one is missing."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    for name in frame.columns:
        if name in numeric:
            frame[name] = pd.to_numeric(frame[name])
    return frame


def _numeric_fields(*classes: type) -> set[str]:
    """The fields declared as a number (int or float, possibly None) of these dataclasses."""
    return {item.name for cls in classes for item in fields(cls) if str(item.type).removesuffix(" | None") in ("int", "float")}
