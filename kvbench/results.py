"""The results file: dataclasses, schema version, atomic JSON + CSV writing, reading and validation.

Schema history (the reader accepts every version listed):
  1 - first version: environment, config, cells, runs, summary.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.stats import outlier_indices, summarize

SCHEMA_VERSION = 1
FORMAT_NAME = "kvbench-results"
MEMORY_FIELDS = (
    "peak_rss_bytes",
    "torch_peak_allocated_bytes",
    "torch_peak_reserved_bytes",
    "vram_device_baseline_bytes",
    "vram_device_peak_bytes",
    "vram_process_peak_bytes",
)


@dataclass
class RunRecord:
    """One measured generate() call."""

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
    peak_rss_bytes: int | None = None
    torch_peak_allocated_bytes: int | None = None
    torch_peak_reserved_bytes: int | None = None
    vram_device_baseline_bytes: int | None = None
    vram_device_peak_bytes: int | None = None
    vram_process_peak_bytes: int | None = None
    vram_samples: int | None = None
    # With a model spread over several GPUs: the memory figures of each device.
    per_device: dict[str, dict[str, int | None]] | None = None


@dataclass
class CellResult:
    """One sweep point: its settings, what was loaded, its state, and what the two modes generated."""

    id: str
    settings: dict[str, Any]
    # "pending" (not started), "incomplete" (interrupted), "measured", or not measurable: "skipped",
    # "oom", "error", with the reason.
    status: str = "pending"
    reason: str | None = None
    model: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    prompt_source: str | None = None  # "tokenized" or "synthetic"
    kv_cache_bytes: int | None = None  # theoretical, at prompt + new tokens, for the whole batch
    outputs_match: bool | None = None
    first_divergence: int | None = None  # index of the first new token that differs between modes
    stop_reason: str | None = None  # with --target-rse: why measuring stopped where it did


@dataclass
class ModeSummary:
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
    peak_rss_bytes: int | None
    torch_peak_allocated_bytes: int | None
    torch_peak_reserved_bytes: int | None
    vram_device_baseline_bytes: int | None
    vram_device_peak_bytes: int | None
    vram_process_peak_bytes: int | None
    outlier_runs: list[int] = field(default_factory=list)  # `run` numbers with outlying latency

    def peak_memory(self) -> tuple[int | None, str]:
        """The most specific peak memory figure and its source: this process's VRAM (NVML), the whole
        device's VRAM (NVML), torch's CUDA allocator, or, on a CPU, the process's resident memory."""
        for value, source in (
            (self.vram_process_peak_bytes, "process VRAM"),
            (self.vram_device_peak_bytes, "device VRAM"),
            (self.torch_peak_reserved_bytes, "torch reserved"),
            (self.peak_rss_bytes, "RSS"),
        ):
            if value is not None:
                return value, source
        return None, ""


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
    summary: list[ModeSummary] = field(default_factory=list)

    def cell(self, cell_id: str) -> CellResult:
        return next(cell for cell in self.cells if cell.id == cell_id)

    def runs_of(self, cell_id: str, mode: str) -> list[RunRecord]:
        return [run for run in self.runs if run.cell == cell_id and run.mode == mode]

    def summary_of(self, cell_id: str, mode: str) -> ModeSummary | None:
        return next((s for s in self.summary if s.cell == cell_id and s.mode == mode), None)

    def speedup(self, cell_id: str) -> float | None:
        """How many times faster cached generation was than uncached in a cell, by mean latency."""
        cached, uncached = self.summary_of(cell_id, "cached"), self.summary_of(cell_id, "uncached")
        if cached is None or uncached is None:
            return None
        return uncached.mean_s / cached.mean_s


