"""Writing a results file: atomic JSON and CSV saves under the run's lock, and the checks that a path can
be written and holds nothing a run would destroy. It writes what it is given."""

from __future__ import annotations

import errno
import glob
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.jsontext import json_text
from kvbench.core.untrusted import spreadsheet_cell
from kvbench.model.records import BenchmarkResult
from kvbench.storage.document import to_dict
from kvbench.storage.lock import OutputLock, process_alive
from kvbench.storage.validation import fields_problem


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
        remove_if_there(temporary)
        raise


def remove_if_there(path: Path) -> None:
    """Remove a file this process made, if it is there and can be: on a folder that refuses it (a read-only
    file system answers even a missing file's removal with an error), the failure that led here is the one
    to report."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def csv_path_for(path: Path) -> Path:
    return path.with_suffix(".csv")


def write_result(result: BenchmarkResult, path: str | Path, derived: Mapping[str, Any] | None = None) -> None:
    """Write the results JSON file, atomically."""
    text = json_text(to_dict(result, derived))
    # JSON has no NaN or Infinity, so json_text writes them as null; where a figure must be a number, the
    # reader would refuse the file, and replacing the file on disk with it would lose every run before.
    problem = fields_problem(json.loads(text))
    if problem is not None:
        raise KvbenchError(f"{path} was not rewritten: the results would not read back ({problem}); the file keeps its runs")
    _write_atomically(Path(path), lambda handle: handle.write(text))


def write_document(document: Mapping[str, Any], path: str | Path) -> None:
    """Write a JSON document of kvbench's own (a capacity search's) atomically, making its folder: a reader,
    or a Ctrl-C, sees the last whole version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json_text(document)
    _write_atomically(path, lambda handle: handle.write(text))


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
    writes; `close` lets go, removing the directories it made if nothing was written. A file `replace`
    replaces stays as it was until the run has measured something to put in its place."""

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
        self._replacing = False
        self._wrote: set[Path] = set()
        self.written = False

    def _refuse_foreign_files(self) -> None:
        if self.replace:
            for path in (self.path, csv_path_for(self.path)):
                _refuse_unreplaceable(path)
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
        self._replacing = self.replace and any(path.exists() for path in (self.path, csv_path_for(self.path)))
        remove_stale_temporaries(self.path)

    def discard(self) -> None:
        """Remove the files this run wrote, for a run that failed before measuring anything: they would
        hold nothing, and block the retry. Only those: a file continued with --resume stays, and so does one
        --force was to replace (see `save`)."""
        if not self.is_open or self._continued:
            return
        for path in sorted(self._wrote):
            path.unlink(missing_ok=True)
        self._wrote.clear()
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

    def save(self, result: BenchmarkResult, with_csv: bool = False, derived: Mapping[str, Any] | None = None) -> None:
        """Write the JSON (and the CSV; `derived`: the sections to end it with); a failure to
        write is one line, and leaves the previous save whole. While the run has measured nothing, the files
        it replaces are left as they are: a run that then fails (a model that does not load) has lost the
        user nothing."""
        one_off = not self.is_open
        if one_off:
            self.open()
        try:
            if self._replacing and not self.written and result.measured_nothing():
                return
            write_result(result, self.path, derived)
            self.written = True
            self._wrote.add(self.path)
            if with_csv:
                write_runs_csv(result, self.path)
                self._wrote.add(csv_path_for(self.path))
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


def _refuse_unreplaceable(path: Path) -> None:
    """Refuse, before measuring, a file no save could replace: an immutable or append-only file (chattr +i,
    +a) refuses the rename every save makes. Asked by opening it for writing, never truncating it: the
    kernel refuses that with EPERM for such files alone (a file merely read-only says EACCES, and a rename in
    a writable folder still replaces it)."""
    if path.is_symlink() or not path.is_file():
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if error.errno == errno.EPERM:
            raise KvbenchError(
                f"output {path} cannot be replaced ({error.strerror}: it is marked immutable or append-only);"
                " clear the mark (chattr -i) or choose another --output"
            ) from None
        return
    os.close(descriptor)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the hidden temporary files (`.NAME.PID.tmp`) of runs that were killed mid-write."""
    removed = []
    for target in (path, csv_path_for(path)):
        prefix = f".{target.name}."
        for temporary in target.parent.glob(glob.escape(prefix) + "*.tmp"):
            pid = temporary.name[len(prefix) : -len(".tmp")]
            if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
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
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise KvbenchError(
            f"output {path} is not a UTF-8 name, and a results file records its output's name as UTF-8 text;"
            " choose a UTF-8 name"
        ) from None
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
