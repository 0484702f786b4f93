"""The lock a run holds on its results file, so that two runs never write one file."""

from __future__ import annotations

import os
from pathlib import Path

from kvbench.core.errors import KvbenchError


def process_alive(pid: int) -> bool:
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
        if pid <= 0 or self.held or not process_alive(pid):
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
