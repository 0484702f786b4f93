"""Numbers as people read them (bytes, milliseconds), shared by every renderer."""

from __future__ import annotations


def format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def format_ms(value_ms: float | None) -> str:
    """Milliseconds with two decimals, for a table's column of per-token times."""
    return f"{value_ms:.2f}" if value_ms is not None else "—"


def seconds_as_ms(value_s: float | None) -> str:
    """Seconds shown as milliseconds to three significant figures, for a line of serving metrics."""
    return f"{value_s * 1000:.3g}" if value_s is not None else "—"
