"""Which measurements of several results files are the same one: the files read and labelled, each
measurement's key (its cell and mode), another file's measurements mapped onto the baseline's, and what
either side lacks, with the state of the cell that lacks it. No statistics, no torch, no display."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import shortened
from kvbench.model.cells import Cell
from kvbench.model.records import BenchmarkResult, CellResult, CellState

# Settings that, when they differ between files, make a comparison less like-for-like: say so.
CONFIG_CHECKS = ("prompt", "prompt_tokens", "weights", "warmup", "seed")
ENVIRONMENT_CHECKS = ("device_name", "torch", "transformers", "gpu_driver", "cuda_version")
# How much of each differing value a warning shows.
SHOWN_SETTING_CHARACTERS = 200
# Why a measurement is missing from a file that has no cell of its settings at all.
NO_SUCH_MEASUREMENT = "it has no such measurement"


@dataclass(frozen=True)
class MeasurementKey:
    """What a measurement measured: a cell (its dtype as it resolved) and a mode. Measurements with equal
    keys are compared across files."""

    cell: Cell
    mode: str
    # The dtype as the file wrote it, set only where two cells of one file resolved to the same key
    # ("auto" and "float32" on a CPU): both are kept, told apart by what was asked for.
    written_dtype: str = ""

    @property
    def model(self) -> str:
        return self.cell.model

    def label(self) -> str:
        asked = f" (asked as {self.written_dtype})" if self.written_dtype else ""
        return f"{self.cell.label()}{asked} · {self.mode}"


@dataclass
class LoadedFile:
    path: str
    label: str
    result: BenchmarkResult


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
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


def refuse_repeated_files(paths: list[Path]) -> None:
    """The same file twice would compare it with itself and find nothing: almost surely a slip."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = _real_path(path)
        if key is None:
            raise KvbenchError(f"{path} cannot be read (a loop of symbolic links); pass the results file itself")
        if key in seen:
            also = "" if seen[key] == path else f" (also as {seen[key]})"
            raise KvbenchError(f"{path} is given twice{also}; compare different results files")
        seen[key] = path


def _real_path(path: Path) -> Path | None:
    """The file a path names, its links followed; None for a loop of links (which Python before 3.13
    raises as a RuntimeError)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def named(paths: list[Path], names: Sequence[str]) -> list[str]:
    """The files' labels: the names given (`compare -n`), one per file in order, else from their paths."""
    if not names:
        return _labels(paths)
    if len(names) != len(paths):
        raise KvbenchError(f"{len(names)} name(s) given for {len(paths)} results file(s); give one --name per file, in order")
    if len(set(names)) != len(names) or not all(name.strip() for name in names):
        raise KvbenchError(f"the names must be distinct and not empty: {', '.join(map(repr, names))}")
    return list(names)


def _labels(paths: list[Path]) -> list[str]:
    names = [path.stem for path in paths]
    if len(set(names)) == len(names):
        return names
    return [str(path) for path in paths]


def unmatched_counts(files: list[LoadedFile], base_index: int, lacking: list[int], extra: list[int]) -> list[str]:
    """One line per file that shares only some cells with the baseline: how many measurements either side
    lacks, and how to list them."""
    base_label = files[base_index].label
    lines = []
    for loaded, missing, added in zip(files, lacking, extra):
        if missing or added:
            lines.append(
                f"{loaded.label}: {added} measurement(s) with no counterpart in the baseline {base_label}, and"
                f" {missing} of the baseline's with none here: shown, not judged; --verbose lists each"
            )
    return lines


def unmeasured_cell(result: BenchmarkResult, key: MeasurementKey) -> CellResult | None:
    """The file's cell for this measurement where it has no runs of its mode; None when the file has no
    such cell, or has runs."""
    for cell in result.cells:
        # The key's dtype is what the baseline resolved "auto" to; this file's cell may say "auto".
        same = replace(key.cell, dtype=cell.settings.dtype) == cell.settings and key.cell.dtype in (
            cell.settings.dtype,
            (cell.model or {}).get("dtype"),
        )
        if same and not result.runs_of(cell.id, key.mode):
            return cell
    return None


