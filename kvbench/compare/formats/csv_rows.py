"""One CSV row per measurement per file: the flat records, for a spreadsheet or pandas."""

from __future__ import annotations

import csv
import io
from typing import Any

from kvbench.compare.formats.grids import records
from kvbench.compare.judging import Comparison
from kvbench.core.untrusted import printable, spreadsheet_cell


def to_csv(comparison: Comparison) -> str:
    """The records as CSV: text that a spreadsheet would run as a formula is written as text, and text
    from the files has its control characters written out (this goes to a terminal as often as to a file)."""
    rows = [{key: _csv_cell(value) for key, value in record.items()} for record in records(comparison)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    return spreadsheet_cell(printable(value)) if isinstance(value, str) else value
