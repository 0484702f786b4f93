"""Text kvbench did not write (files, names users give, what a worker prints): read within bounds, shown
without acting on a terminal or a spreadsheet."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from kvbench.core.errors import KvbenchError

# C0 controls but tab and newline, DEL and C1 controls: an ESC or CSI in a file could move the cursor,
# clear the screen, retitle the window or hide what follows. A single line also loses tab and newline.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_IN_A_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's list for CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escaped(match: re.Match[str]) -> str:
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(match.group(), f"\\x{ord(match.group()):02x}")


def printable(text: str, one_line: bool = False) -> str:
    """`text` with every control character written out as Python writes it (ESC as \\x1b), so a reader
    sees it is there and the terminal does nothing with it; `one_line` also writes out newlines and tabs."""
    return (_CONTROLS_IN_A_LINE if one_line else _CONTROLS).sub(_escaped, text)


def shortened(text: str, most: int) -> str:
    """`text` as it is when it has at most `most` characters, else its first `most` characters and how many
    were left out: an error message or a value kept or shown whole could be megabytes."""
    if len(text) <= most:
        return text
    return f"{text[:most]}… ({len(text) - most:,} more characters)"


def spreadsheet_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows rather than runs: text starting like a formula gets a leading
    apostrophe, which spreadsheets read as "this is text"; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


# What read_bounded_text reads at a time.
_PIECE_BYTES = 2**20


def read_bounded_text(path: str | Path, most_bytes: int, what: str) -> str:
    """A regular file's UTF-8 text (a leading byte order mark dropped), refused in one line when it is not
    a regular file (a FIFO would block, a device never end) or is larger than `most_bytes`; `what` names
    the kind of file in the messages ("config file", "results file")."""
    path = Path(path)
    try:
        # Looked at before opening: opening a FIFO blocks until something writes to it.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise KvbenchError(f"{what} {path} is not a regular file; pass the file itself")
        # Non-blocking, in case it was replaced by a FIFO since: the check below then refuses it.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KvbenchError(f"{what} {path} does not exist; check the path") from None
    except OSError as error:
        raise KvbenchError(f"{what} {path} cannot be read ({error.strerror})") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise KvbenchError(f"{what} {path} is not a regular file; pass the file itself")
        # Read one byte past the limit rather than trust the size: it may grow, or (in /proc) read as 0.
        # In pieces: one read of the limit would reserve all of it at once, for a file of a few kilobytes.
        pieces: list[bytes] = []
        left = most_bytes + 1
        try:
            while left > 0:
                piece = handle.read(min(left, _PIECE_BYTES))
                if not piece:
                    break
                pieces.append(piece)
                left -= len(piece)
        except OSError as error:
            raise KvbenchError(f"{what} {path} cannot be read ({error.strerror})") from None
        data = b"".join(pieces)
    if len(data) > most_bytes:
        raise KvbenchError(f"{what} {path} is larger than the {_size(most_bytes)} a {what} may be; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise KvbenchError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def _size(count: int) -> str:
    return f"{count // 2**20} MiB" if count >= 2**20 else f"{count} bytes"
