"""Match measurements across results files and judge each against a baseline. No torch, no display."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from kvbench.config import Cell
from kvbench.errors import KvbenchError
from kvbench.results import BenchmarkResult, ModeSummary, read_result
from kvbench.stats import RatioTest, compare_means

ALPHA = 0.05
# Settings that, when they differ between files, make a comparison less like-for-like: say so.
CONFIG_CHECKS = ("prompt", "prompt_tokens", "weights", "warmup", "seed")
ENVIRONMENT_CHECKS = ("device_name", "torch", "transformers", "gpu_driver", "cuda_version")


@dataclass(frozen=True)
class MeasurementKey:
    """What a measurement measured: a cell (its dtype as it resolved) and a mode. Measurements with equal
    keys are compared across files."""

    cell: Cell
    mode: str

    @property
    def model(self) -> str:
        return self.cell.model

    def label(self) -> str:
        return f"{self.cell.label()} · {self.mode}"


@dataclass
class LoadedFile:
    path: str
    label: str
    result: BenchmarkResult


@dataclass
class Entry:
    """One measurement in one file, judged against the baseline file's matching measurement."""

    summary: ModeSummary
    latencies_s: list[float]
    peak_memory_bytes: int | None
    versus_baseline: RatioTest | None = None  # None for the baseline itself
    regression: bool = False

    @property
    def change_pct(self) -> float | None:
        test = self.versus_baseline
        return (test.ratio - 1) * 100 if test is not None else None


@dataclass
class Row:
    key: MeasurementKey
    entries: list[Entry | None]  # one per file, None where the file lacks it
    speedups: list[float | None] = field(default_factory=list)  # cached over uncached, per file


@dataclass
class Comparison:
    files: list[LoadedFile]
    baseline: int
    rows: list[Row]
    warnings: list[str]
    threshold_pct: float | None

    @property
    def regressions(self) -> list[tuple[Row, int]]:
        return [
            (row, index)
            for row in self.rows
            for index, entry in enumerate(row.entries)
            if entry is not None and entry.regression
        ]


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; a directory stands for the results .json files directly inside it."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.glob("*.json") if not p.name.startswith("."))
            if not inside:
                raise KvbenchError(f"{path} holds no .json results files; pass files or another directory")
            found.extend(inside)
        else:
            found.append(path)
    return found


def _labels(paths: list[Path]) -> list[str]:
    names = [path.stem for path in paths]
    if len(set(names)) == len(names):
        return names
    return [str(path) for path in paths]


def _measurements(result: BenchmarkResult) -> dict[MeasurementKey, Entry]:
    found = {}
    for cell in result.cells:
        resolved = replace(cell.settings, dtype=(cell.model or {}).get("dtype", cell.settings.dtype))
        for mode in result.modes:
            summary = result.summary_of(cell.id, mode)
            if summary is None:
                continue
            key = MeasurementKey(resolved, mode)
            latencies = [run.latency_s for run in result.runs_of(cell.id, mode)]
            found[key] = Entry(summary, latencies, summary.peak_memory()[0])
    return found


def _differences(files: list[LoadedFile]) -> list[str]:
    warnings = []
    for section, keys in (("config", CONFIG_CHECKS), ("environment", ENVIRONMENT_CHECKS)):
        for key in keys:
            values = [getattr(f.result, section).get(key) for f in files]
            if len({repr(v) for v in values}) > 1:
                shown = ", ".join(f"{f.label}: {v!r}" for f, v in zip(files, values))
                warnings.append(f"{section} '{key}' differs ({shown})")
    for loaded in files:
        if not loaded.result.complete:
            warnings.append(f"{loaded.label} is incomplete (an interrupted run): compared on the runs it holds")
    return warnings


def _align(
    base: dict[MeasurementKey, Entry], other: dict[MeasurementKey, Entry], label: str
) -> tuple[dict[MeasurementKey, MeasurementKey], list[str]]:
    """Map another file's keys onto the baseline's: the same measurement where there is one, else the only
    unmatched measurement of the same model and mode (a rerun at another length, say), with a warning."""
    mapping = {key: key for key in other if key in base}
    spare_base = [key for key in base if key not in other]
    spare_other = [key for key in other if key not in base]
    warnings = []
    for key in spare_other:
        kind = (key.model, key.mode)
        candidates = [k for k in spare_base if (k.model, k.mode) == kind]
        if len(candidates) == 1 and sum((k.model, k.mode) == kind for k in spare_other) == 1:
            target = candidates[0]
            mapping[key] = target
            differs = ", ".join(
                f"{item.name} {getattr(key.cell, item.name)} vs {getattr(target.cell, item.name)}"
                for item in fields(Cell)
                if getattr(key.cell, item.name) != getattr(target.cell, item.name)
            )
            warnings.append(f"{key.model} {key.mode} in {label} compared although {differs}")
    return mapping, warnings


def compare_results(
    paths: list[str | Path], baseline: str | None = None, threshold_pct: float | None = None
) -> Comparison:
    expanded = expand_paths(paths)
    if len(expanded) < 2:
        raise KvbenchError("compare needs at least two results files; pass two files or a directory of them")
    files = [
        LoadedFile(str(path), label, read_result(path))
        for path, label in zip(expanded, _labels(expanded))
    ]
    base_index = _baseline_index(files, baseline)
    measured = [_measurements(f.result) for f in files]
    base = measured[base_index]
    warnings = _differences(files)
    # Each row is a baseline measurement, or one that no baseline measurement matches.
    row_keys = list(base)
    placed: list[dict[MeasurementKey, MeasurementKey]] = []
    for index, found in enumerate(measured):
        if index == base_index:
            mapping = {key: key for key in found}
        else:
            mapping, notes = _align(base, found, files[index].label)
            warnings += notes
        for key in found:
            if key not in mapping:
                mapping[key] = key
                if key not in row_keys:
                    row_keys.append(key)
        placed.append(mapping)
    rows = []
    for row_key in row_keys:
        entries: list[Entry | None] = []
        speedups: list[float | None] = []
        for loaded, found, mapping in zip(files, measured, placed):
            own = next((key for key, target in mapping.items() if target == row_key), None)
            entry = found[own] if own is not None else None
            entries.append(entry)
            speedups.append(loaded.result.speedup(entry.summary.cell) if entry is not None else None)
        base_entry = entries[base_index]
        for index, entry in enumerate(entries):
            if entry is None or base_entry is None or index == base_index:
                continue
            entry.versus_baseline = compare_means(entry.latencies_s, base_entry.latencies_s)
            entry.regression = (
                threshold_pct is not None
                and (entry.change_pct or 0.0) > threshold_pct
                and entry.versus_baseline.significant(ALPHA)
            )
        if base_entry is None:
            warnings.append(f"{row_key.label()}: not in the baseline {files[base_index].label}; shown, not judged")
        else:
            missing = [files[i].label for i, entry in enumerate(entries) if entry is None]
            if missing:
                warnings.append(f"{row_key.label()}: missing from {', '.join(missing)}")
        rows.append(Row(row_key, entries, speedups))
    if not rows:
        raise KvbenchError("none of these files holds a finished measurement; rerun kvbench run")
    return Comparison(files, base_index, rows, warnings, threshold_pct)


def _baseline_index(files: list[LoadedFile], baseline: str | None) -> int:
    if baseline is None:
        return 0
    for index, loaded in enumerate(files):
        if baseline in (loaded.label, loaded.path) or Path(baseline).resolve() == Path(loaded.path).resolve():
            return index
    raise KvbenchError(
        f"--baseline {baseline} is not among the files compared; give one of them"
        f" ({', '.join(f.label for f in files)})"
    )
