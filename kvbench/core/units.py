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
    """Seconds shown as milliseconds to three significant figures, for a line of serving metrics; whole
    milliseconds from 100 up, where three figures would turn into an exponent (a 40-second first token is
    40300, not 4.03e+04)."""
    if value_s is None:
        return "—"
    value_ms = value_s * 1000
    return f"{value_ms:.0f}" if abs(value_ms) >= 99.95 else f"{value_ms:.3g}"


# Byte units as people write them: binary with an "i" (GiB), decimal without (GB, as the unit says); a
# bare letter (16G) is read as binary, the way GPU memory sizes are usually meant.
_BYTE_UNITS = {
    "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}  # fmt: skip


def parse_bytes(text: str, option: str = "--gpu-memory") -> int:
    """A size such as "80GiB", "24GB", "16G" or "1.5 TiB" in bytes; a KvbenchError naming the option and the
    forms it takes for anything else (a bare number, an unknown unit, zero or less)."""
    import re

    from kvbench.core.errors import KvbenchError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS or float(match.group(1)) <= 0:
        raise KvbenchError(f"{option} cannot be {text!r}; give a size with its unit, such as 80GiB, 24GB or 16G")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])
