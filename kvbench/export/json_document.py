"""The comparison as one JSON document: the gate's rule and settings, then every measurement's record and
each cache implementation's verdict against the dynamic cache."""

from __future__ import annotations

import json
import re
from typing import Any

from kvbench.compare import ALPHA, Comparison
from kvbench.export.grids import GATE_RULE, records, verdict_records


def to_json(comparison: Comparison) -> str:
    document = {
        "baseline": comparison.files[comparison.baseline].path,
        "files": [loaded.path for loaded in comparison.files],
        "threshold_pct": comparison.threshold_pct,
        "gate_metric": comparison.gate_metric,
        "gate": GATE_RULE,
        "alpha": ALPHA,
        "test": "log-ratio-t, holm",
        "family_sizes": comparison.family_sizes,
        "measurements": records(comparison),
        # Where a file's cells differ only in their cache implementation: each against the dynamic cache.
        "cache_verdicts": verdict_records(comparison),
        "unjudged": comparison.unjudged,
        "warnings": comparison.warnings,
        "regressions": len(comparison.regressions),
        "inconclusive": len(comparison.inconclusive),
        "pass_inconclusive": comparison.pass_inconclusive,
        "outcome": comparison.outcome,
    }
    return json_text(document)


def json_text(document: Any) -> str:
    """JSON as kvbench prints it: "±" and names as they are, but DEL and C1 controls escaped (JSON escapes
    the others itself), which a JSON reader reads back as the same text and a terminal does not act on."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return re.sub("[\x7f-\x9f]", lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"
