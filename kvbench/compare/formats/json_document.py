"""The comparison as one JSON document: the gate's rule and settings, then every measurement's record and
each cache implementation's verdict against the dynamic cache."""

from __future__ import annotations

from kvbench.compare.formats.grids import GATE_RULE, records, verdict_records
from kvbench.compare.judging import ALPHA, Comparison
from kvbench.core.jsontext import json_text


def to_json(comparison: Comparison) -> str:
    document = {
        "baseline": comparison.files[comparison.baseline].path,
        "files": [loaded.path for loaded in comparison.files],
        "threshold_pct": comparison.threshold_pct,
        "gate_metric": comparison.gate_metric,
        "gate": GATE_RULE,
        "alpha": ALPHA,
        "test": "log-ratio-t, bonferroni",
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
