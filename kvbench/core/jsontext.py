"""Every JSON document kvbench prints or writes, in one form: results files, `run --json`, the dry run's
plan, `compare --format json` and benchmark-action, and the gate's joined results."""

from __future__ import annotations

import json
import math
import re
from typing import Any


def json_text(document: Any) -> str:
    """`document` as JSON text ending in a newline: its keys in the order they were built, indented by 2,
    "±" and names as they are, but DEL and C1 controls escaped (JSON escapes the others itself), which a
    JSON reader reads back as the same text and a terminal does not act on. JSON has no NaN or Infinity:
    a number that is not finite is written as null, as a figure not measured is."""
    text = json.dumps(_finite(document), indent=2, ensure_ascii=False, allow_nan=False)
    return re.sub("[\x7f-\x9f]", lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"


def _finite(value: Any) -> Any:
    """The document with each NaN or infinite number replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
