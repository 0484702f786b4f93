"""One CSV row per measurement per file: the flat records, for a spreadsheet or pandas."""

from __future__ import annotations

import csv
import io

from kvbench.compare import Comparison
from kvbench.export.grids import records


def to_csv(comparison: Comparison) -> str:
    rows = records(comparison)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