def cell_state(result: BenchmarkResult, key: MeasurementKey) -> str | None:
    """The state of the file's cell for this measurement, one with no runs of its mode; None when the file
    has no such cell."""
    cell = unmeasured_cell(result, key)
    if cell is None:
        return None
    reason = f": {cell.reason}" if cell.reason else ""
    return f"its cell is {cell.status}{reason}, with no {key.mode} runs"


def failed_everywhere(files: list[LoadedFile], base_index: int, rows: set[MeasurementKey]) -> tuple[list[str], list[str]]:
    """Baseline measurements whose cell has no runs of its mode (failed, or never reached) and that no
    compared file measured either, so that they have no row: one line each, per compared file, that the
    rows alone would never give. Not judged (the gate was asked to judge it and cannot), unless both
    files skipped the cell: a cell skipped as not measurable here is skipped every time, and is a
    warning. Returns the unjudged lines and the warnings."""
    base = files[base_index]
    unjudged: list[str] = []
    warnings: list[str] = []
    for cell in base.result.cells:
        settings = replace(cell.settings, dtype=(cell.model or {}).get("dtype", cell.settings.dtype))
        for mode in base.result.modes:
            key = MeasurementKey(settings, mode)
            if base.result.runs_of(cell.id, mode) or any(replace(row, written_dtype="") == key for row in rows):
                continue
            state = cell_state(base.result, key)
            for index, loaded in enumerate(files):
                if index == base_index:
                    continue
                here = cell_state(loaded.result, key) or NO_SUCH_MEASUREMENT
                where = f"{key.label()} in {loaded.label}"
                line = f"{where}: not measured in the baseline {base.label} ({state}), nor here ({here})"
                other = unmeasured_cell(loaded.result, key)
                both_skipped = cell.status == CellState.SKIPPED and other is not None and other.status == CellState.SKIPPED
                (warnings if both_skipped else unjudged).append(line)
    return unjudged, warnings


def differences(files: list[LoadedFile]) -> list[str]:
    warnings = []
    for section, keys in (("config", CONFIG_CHECKS), ("environment", ENVIRONMENT_CHECKS)):
        for key in keys:
            values = [getattr(f.result, section).get(key) for f in files]
            if len({repr(v) for v in values}) > 1:
                # A prompt may be a book: enough of each to tell them apart.
                shown = ", ".join(f"{f.label}: {shortened(repr(v), SHOWN_SETTING_CHARACTERS)}" for f, v in zip(files, values))
                warnings.append(f"{section} '{key}' differs ({shown})")
    for loaded in files:
        if not loaded.result.complete:
            warnings.append(f"{loaded.label} is incomplete (an interrupted run): compared on the runs it holds")
    return warnings


def align(
    base: Collection[MeasurementKey], other: Collection[MeasurementKey], label: str
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
            warnings.append(
                f"{key.model} {key.mode} in {label} compared although {differences_of(key, target)}; shown, never judged"
            )
    return mapping, warnings


def differences_of(key: MeasurementKey, target: MeasurementKey) -> str:
    """What differs between two measurements' settings, as "max_new_tokens 50 vs 100"."""
    differs = [
        f"{item.name} {getattr(key.cell, item.name)} vs {getattr(target.cell, item.name)}"
        for item in fields(Cell)
        if getattr(key.cell, item.name) != getattr(target.cell, item.name)
    ]
    if key.written_dtype != target.written_dtype:
        differs.append(f"dtype asked as {key.written_dtype or '-'} vs {target.written_dtype or '-'}")
    return ", ".join(differs)


def baseline_index(files: list[LoadedFile], baseline: str | None) -> int:
    if baseline is None:
        return 0
    named_file = _real_path(Path(baseline))
    for index, loaded in enumerate(files):
        if baseline in (loaded.label, loaded.path) or (named_file is not None and named_file == _real_path(Path(loaded.path))):
            return index
    raise KvbenchError(
        f"--baseline {baseline} is not among the files compared; give one of them ({', '.join(f.label for f in files)})"
    )
