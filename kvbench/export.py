"""A comparison as text: the shared grid of cells, and its markdown, CSV, JSON and benchmark-action forms."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

from kvbench.compare import ALPHA, Comparison, Entry
from kvbench.units import format_bytes

FORMATS = ("table", "markdown", "csv", "json", "benchmark-action")


def _verdict(entry: Entry, threshold_pct: float | None) -> str:
    test = entry.versus_baseline
    if test is None:
        return "—"
    if test.low is None:
        return f"{entry.change_pct:+.1f}% (too few runs to judge)"
    interval = f"[{(test.low - 1) * 100:+.1f}%, {(test.high - 1) * 100:+.1f}%]"
    if entry.regression:
        word = f"REGRESSION (> {threshold_pct:g}%)"
    elif test.significant(ALPHA):
        word = "faster" if test.ratio < 1 else "slower"
    else:
        word = "no significant change"
    return f"{entry.change_pct:+.1f}% {interval} {word}"


def timing_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and rows shared by the terminal table and markdown: each file's mean ± std and peak
    memory, then each other file's change against the baseline."""
    files, base = comparison.files, comparison.baseline
    headers = ["measurement"]
    for loaded in files:
        label = loaded.label if loaded.result.complete else f"{loaded.label} (incomplete)"
        headers += [f"{label} mean ± std (s)", f"{label} peak mem"]
    others = [i for i in range(len(files)) if i != base]
    headers += [f"{files[i].label} vs {files[base].label}" for i in others]
    rows = []
    for row in comparison.rows:
        cells = [row.key.label()]
        for entry in row.entries:
            if entry is None:
                cells += ["—", "—"]
                continue
            std = f" ± {entry.summary.std_s:.3f}" if entry.summary.std_s is not None else ""
            cells += [f"{entry.summary.mean_s:.3f}{std} (n={entry.summary.n})", format_bytes(entry.peak_memory_bytes)]
        for index in others:
            entry = row.entries[index]
            cells.append(_verdict(entry, comparison.threshold_pct) if entry is not None else "—")
        rows.append(cells)
    return headers, rows


def speedup_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Cached over uncached speedup per cell, in each file."""
    headers = ["cell", *(f"{loaded.label} cached speedup" for loaded in comparison.files)]
    rows = []
    for row in comparison.rows:
        if row.key.mode != "cached" or not any(s is not None for s in row.speedups):
            continue
        label = row.key.cell.label()
        rows.append([label, *(f"{s:.2f}×" if s is not None else "—" for s in row.speedups)])
    return headers, rows


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def to_markdown(comparison: Comparison) -> str:
    parts = [_markdown_table(*timing_grid(comparison))]
    speedups = speedup_grid(comparison)
    if speedups[1]:
        parts.append(_markdown_table(*speedups))
    parts.append(method_note(comparison))
    if comparison.warnings:
        parts.append("\n".join(f"> warning: {w}  " for w in comparison.warnings))
    return "\n\n".join(parts) + "\n"


def method_note(comparison: Comparison) -> str:
    base = comparison.files[comparison.baseline].label
    return (
        f"Baseline: {base}. Change = other mean / baseline mean − 1, with a 95% confidence interval;"
        f" significant when Welch's t-test gives p < {ALPHA}."
    )


def records(comparison: Comparison) -> list[dict[str, Any]]:
    """One flat record per measurement per file: what CSV and JSON carry."""
    out = []
    for row in comparison.rows:
        for loaded, entry, speedup in zip(comparison.files, row.entries, row.speedups):
            if entry is None:
                continue
            test = entry.versus_baseline
            out.append(
                {
                    "file": loaded.path,
                    "label": loaded.label,
                    "baseline": loaded is comparison.files[comparison.baseline],
                    "complete": loaded.result.complete,
                    **asdict(row.key.cell),
                    "mode": row.key.mode,
                    "n": entry.summary.n,
                    "mean_s": entry.summary.mean_s,
                    "std_s": entry.summary.std_s,
                    "median_s": entry.summary.median_s,
                    "peak_memory_bytes": entry.peak_memory_bytes,
                    "cached_speedup": speedup,
                    "ratio_to_baseline": test.ratio if test else None,
                    "ci_low": test.low if test else None,
                    "ci_high": test.high if test else None,
                    "p_value": test.p_value if test else None,
                    "significant": test.significant(ALPHA) if test else None,
                    "regression": entry.regression,
                }
            )
    return out


def to_csv(comparison: Comparison) -> str:
    rows = records(comparison)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(comparison: Comparison) -> str:
    document = {
        "baseline": comparison.files[comparison.baseline].path,
        "files": [loaded.path for loaded in comparison.files],
        "threshold_pct": comparison.threshold_pct,
        "alpha": ALPHA,
        "test": "welch-t",
        "measurements": records(comparison),
        "warnings": comparison.warnings,
        "regressions": len(comparison.regressions),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_benchmark_action(comparison: Comparison) -> str:
    """The last file's mean latencies in github-action-benchmark's `customSmallerIsBetter` shape: a JSON
    list of {name, unit, value, range, extra}; the action tracks them from one CI run to the next."""
    index = len(comparison.files) - 1
    entries = []
    for row in comparison.rows:
        entry = row.entries[index]
        if entry is None:
            continue
        std = entry.summary.std_s
        entries.append(
            {
                "name": row.key.label(),
                "unit": "s",
                "value": round(entry.summary.mean_s, 6),
                "range": f"± {std:.6f}" if std is not None else "",
                "extra": f"n={entry.summary.n}; {comparison.files[index].label}",
            }
        )
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def render_text(comparison: Comparison, fmt: str) -> str:
    renderers = {
        "markdown": to_markdown,
        "csv": to_csv,
        "json": to_json,
        "benchmark-action": to_benchmark_action,
    }
    return renderers[fmt](comparison)
