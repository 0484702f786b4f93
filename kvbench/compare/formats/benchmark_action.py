"""github-action-benchmark's `customSmallerIsBetter` JSON, from the last file: the action tracks each
measurement from one CI run to the next."""

from __future__ import annotations

from kvbench.compare.judging import Comparison
from kvbench.core.jsontext import json_text


def to_benchmark_action(comparison: Comparison) -> str:
    """The last file's mean latencies in github-action-benchmark's `customSmallerIsBetter` shape: a JSON
    list of {name, unit, value, range, extra}, each named by its own settings; the action tracks them
    from one CI run to the next."""
    index = len(comparison.files) - 1
    entries = []
    for row in comparison.rows:
        entry = row.entries[index]
        if entry is None:
            continue
        std = entry.summary.std_s
        entries.append(
            {
                "name": entry.key.label(),
                "unit": "s",
                "value": round(entry.summary.mean_s, 6),
                "range": f"± {std:.6f}" if std is not None else "",
                "extra": f"n={entry.summary.n}; {comparison.files[index].label}",
            }
        )
    return json_text(entries)
