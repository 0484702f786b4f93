"""The derived sections a results file ends with: each mode's summary and the explanation, computed from the
runs (kvbench.storage writes them as given; every reader recomputes them)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kvbench.analysis.explain import explain_result
from kvbench.analysis.prefix import prefix_reuse_section
from kvbench.model.records import BenchmarkResult


def derived_sections(result: BenchmarkResult) -> dict[str, Any]:
    """The "summary" and "explained" sections of `result`'s document, and "prefix_reuse" where a cell
    measured the prefix mode, for kvbench.storage's `derived`."""
    sections = {
        "summary": [asdict(summary) for summary in result.summary],
        "explained": explain_result(result).to_dict(),
    }
    reuse = prefix_reuse_section(result)
    if reuse:
        sections["prefix_reuse"] = reuse
    return sections
