"""The results file's document: the dictionary a result is written as, and read back from, checked.

Schema history (the reader accepts every version listed):
  1 - first version: environment, config, cells, runs, summary. The summary and explained blocks are
      derived from the runs; a save in the middle of a run leaves them out, and the reader recomputes them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import printable, read_bounded_text, shortened
from kvbench.core.version import __version__, newer_than_this
from kvbench.model.caches.quantized import QUANTIZED, QUANTIZED_NBITS
from kvbench.model.capacity import DOCUMENT_KIND as CAPACITY_KIND
from kvbench.model.cells import PARTIAL_AXES, Cell
from kvbench.model.records import SCHEMA_VERSION, BenchmarkResult, CellResult, CellState, RunRecord
from kvbench.model.settings import default_of
from kvbench.storage.validation import check_fields, check_run_times

FORMAT_NAME = "kvbench-results"
# Far above any sweep's results (a thousand-token run takes kilobytes), far below what parsing as JSON
# would need more memory for than a laptop has.
MOST_RESULTS_BYTES = 256 * 2**20
# Cell fields added since files of this schema were first written, written only where they hold something.
LATER_CELL_FIELDS = (
    "phases_s",
    "prompt_tokens_by_row",
    "padding_share",
    "prefix_cache_bytes",
    "prefix_outputs_match",
    "prefix_first_divergence",
)
LATER_RUN_FIELDS = ("prefill_tokens", "prefix_copy_s")


# Sections a document may end with, figures computed from its runs for readers that do not recompute them
# (kvbench itself always does): the reader ignores them.
DERIVED_SECTIONS = ("summary", "explained", "prefix_reuse")


def to_dict(result: BenchmarkResult, derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results file's document: what was measured, then the `derived` sections as given (summary,
    explained: kvbench.analysis.derived computes them). A run leaves them out of the saves it makes while
    measuring, so that saving stays a copy of what was measured."""
    data = asdict(result)
    # Each cell's id first, as the runs refer to it.
    data["cells"] = [{"id": cell.id, **stored} for cell, stored in zip(result.cells, data["cells"])]
    # An axis that does not apply to a cell (the bits of a cache other than the quantized one) is left out
    # of its settings, which then read as they did before the axis existed.
    for cell in data["cells"]:
        for axis in PARTIAL_AXES:
            if cell["settings"].get(axis, 0) is None:
                del cell["settings"][axis]
        # Added after files were first written: left out where it holds nothing, so such a file reads back as
        # it was written.
        for later in LATER_CELL_FIELDS:
            if cell.get(later, 0) is None:
                del cell[later]
    for run in data["runs"]:
        for later in LATER_RUN_FIELDS:
            if run.get(later, 0) is None:
                del run[later]
    for name, section in (derived or {}).items():
        if name not in DERIVED_SECTIONS:
            raise ValueError(f"{name!r} is not a derived section of a results file ({', '.join(DERIVED_SECTIONS)})")
        data[name] = section
    # Readers find the format and version first when they open the file.
    head = {"format": FORMAT_NAME, "schema_version": data.pop("schema_version")}
    return {**head, **data}


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in known})


def _cell_from_dict(data: dict[str, Any]) -> CellResult:
    cell = _build(CellResult, data)
    cell.settings = _build(Cell, data["settings"])
    cell.status = CellState(cell.status)
    return cell


def from_dict(data: Any, origin: str = "results") -> BenchmarkResult:
    if isinstance(data, dict) and data.get("kind") == CAPACITY_KIND:
        raise KvbenchError(
            f'{origin} is a kvbench capacity report, not a results file: its probes are in its "searches", and'
            " show, compare and plot read the files kvbench run writes"
        )
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise KvbenchError(
            f'{origin} is not a kvbench results file (no "format": "{FORMAT_NAME}"); pass a file written by kvbench run'
        )
    version = data.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise KvbenchError(f"{origin} has no valid schema_version; it is not a kvbench results file")
    if version > SCHEMA_VERSION:
        raise KvbenchError(
            f"{origin} uses results schema {version}, newer than this kvbench reads ({SCHEMA_VERSION}); upgrade kvbench"
        )
    data = _single_bits_as_a_list(data)
    check_fields(data, origin)
    try:
        result = _build(BenchmarkResult, data)
        result.cells = [_cell_from_dict(cell) for cell in data["cells"]]
        result.runs = [_build(RunRecord, run) for run in data["runs"]]
        if not isinstance(result.config, dict) or not isinstance(result.environment, dict):
            raise TypeError("config and environment must be objects")
    except (KeyError, TypeError) as error:
        raise KvbenchError(f"{origin} is a damaged kvbench results file ({error}); rerun kvbench run to replace it") from None
    _name_the_bits_of_quantized_cells(result)
    _refuse_repeated_cells(result.cells, origin)
    check_run_times(result.runs, origin)
    _refuse_repeated_runs(result.runs, origin)
    return result


def _single_bits_as_a_list(data: dict[str, Any]) -> dict[str, Any]:
    """A file written before quantized_nbits was a sweep axis holds its one value as a number."""
    config = data.get("config")
    if not isinstance(config, dict) or type(config.get("quantized_nbits")) is not int:
        return data
    return {**data, "config": {**config, "quantized_nbits": [config["quantized_nbits"]]}}


