"""The results file: dataclasses, schema version, atomic JSON + CSV writing, reading and validation.

Schema history (the reader accepts every version listed):
  1 - first version: environment, config, cells, runs, summary.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kvbench.config import Cell
from kvbench.errors import KvbenchError
from kvbench.memory import MemoryFigures

SCHEMA_VERSION = 1
FORMAT_NAME = "kvbench-results"


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
    # (end-to-end - first token) / (new tokens - 1): the mean time per token after the first (TPOT).
    time_per_output_token_s: float | None = None
    energy_j: float | None = None  # the device's (or CPU package's) energy over the run; None: see unmeasured
    # [seconds since the run's start, bytes], at most ~100 readings: VRAM on a GPU, RSS on a CPU.
    memory_timeline: list[list[float]] | None = None
    memory_timeline_source: str | None = None
    # [new token position, bytes torch had allocated] every few tokens, on a CUDA device only.
    allocated_by_position: list[list[int]] | None = None


@dataclass
class CellResult:
    """One sweep point: its settings, what was loaded, its state, and what the two modes generated."""

    settings: Cell
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
    generated_text: dict[str, str] | None = None  # each mode's first measured output, where there is a tokenizer
    # The cache object of the first measured cached run, its tensors' bytes walked (kvsize), beside the
    # theory at the positions it actually holds (prompt + new - 1: the last token is never fed back).
    kv_cache_measured_bytes: int | None = None
    kv_cache_positions: int | None = None
    kv_cache_theory_bytes: int | None = None
    kv_cache_class: str | None = None
    kv_cache_agrees: bool | None = None  # within 1%
    kv_cache_note: str | None = None  # why measured and theory may differ, or why nothing was measured

    @property
    def id(self) -> str:
        return self.settings.id

    def label(self) -> str:
        """The cell's short name, with the dtype it actually ran in when "auto" was asked for."""
        return self.settings.label((self.model or {}).get("dtype"))


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
    # Serving metrics (kvbench.metrics; vLLM's definitions): percentiles over runs, ITL over every gap.
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_mean_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p99_s: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    energy_j_per_token: float | None = None  # mean over runs with an energy reading


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

    def cell(self, cell_id: str) -> CellResult:
        return next(cell for cell in self.cells if cell.id == cell_id)

    def runs_of(self, cell_id: str, mode: str) -> list[RunRecord]:
        return [run for run in self.runs if run.cell == cell_id and run.mode == mode]

    def summary_of(self, cell_id: str, mode: str) -> ModeSummary | None:
        from kvbench.stats import summarize_mode

        runs = self.runs_of(cell_id, mode)
        return summarize_mode(cell_id, mode, runs) if runs else None

    @property
    def summary(self) -> list[ModeSummary]:
        """Every cell's modes, summarised from the runs."""
        found = (self.summary_of(cell.id, mode) for cell in self.cells for mode in self.modes)
        return [summary for summary in found if summary is not None]

    def speedup(self, cell_id: str) -> float | None:
        """How many times faster cached generation was than uncached in a cell, by mean latency."""
        cached, uncached = self.summary_of(cell_id, "cached"), self.summary_of(cell_id, "uncached")
        if cached is None or uncached is None:
            return None
        return uncached.mean_s / cached.mean_s

    def runs_frame(self):
        """The runs as a pandas DataFrame, one row per measured generate(), without the nested per-token
        times and per-device memory (those are in the JSON file)."""
        import pandas as pd

        nested = ("token_times_s", "per_device", "memory_timeline", "allocated_by_position")
        own = [f.name for f in fields(RunRecord) if f.name not in MemoryFigures.names() and f.name not in nested]
        columns = own + list(MemoryFigures.names())
        return pd.DataFrame([{name: getattr(run, name) for name in columns} for run in self.runs], columns=columns)

    def summary_frame(self):
        """The per-cell, per-mode summary as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(summary) for summary in self.summary])


def to_dict(result: BenchmarkResult) -> dict[str, Any]:
    data = asdict(result)
    # Each cell's id first, as the runs refer to it; the summary for readers that do not recompute it
    # (kvbench itself always does).
    data["cells"] = [{"id": cell.id, **stored} for cell, stored in zip(result.cells, data["cells"])]
    data["summary"] = [asdict(summary) for summary in result.summary]
    # Like the summary, computed from the rest of the file and written for other readers.
    from kvbench.explain import explain_result

    data["explained"] = explain_result(result).to_dict()
    # Readers find the format and version first when they open the file.
    head = {"format": FORMAT_NAME, "schema_version": data.pop("schema_version")}
    return {**head, **data}


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
    """Write the results JSON file, atomically."""
    data = to_dict(result)
    _write_atomically(Path(path), lambda handle: json.dump(data, handle, indent=2))


def write_runs_csv(result: BenchmarkResult, path: str | Path) -> None:
    """Write the CSV of runs beside a results file, atomically."""
    frame = result.runs_frame()
    _write_atomically(csv_path_for(Path(path)), lambda handle: frame.to_csv(handle, index=False))


class ResultsFile:
    """Where one run keeps its results: checked before measuring, then written only by `save`."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_writable(path)

    def save(self, result: BenchmarkResult, with_csv: bool = False) -> None:
        write_result(result, self.path)
        if with_csv:
            write_runs_csv(result, self.path)


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


def _cell_from_dict(data: dict[str, Any]) -> CellResult:
    cell = _build(CellResult, data)
    cell.settings = _build(Cell, data["settings"])
    return cell


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
        result.cells = [_cell_from_dict(cell) for cell in data["cells"]]
        result.runs = [_build(RunRecord, run) for run in data["runs"]]
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
