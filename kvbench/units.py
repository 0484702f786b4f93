"""Human-readable byte counts, shared by every renderer."""

from __future__ import annotations


def format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