def _name_the_bits_of_quantized_cells(result: BenchmarkResult) -> None:
    """A quantized cell of a file written before the bits were an axis ran with the file's one value: it is
    given those bits, and its runs its new id, so it resumes and compares as the same cell measured now."""
    backend = result.config.get("quantized_backend", default_of("quantized_backend"))
    bits = result.config.get("quantized_nbits", default_of("quantized_nbits"))
    if backend not in QUANTIZED_NBITS or len(bits) != 1:
        return
    renamed = {}
    for cell in result.cells:
        if cell.settings.cache_implementation == QUANTIZED.name and cell.settings.quantized_nbits is None:
            old_id = cell.id
            cell.settings = replace(cell.settings, quantized_nbits=bits[0])
            renamed[old_id] = cell.id
    if renamed:
        result.runs = [replace(run, cell=renamed.get(run.cell, run.cell)) for run in result.runs]


def _refuse_repeated_cells(cells: list[CellResult], origin: str) -> None:
    """Two cells of one id would both claim its runs (a quantized cell without bits beside one with them)."""
    seen = set()
    for cell in cells:
        if cell.id in seen:
            raise KvbenchError(
                f"{origin} is a damaged kvbench results file: cell {printable(cell.id, one_line=True)!r} appears"
                " twice; rerun kvbench run to replace it"
            )
        seen.add(cell.id)


def _refuse_repeated_runs(runs: list[RunRecord], origin: str) -> None:
    """A run recorded twice would count twice: the statistics would claim a precision nobody measured."""
    seen = set()
    for run in runs:
        key = (run.cell, run.mode, run.run)
        if key in seen:
            raise KvbenchError(
                f"{origin}: run {run.run} of {run.mode} in cell {run.cell!r} is recorded twice; the file is"
                " damaged (edited or merged by hand), rerun kvbench run"
            )
        seen.add(key)


def read_result(path: str | Path) -> BenchmarkResult:
    path = Path(path).expanduser()
    return from_dict(_read_document(path), str(path))


def read_to_continue(path: str | Path) -> BenchmarkResult:
    """A results file that --resume is to continue, and so to rewrite: refused where the rewrite would lose
    part of it, a file a later kvbench wrote (its version, and whatever it records that this one does not
    know) or one holding fields this kvbench would drop."""
    path = Path(path).expanduser()
    data = _read_document(path)
    result = from_dict(data, str(path))
    written_by = data.get("kvbench_version")
    if newer_than_this(written_by):
        raise KvbenchError(
            f"--resume: {path} was written by kvbench {_shown(str(written_by))}, newer than this"
            f" one ({__version__}), and rewriting it here would lose what that version records; continue it with"
            " that kvbench, or use a new --output"
        )
    unknown = unknown_fields(data)
    if unknown:
        shown = ", ".join(_shown(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise KvbenchError(
            f"--resume: {path} holds fields this kvbench does not know ({shown}{more}), which rewriting it would"
            " drop; continue it with the kvbench that wrote it, or use a new --output"
        )
    return result


def unknown_fields(data: dict[str, Any]) -> list[str]:
    """The fields of a read document that its result does not keep (so a rewrite would drop them), each
    once: `name` at the top, `cells[].name`, `cells[].settings.name`, `runs[].name`."""
    found: dict[str, None] = {}

    def note(where: str, item: Any, known: set[str]) -> None:
        if isinstance(item, dict):
            found.update(dict.fromkeys(f"{where}{key}" for key in item if key not in known))

    note("", data, _names(BenchmarkResult) | {"format", *DERIVED_SECTIONS})
    for cell in data.get("cells") or []:
        note("cells[].", cell, _names(CellResult) | {"id"})
        note("cells[].settings.", cell.get("settings") if isinstance(cell, dict) else None, _names(Cell))
    for run in data.get("runs") or []:
        note("runs[].", run, _names(RunRecord))
    return list(found)


def _shown(text: str, longest: int = 60) -> str:
    """Text from the file, one line and short enough to read in a message."""
    return printable(text if len(text) <= longest else text[: longest - 1] + "…", one_line=True)


def _names(cls: type) -> set[str]:
    return {item.name for item in fields(cls)}


def _read_document(path: Path) -> Any:
    text = read_bounded_text(path, MOST_RESULTS_BYTES, "results file")
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_each_key_once)
    except json.JSONDecodeError as error:
        raise KvbenchError(
            f"{path} is not JSON ({error.msg} at line {error.lineno}); pass a kvbench results .json file"
        ) from None
    except (ValueError, RecursionError) as error:  # NaN, an integer of thousands of digits, deep nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise KvbenchError(f"{path} is not a results file kvbench wrote ({reason}); rerun kvbench run") from None
    return data


def _each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the document; Python's JSON reader keeps the last of a key given twice, so of two values
    one would be read and the other silently dropped, where kvbench writes each key once."""
    data = dict(pairs)
    if len(data) < len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"the key {printable(shortened(twice, 40), one_line=True)!r} appears twice in one object")
    return data


def _no_constant(name: str) -> None:
    """Python's JSON reader takes NaN and Infinity, which are not JSON and which kvbench never writes."""
    raise ValueError(f"{name} is not a JSON number")