def token_gaps_ms(token_times_s: list[float], first: float, last: float) -> float | None:
    """Median gap between consecutive tokens over a fraction [first, last) of the generation."""
    gaps = [b - a for a, b in zip(token_times_s, token_times_s[1:])]
    if len(gaps) < 2:
        return None
    start, stop = int(len(gaps) * first), max(int(len(gaps) * last), int(len(gaps) * first) + 1)
    return statistics.median(gaps[start:stop]) * 1000


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _max_or_none(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize_mode(cell: str, mode: str, runs: list[RunRecord]) -> ModeSummary:
    latencies = [run.latency_s for run in runs]
    latency = summarize(latencies)
    ttft = [run.time_to_first_token_s for run in runs if run.time_to_first_token_s is not None]
    memory = {name: _max_or_none([getattr(run, name) for run in runs]) for name in MEMORY_FIELDS}
    # The baseline is what was in use before the run: the smallest is the fairest "before".
    baselines = [r.vram_device_baseline_bytes for r in runs if r.vram_device_baseline_bytes is not None]
    memory["vram_device_baseline_bytes"] = min(baselines) if baselines else None
    return ModeSummary(
        cell=cell,
        mode=mode,
        n=latency.n,
        mean_s=latency.mean,
        std_s=latency.std,
        min_s=latency.min,
        median_s=latency.median,
        max_s=latency.max,
        tokens_per_s=sum(r.new_tokens * r.batch_size for r in runs) / sum(r.latency_s for r in runs),
        time_to_first_token_s=statistics.fmean(ttft) if ttft else None,
        early_token_ms=_median_or_none([token_gaps_ms(r.token_times_s, 0.0, 0.1) for r in runs]),
        late_token_ms=_median_or_none([token_gaps_ms(r.token_times_s, 0.9, 1.0) for r in runs]),
        **memory,
        outlier_runs=[runs[i].run for i in outlier_indices(latencies)],
    )


def summarize_result(result: BenchmarkResult) -> list[ModeSummary]:
    summaries = []
    for cell in result.cells:
        for mode in result.config.get("modes", []):
            runs = result.runs_of(cell.id, mode)
            if runs:
                summaries.append(summarize_mode(cell.id, mode, runs))
    return summaries


def to_dict(result: BenchmarkResult) -> dict[str, Any]:
    data = asdict(result)
    # Readers find the format and version first when they open the file.
    head = {"format": FORMAT_NAME, "schema_version": data.pop("schema_version")}
    return {**head, **data}


def runs_frame(result: BenchmarkResult):
    """The runs as a pandas DataFrame, one row per measured generate(), without the nested per-token
    times and per-device memory (those are in the JSON file)."""
    import pandas as pd

    nested = ("token_times_s", "per_device")
    rows = [{k: v for k, v in asdict(run).items() if k not in nested} for run in result.runs]
    columns = [f.name for f in fields(RunRecord) if f.name not in nested]
    return pd.DataFrame(rows, columns=columns)


def _write_atomically(path: Path, write: Any) -> None:
    """Write beside the target and rename over it, so a reader (or a Ctrl-C) never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def csv_path_for(path: Path) -> Path:
    return path.with_suffix(".csv")


def write_result(result: BenchmarkResult, path: str | Path) -> None:
    """Write the JSON file and the CSV of runs beside it; the summary is recomputed from the runs."""
    path = Path(path)
    result.summary = summarize_result(result)
    data = to_dict(result)
    _write_atomically(path, lambda handle: json.dump(data, handle, indent=2))
    frame = runs_frame(result)
    _write_atomically(csv_path_for(path), lambda handle: frame.to_csv(handle, index=False))


def check_writable(path: str | Path) -> Path:
    """Fail before measuring, not after, when the results cannot be saved."""
    path = Path(path)
    if path.is_dir():
        raise KvbenchError(f"output {path} is a directory; give a file name such as {path}/run.json")
    if path.suffix != ".json":
        raise KvbenchError(f"output {path} must end in .json (the runs' CSV is written beside it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".kvbench-write-check-"):
            pass
    except OSError as error:
        raise KvbenchError(
            f"cannot write results to {path} ({error.strerror}); choose another --output"
        ) from None
    return path


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in known})


def from_dict(data: Any, origin: str = "results") -> BenchmarkResult:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise KvbenchError(
            f"{origin} is not a kvbench results file (no \"format\": \"{FORMAT_NAME}\"); pass a file"
            " written by kvbench run"
        )
    version = data.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise KvbenchError(f"{origin} has no valid schema_version; it is not a kvbench results file")
    if version > SCHEMA_VERSION:
        raise KvbenchError(
            f"{origin} uses results schema {version}, newer than this kvbench reads ({SCHEMA_VERSION});"
            " upgrade kvbench"
        )
    try:
        result = _build(BenchmarkResult, data)
        result.cells = [_build(CellResult, cell) for cell in data["cells"]]
        result.runs = [_build(RunRecord, run) for run in data["runs"]]
        result.summary = [_build(ModeSummary, s) for s in data.get("summary", [])]
        if not isinstance(result.config, dict) or not isinstance(result.environment, dict):
            raise TypeError("config and environment must be objects")
    except (KeyError, TypeError) as error:
        raise KvbenchError(
            f"{origin} is a damaged kvbench results file ({error}); rerun kvbench run to replace it"
        ) from None
    check_run_times(result.runs, origin)
    return result


def check_run_times(runs: list[RunRecord], origin: str) -> None:
    """Refuse times no generate() can take (NaN, infinite, zero or negative, a first token after the
    end): judged, they would print "+nan%" or "-332% faster" instead of failing."""
    for run in runs:
        times = {"latency_s": run.latency_s, "time_to_first_token_s": run.time_to_first_token_s}
        for name, value in times.items():
            if value is None and name == "time_to_first_token_s":
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise KvbenchError(
                    f"{origin}: run {run.run} of {run.mode} in cell {run.cell!r} has {name} {value!r}, not a"
                    " finite positive number of seconds; the file is damaged, rerun kvbench run"
                )
        if run.time_to_first_token_s is not None and run.time_to_first_token_s > run.latency_s:
            raise KvbenchError(
                f"{origin}: run {run.run} of {run.mode} in cell {run.cell!r} has its first token after its"
                " end (time_to_first_token_s > latency_s); the file is damaged, rerun kvbench run"
            )


def read_result(path: str | Path) -> BenchmarkResult:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvbenchError(f"{path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KvbenchError(f"{path} cannot be read ({error}); pass a kvbench results .json file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise KvbenchError(
            f"{path} is not JSON ({error.msg} at line {error.lineno}); pass a kvbench results .json file"
        ) from None
    return from_dict(data, str(path))
