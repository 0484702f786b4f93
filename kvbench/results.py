"""The results file: its schema version, atomic JSON + CSV writing, reading and validation (the records it
holds are kvbench.records).

Schema history (the reader accepts every version listed):
  1 - first version: environment, config, cells, runs, summary. The summary and explained blocks are
      derived from the runs; a save in the middle of a run leaves them out, and the reader recomputes them.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import types
import typing
from dataclasses import asdict, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from kvbench.config import (
    LARGEST_INTEGER,
    MODES,
    PARTIAL_AXES,
    QUANTIZED_NBITS,
    BenchConfig,
    Cell,
    bound_problem,
    config_fields,
    default_of,
)
from kvbench.errors import KvbenchError
from kvbench.explain import explain_result
from kvbench.jsontext import json_text
from kvbench.records import SCHEMA_VERSION, BenchmarkResult, CellResult, CellState, RunRecord
from kvbench.roofline import DatasheetPeaks, MeasuredPeaks, ModelCost
from kvbench.untrusted import printable, read_bounded_text, spreadsheet_cell

FORMAT_NAME = "kvbench-results"
# Far above any sweep's results (a thousand-token run takes kilobytes), far below what parsing as JSON
# would need more memory for than a laptop has.
MOST_RESULTS_BYTES = 256 * 2**20


def to_dict(result: BenchmarkResult, derived: bool = True) -> dict[str, Any]:
    """The results file's document. With `derived`, it ends with the summary and the explanation, computed
    from the runs for readers that do not recompute them (kvbench itself always does); a run leaves them
    out of the saves it makes while measuring, so that saving stays a copy of what was measured."""
    data = asdict(result)
    # Each cell's id first, as the runs refer to it.
    data["cells"] = [{"id": cell.id, **stored} for cell, stored in zip(result.cells, data["cells"])]
    # An axis that does not apply to a cell (the bits of a cache other than the quantized one) is left out
    # of its settings, which then read as they did before the axis existed.
    for cell in data["cells"]:
        for axis in PARTIAL_AXES:
            if cell["settings"].get(axis, 0) is None:
                del cell["settings"][axis]
    if derived:
        data["summary"] = [asdict(summary) for summary in result.summary]
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


def write_result(result: BenchmarkResult, path: str | Path, derived: bool = True) -> None:
    """Write the results JSON file, atomically."""
    text = json_text(to_dict(result, derived))
    # JSON has no NaN or Infinity, so json_text writes them as null; where a figure must be a number, the
    # reader would refuse the file, and replacing the file on disk with it would lose every run before.
    problem = fields_problem(json.loads(text))
    if problem is not None:
        raise KvbenchError(f"{path} was not rewritten: the results would not read back ({problem}); the file keeps its runs")
    _write_atomically(Path(path), lambda handle: handle.write(text))


def write_runs_csv(result: BenchmarkResult, path: str | Path) -> None:
    """Write the CSV of runs beside a results file, atomically; text that a spreadsheet would run as a
    formula (a model named "=HYPERLINK(...)") is written as text."""
    frame = result.runs_frame()
    for column in frame.columns:
        frame[column] = frame[column].map(spreadsheet_cell)
    _write_atomically(csv_path_for(Path(path)), lambda handle: frame.to_csv(handle, index=False))


class ResultsFile:
    """Where one run keeps its results. Made before measuring, it only checks: the path can be written,
    and it holds nothing this run would destroy (a file is replaced only with `replace`, or continued with
    `resume`), and no other run is writing it. `open` then takes the lock and makes the directory; `save`
    writes; `close` lets go, removing the directories it made if nothing was written."""

    def __init__(self, path: str | Path, *, replace: bool = False, resume: bool = False) -> None:
        self.path = check_writable(path)
        self.replace, self.resume = replace, resume
        self.lock = OutputLock(self.path)
        holder = self.lock.holder()
        if holder is not None:
            raise self.lock.busy(holder)
        self._refuse_foreign_files()
        self._seen = _identity(self.path)  # what --resume read, so a change before the lock is caught
        self._made_directories: list[Path] = []
        self._continued = False
        self.written = False

    def _refuse_foreign_files(self) -> None:
        if self.replace:
            return
        ours: tuple[Path, ...] = ()
        if self.resume and self.path.exists():
            csv = csv_path_for(self.path)
            ours = (self.path, csv) if _written_by_kvbench(csv) else (self.path,)
        for path in (self.path, csv_path_for(self.path)):
            if path not in ours and (path.exists() or path.is_symlink()):
                if ours:
                    raise KvbenchError(
                        f"{path} is not the runs' CSV kvbench writes, and --resume would replace it; move it"
                        " away, or pass --force to replace it"
                    )
                raise KvbenchError(
                    f"output {path} already exists; pass --force to replace it, --resume to continue a run"
                    " of the same experiment, or choose another --output"
                )

    @property
    def is_open(self) -> bool:
        return self.lock.held

    def open(self) -> None:
        """Make the directory, take the lock for the whole run, and clear temporary files that killed runs
        left behind."""
        missing = [parent for parent in (self.path.parent, *self.path.parent.parents) if not parent.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise KvbenchError(f"cannot write results to {self.path} ({error.strerror}); choose another --output") from None
        self._made_directories = missing  # deepest first
        try:
            self.lock.acquire()
            # Another run may have written the file between the checks and the lock.
            if not self.replace and _identity(self.path) != self._seen:
                raise KvbenchError(
                    f"output {self.path} changed after this run checked it (another run?); run the command again"
                )
            self._refuse_foreign_files()
        except BaseException:
            self.close()
            raise
        # What --resume continues was there before this run, and stays whatever happens to it.
        self._continued = self.resume and self.path.exists()
        remove_stale_temporaries(self.path)

    def discard(self) -> None:
        """Remove the files this run wrote, for a run that failed before measuring anything: they would
        hold nothing, and block the retry (a file continued with --resume stays)."""
        if not self.is_open or self._continued:
            return
        for path in (self.path, csv_path_for(self.path)):
            path.unlink(missing_ok=True)
        self.written = False

    def close(self) -> None:
        self.lock.release()
        if not self.written:
            for directory in self._made_directories:
                try:
                    directory.rmdir()
                except OSError:
                    break
        self._made_directories = []

    def save(self, result: BenchmarkResult, with_csv: bool = False, derived: bool = True) -> None:
        """Write the JSON (and the CSV; `derived`: with the summary and explanation blocks); a failure to
        write is one line, and leaves the previous save whole."""
        one_off = not self.is_open
        if one_off:
            self.open()
        try:
            write_result(result, self.path, derived)
            self.written = True
            if with_csv:
                write_runs_csv(result, self.path)
        except OSError as error:
            raise KvbenchError(
                f"cannot write results to {self.path} ({error.strerror or error}); what was saved before is"
                " intact: free space or fix the folder, then continue with --resume"
            ) from None
        finally:
            if one_off:
                self.close()


# How the runs' CSV kvbench writes begins: its header's first columns.
_CSV_HEADER_START = "cell,mode,run,"


def _written_by_kvbench(csv: Path) -> bool:
    """Whether a CSV beside a results file is the one kvbench writes there (a link never is: it is someone
    else's file kvbench would replace)."""
    if csv.is_symlink() or not csv.is_file():
        return False
    try:
        with open(csv, encoding="utf-8") as handle:
            return handle.read(len(_CSV_HEADER_START)) == _CSV_HEADER_START
    except (OSError, UnicodeDecodeError):
        return False


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class OutputLock:
    """An exclusive lock on a results file for the whole run: a hidden `.NAME.lock` beside it holding the
    owner's pid. Beside the file, not on it, because every save replaces the file itself by a rename."""

    def __init__(self, results_path: Path) -> None:
        self.results_path = results_path
        self.path = results_path.with_name(f".{results_path.name}.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The pid of a live run that holds the lock, read without writing anything. A lock whose flock can
        be taken is stale, whatever pid it names: its run was killed, and the pid may be another process's now."""
        try:
            pid = int(self.path.read_text(encoding="ascii").strip() or "0")
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if pid <= 0 or self.held or not _process_alive(pid):
            return None
        return pid if self._flocked_elsewhere() else None

    def _flocked_elsewhere(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the pid alone says
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without flock: the pid alone says
            return True
        finally:
            os.close(fd)  # and with it the flock just taken
        return False

    def busy(self, pid: int | None) -> KvbenchError:
        who = f" (pid {pid}, holding {self.path})" if pid else f" (holding {self.path})"
        return KvbenchError(
            f"output {self.results_path} is being written by another kvbench run{who}; wait for it to finish"
            " or choose another --output"
        )

    def _unusable(self, error: OSError) -> KvbenchError:
        return KvbenchError(
            f"cannot take the lock {self.path} for {self.results_path} ({error.strerror or error}); free space or"
            " remove it if no kvbench run is writing there, or choose another --output"
        )

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise self._unusable(error) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self.busy(self.holder()) from None
            # The previous holder removes the file as it lets go: if that happened after we opened it, the
            # lock we hold is on a file nobody else will look at; take the one now at the path.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as error:
            self.release()
            raise self._unusable(error) from None

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still held, so a run that opened it meanwhile sees the change and retries.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the hidden temporary files (`.NAME.PID.tmp`) of runs that were killed mid-write."""
    removed = []
    for target in (path, csv_path_for(path)):
        prefix = f".{target.name}."
        for temporary in target.parent.glob(glob.escape(prefix) + "*.tmp"):
            pid = temporary.name[len(prefix) : -len(".tmp")]
            if pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid))):
                temporary.unlink(missing_ok=True)
                removed.append(temporary)
    return removed


# What the hidden files beside a results file add to its name: `.NAME.PID.tmp` (a pid has at most 7 digits).
_LONGEST_ADDITION = len("..1234567.tmp")


def check_writable(path: str | Path) -> Path:
    """Fail before measuring, not after, when the results cannot be saved; writes nothing. Returns the
    path with `~` expanded to the user's home."""
    path = Path(path).expanduser()
    try:
        problem = _unwritable(path)
    except OSError as error:  # a folder's name too long, a loop of links...
        problem = error.strerror or str(error)
    if problem is not None:
        raise KvbenchError(f"cannot write results to {path} ({problem}); choose another --output")
    return path


def _unwritable(path: Path) -> str | None:
    if path.is_dir():
        raise KvbenchError(f"output {path} is a directory; give a file name such as {path}/run.json")
    if path.suffix != ".json":
        raise KvbenchError(f"output {path} must end in .json (the runs' CSV is written beside it)")
    existing = next(parent for parent in (path.parent.absolute(), *path.parent.absolute().parents) if parent.exists())
    if not existing.is_dir():
        return f"Not a directory: {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"Permission denied: {existing}"
    longest = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    size = len(os.fsencode(path.name))
    if size + _LONGEST_ADDITION > longest:
        return (
            f"its name is {size} bytes, and the hidden files written beside it add {_LONGEST_ADDITION} to the"
            f" {longest} a name may have here"
        )
    return None


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in known})


def _cell_from_dict(data: dict[str, Any]) -> CellResult:
    cell = _build(CellResult, data)
    cell.settings = _build(Cell, data["settings"])
    cell.status = CellState(cell.status)
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
    data = _single_bits_as_a_list(data)
    check_fields(data, origin)
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
        if cell.settings.cache_implementation == "quantized" and cell.settings.quantized_nbits is None:
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


# Seconds a generate() can take: beyond these the statistics overflow or divide by zero.
SHORTEST_S, LONGEST_S = 1e-9, 1e7
# Energy, within a float's comfortable range.
MOST_JOULES = 1e12


def check_run_times(runs: list[RunRecord], origin: str) -> None:
    """Refuse what no generate() can record (NaN, infinite, zero, negative or absurd times, tokens out of
    order or after the end, negative energy): judged, they would print "+nan%" or "-332% faster", or
    overflow, instead of failing."""
    for run in runs:
        where = f"{origin}: run {run.run} of {run.mode} in cell {run.cell!r}"
        times = {"latency_s": run.latency_s, "time_to_first_token_s": run.time_to_first_token_s}
        for name, value in times.items():
            if value is None and name == "time_to_first_token_s":
                continue
            if not (_finite_positive(value) and SHORTEST_S <= value <= LONGEST_S):
                raise KvbenchError(
                    f"{where} has {name} {_shown(value)}, not a number of seconds a generate() can take;"
                    " the file is damaged, rerun kvbench run"
                )
        if run.time_to_first_token_s is not None and run.time_to_first_token_s > run.latency_s:
            raise KvbenchError(
                f"{where} has its first token after its end (time_to_first_token_s > latency_s); the file is"
                " damaged, rerun kvbench run"
            )
        if run.new_tokens < 1 or run.batch_size < 1:
            raise KvbenchError(
                f"{where} has {run.new_tokens} new tokens in batches of {run.batch_size}; the file is damaged"
            )
        times_s = run.token_times_s
        # Stored to the microsecond: the last may read a hair past the end.
        finite = all(math.isfinite(t) and t >= 0 for t in times_s)
        in_order = finite and all(a <= b for a, b in zip(times_s, times_s[1:]))
        if not in_order or (times_s and times_s[-1] > run.latency_s + 1e-3):
            raise KvbenchError(
                f"{where} has token_times_s that are not finite, in order and within its latency; the file is"
                " damaged, rerun kvbench run"
            )
        for name, pairs in (("memory_timeline", run.memory_timeline), ("allocated_by_position", run.allocated_by_position)):
            if pairs and not all(len(pair) == 2 and all(_finite_non_negative(x) for x in pair) for pair in pairs):
                raise KvbenchError(
                    f"{where} has a {name} that is not a list of [{_PAIRS[name]}] pairs of finite non-negative"
                    " numbers; the file is damaged, rerun kvbench run"
                )
        energy = run.energy_j
        if energy is not None and not (math.isfinite(energy) and 0 <= energy <= MOST_JOULES):
            raise KvbenchError(
                f"{where} has energy_j {_shown(energy)}, not a number of joules; the file is damaged"
            )


_PAIRS = {"memory_timeline": "seconds, bytes", "allocated_by_position": "position, bytes"}


def _finite_non_negative(value: float) -> bool:
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an integer too large for a float
        return False


# Fields a results file always holds although the dataclass gives them a default.
_REQUIRED_IN_FILE = {BenchmarkResult: ("cells", "runs")}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# The exact types a JSON reader gives that the item check below accepts for these annotations (not bool).
_PLAIN_NUMBER_TYPES: dict[Any, tuple[type, ...]] = {float: (int, float), int: (int,)}


def _type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """What is wrong with a JSON value against a dataclass field's annotation, or None. The annotations
    are the one declaration of the format: this reads them rather than repeating them."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        problems = [_type_problem(value, option, where) for option in options]
        return None if None in problems else problems[0]
    if dataclasses.is_dataclass(annotation):
        return _object_problem(value, annotation, where)
    if origin is list:
        if not isinstance(value, list):
            return f"{where} must be a list, got {_shown(value)}"
        (item_type,) = typing.get_args(annotation)
        # A run's token times are hundreds of numbers: checked in one pass, item by item only to name a problem.
        plain = _PLAIN_NUMBER_TYPES.get(item_type)
        if plain is not None and all(type(item) in plain for item in value):
            return None
        return next((p for i, item in enumerate(value) if (p := _type_problem(item, item_type, f"{where}[{i}]"))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} must be an object, got {_shown(value)}"
        _, value_type = typing.get_args(annotation)
        return next((p for key, item in value.items() if (p := _type_problem(item, value_type, f"{where}.{key}"))), None)
    if annotation is type(None):
        return None if value is None else f"{where} must be null, got {_shown(value)}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = [member.value for member in annotation]
        return None if value in values else f"{where} {_shown(value)} is not one of {', '.join(values)}"
    # bool is an int subclass in Python, but true is not a count; an integer is a fine float.
    accepted = {float: (int, float)}.get(annotation, annotation)
    if isinstance(value, accepted) and (annotation is bool or not isinstance(value, bool)):
        return None
    return f"{where} must be {_TYPE_NAMES.get(annotation, annotation.__name__)}, got {_shown(value)}"


def _object_problem(value: Any, cls: type, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be an object, got {_shown(value)}"
    required = _REQUIRED_IN_FILE.get(cls, ())
    for item in fields(cls):
        name = f"{where}.{item.name}" if where else item.name
        if item.name not in value:
            no_default = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            if no_default or item.name in required:
                return f"{name} is missing"
            continue
        problem = _type_problem(value[item.name], _hints(cls)[item.name], name)
        if problem is not None:
            return problem
    return None


def check_fields(data: dict[str, Any], origin: str) -> None:
    """Every field of a results file has the type its dataclass declares, the settings have the types
    BenchConfig declares, and states, modes and cell references are ones kvbench writes; the first
    problem is named in one line."""
    problem = fields_problem(data)
    if problem is not None:
        raise KvbenchError(f"{origin} is a damaged kvbench results file: {problem}; rerun kvbench run to replace it")


def fields_problem(data: dict[str, Any]) -> str | None:
    """What check_fields would refuse in a results document, or None."""
    problem = _object_problem(data, BenchmarkResult, "") or _oversized(data, "")
    if problem is None:
        config = data["config"]
        hints = _hints(BenchConfig)
        problem = next(
            (p for key in hints if key in config if (p := _type_problem(config[key], hints[key], f"config.{key}"))),
            None,
        )
    if problem is None:
        problem = _meaning_problem(data)
    return problem


# Bounds no real device or model reaches, so a stored figure beyond them is damage, not a measurement:
# within them the roofline's arithmetic stays finite.
_PLAUSIBLE = {
    "copy_bandwidth_bytes_per_s": (1e6, 1e15),
    "memory_bandwidth_bytes_per_s": (1e6, 1e15),
    "matmul_flops_per_s": (1e6, 1e18),
    "fp16_tensor_flops_per_s": (1e6, 1e18),
    "bytes_per_element": (1, 8),
}


def _explained_problem(value: Any, cls: type, where: str) -> str | None:
    """The inputs `show` and `plot` compute the roofline from (stored peaks, a model's cost): the types
    their dataclass declares, and every number finite and positive (a zero would divide, a negative bound
    would mean nothing); the two parameter counts of a cost may be 0."""
    problem = _object_problem(value, cls, where)
    if problem is not None:
        return problem
    for item in fields(cls):
        number = value.get(item.name)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            may_be_zero = item.name in ("lookup_parameters", "head_parameters") and number == 0
            if not (may_be_zero or _finite_positive(number)):
                return f"{where}.{item.name} must be a finite positive number, got {_shown(number)}"
            low, high = _PLAUSIBLE.get(item.name, (0, math.inf))
            if not may_be_zero and not low <= number <= high:
                shown = f"{_shown(number)} is outside what any device or model has ({low:g}..{high:g})"
                return f"{where}.{item.name} {shown}"
    parts = value.get("lookup_parameters", 0) + value.get("head_parameters", 0)
    if "parameters" in value and parts > value["parameters"]:
        return f"{where}: lookup_parameters and head_parameters add up to more than parameters"
    return None


def _oversized(document: Any, where: str) -> str | None:
    """The first integer anywhere in the document too large to be a count of anything (walked without
    recursion: the parser accepts nesting deeper than Python's call stack)."""
    # Each value with its container's path and its key: a path is spelled out only for a container, or for
    # the value named in the answer, not for each of a document's many thousand numbers.
    stack: list[tuple[str | None, Any, Any]] = [(None, where, document)]
    while stack:
        parent, key, value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INTEGER:
            return f"{_path(parent, key) or 'a value'} is an integer too large to be a count ({len(str(value))} digits)"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if items:
            path = _path(parent, key)
            stack.extend(reversed([(path, inner_key, item) for inner_key, item in items]))
    return None


def _path(parent: str | None, key: Any) -> str:
    """Where a value is: `key` itself at the top, else its container's path with `[index]` or `.name`."""
    if parent is None:
        return key
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}" if parent else str(key)


def _finite_positive(value: Any) -> bool:
    """A number JSON may hold that is finite and above 0; an integer too large for a float is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:
        return False


# What a cell's model record (models.LoadedModel.info) holds that renderers and compare read; the rest
# of it is shown as it is or not at all.
_MODEL_INFO: dict[str, Any] = {"dtype": str, "weights": str, "attn_implementation": str | None}


def _meaning_problem(data: dict[str, Any]) -> str | None:
    for key, cls in (("device_peaks", MeasuredPeaks), ("datasheet_peaks", DatasheetPeaks)):
        if data["environment"].get(key) is not None:
            if problem := _explained_problem(data["environment"][key], cls, f"environment.{key}"):
                return problem
    ids = set()
    limits = config_fields()
    for index, cell in enumerate(data["cells"]):
        # The same bounds the command line holds a setting to (the roofline and plots step through lengths).
        for name, value in cell["settings"].items():
            if name in limits and isinstance(value, int) and (problem := bound_problem(limits[name], value)):
                return f"cells[{index}].settings.{name} {problem}"
        model = cell.get("model") or {}
        for key, annotation in _MODEL_INFO.items():
            if key in model and (problem := _type_problem(model[key], annotation, f"cells[{index}].model.{key}")):
                return problem
        cost = model.get("cost")
        if cost is not None and (problem := _explained_problem(cost, ModelCost, f"cells[{index}].model.cost")):
            return problem
        # A setting added since the file was written (prompt_tokens) takes its default, as when it is built.
        settings = cell["settings"]
        ids.add(Cell(**{item.name: settings[item.name] for item in fields(Cell) if item.name in settings}).id)
    for index, run in enumerate(data["runs"]):
        if run["mode"] not in MODES:
            return f"runs[{index}].mode {_shown(run['mode'])} is not cached or uncached"
        if run["cell"] not in ids:
            return f"runs[{index}].cell {_shown(run['cell'])} names no cell of the file"
    return None


def read_result(path: str | Path) -> BenchmarkResult:
    path = Path(path).expanduser()
    text = read_bounded_text(path, MOST_RESULTS_BYTES, "results file")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise KvbenchError(
            f"{path} is not JSON ({error.msg} at line {error.lineno}); pass a kvbench results .json file"
        ) from None
    except (ValueError, RecursionError) as error:  # NaN, an integer of thousands of digits, deep nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise KvbenchError(f"{path} is not a results file kvbench wrote ({reason}); rerun kvbench run") from None
    return from_dict(data, str(path))


def _no_constant(name: str) -> None:
    """Python's JSON reader takes NaN and Infinity, which are not JSON and which kvbench never writes."""
    raise ValueError(f"{name} is not a JSON number")
