"""What every comparison format shows, as rows of text: the timing grid, the cache's speedup, the serving
percentiles, which KV cache to use, the method note, and one flat record per measurement (CSV and JSON)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from kvbench.analysis.cache_choice import DEFAULT_GPU_MEMORY_BYTES, Missing, cache_verdicts, present
from kvbench.compare.judging import ALPHA, INCONCLUSIVE, PASS, PROCESS_MEANS_FROM, REGRESSION, Comparison, Entry
from kvbench.core.metrics import JUDGED_METRICS
from kvbench.core.stats import (
    CLOCK_TICK_S,
    OUTLIER_MIN_N,
    OUTLIER_Z,
    RatioTest,
    coefficient_of_variation,
    outward,
    resolvable_change,
    speedup_words,
)
from kvbench.core.units import format_bytes
from kvbench.model.modes import CACHED
from kvbench.model.records import SERVING_FIELDS
from kvbench.render.cells import serving_parts
from kvbench.render.verdicts import VERDICT_COLUMNS, verdict_row

# What the gate tests, in one sentence: the markdown's method note and the JSON export carry it.
GATE_RULE = (
    "judges each measurement by the interval printed beside it, the 95% confidence interval of its change"
    " widened for the number of measurements compared: pass when it lies wholly below +PCT%, regression"
    " (exit 1) when wholly above, inconclusive (exit 4, unless --pass-inconclusive) when it straddles"
    " +PCT%; it fails closed (exit 3) when a measurement cannot be judged"
)


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def _bound_pct(ratio: float, upper: bool, edges: tuple[float, ...]) -> str:
    """An interval bound in percent, rounded outward (a lower bound down, an upper bound up) so the
    printed interval holds the true one, with as many decimals as it takes to keep the bound on its own
    side of each edge (0% and the gate's +PCT%): "+0.04%", never a "+0.0%" beside "slower"."""
    value = round((ratio - 1) * 100, 9)  # so a float's last bit (0.99 -> -1.0000000000000009%) is no step
    for decimals in range(1, 7):
        scale = 10**decimals
        rounded = (math.ceil(value * scale) if upper else math.floor(value * scale)) / scale
        if all((rounded > edge) == (value > edge) and (rounded < edge) == (value < edge) for edge in edges):
            break
    return f"{rounded + 0.0:+.{decimals}f}%"  # + 0.0 turns -0.0 into 0.0


def interval_text(test: RatioTest, threshold_pct: float | None = None) -> str:
    """The interval of the change as printed: "[+0.2%, +18.5%]", its confidence named when not 95%."""
    assert test.low is not None and test.high is not None  # only a judged test has an interval
    edges = (0.0,) if threshold_pct is None else (0.0, threshold_pct)
    shown = f"[{_bound_pct(test.low, False, edges)}, {_bound_pct(test.high, True, edges)}]"
    if round(test.confidence, 4) != 0.95:
        shown += f" ({test.confidence:.1%} CI)"
    return shown


def _mean_cell(entry: Entry) -> str:
    summary = entry.summary
    std = f" ± {summary.std_s:.3f}" if summary.std_s is not None else ""
    notes = [f"n={summary.n}"]
    if summary.outlier_runs:
        notes.append("outlying run " + ", ".join(str(run + 1) for run in summary.outlier_runs))
    tested_on = entry.tested_on()
    if tested_on.startswith("process means"):
        # With unequal runs per process the mean of process means is not the mean shown: say which is tested.
        means = entry.samples["latency"]
        tested = sum(means) / len(means)
        differs = f", their mean {tested:.3f}" if f"{tested:.3f}" != f"{summary.mean_s:.3f}" else ""
        notes.append(f"tested on {len(means)} process means{differs}{tested_on.removeprefix('process means')}")
    elif entry.tested_on_process_means:
        # Against a side from fewer processes both are tested run by run: the row's note says why.
        notes.append(f"{entry.processes} processes, tested run by run")
    return f"{summary.mean_s:.3f}{std} ({'; '.join(notes)})"


def _memory_cell(entry: Entry, base: Entry | None) -> str:
    shown = format_bytes(entry.peak_memory_bytes)
    change = memory_change_pct(entry, base)
    return f"{shown} ({change:+.1f}%)" if change is not None else shown


def memory_change_pct(entry: Entry, base: Entry | None) -> float | None:
    """Peak memory against the baseline's, when both come from the same source (VRAM vs VRAM, RSS vs RSS)."""
    if base is None or base is entry or entry.peak_memory_bytes is None or not base.peak_memory_bytes:
        return None
    if entry.peak_memory_source != base.peak_memory_source:
        return None
    return (entry.peak_memory_bytes / base.peak_memory_bytes - 1) * 100


def compared_metrics(comparison: Comparison) -> list[str]:
    """Latency always; time to first token and per-token decode time where some file was judged on them."""
    present = {metric for row in comparison.rows for e in row.entries if e is not None for metric in e.tests}
    return [metric for metric in JUDGED_METRICS if metric == "latency" or metric in present]


def timing_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the terminal's table: each file's mean ± std and peak memory, then each other
    file's change against the baseline, per metric (means_grid and change_grid side by side)."""
    headers, rows = means_grid(comparison)
    for metric in compared_metrics(comparison):
        more_headers, more_rows = change_grid(comparison, metric)
        headers += more_headers[1:]
        rows = [row + more[1:] for row, more in zip(rows, more_rows)]
    return headers, rows


def means_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Each file's mean ± std and peak memory, per measurement."""
    headers = ["measurement"]
    for loaded in comparison.files:
        label = loaded.label if loaded.result.complete else f"{loaded.label} (incomplete)"
        headers += [f"{label} mean ± std (s)", f"{label} peak mem"]
    rows = []
    for row in comparison.rows:
        cells = [row.key.label()]
        base_entry = row.entries[comparison.baseline]
        for entry in row.entries:
            cells += ["—", "—"] if entry is None else [_mean_cell(entry), _memory_cell(entry, base_entry)]
        rows.append(cells)
    return headers, rows


def change_grid(comparison: Comparison, metric: str) -> tuple[list[str], list[list[str]]]:
    """Each other file's change in `metric` against the baseline, with its interval and verdict."""
    files, base = comparison.files, comparison.baseline
    others = [i for i in range(len(files)) if i != base]
    suffix = "" if metric == "latency" else f" ({JUDGED_METRICS[metric].label})"
    headers = ["measurement", *(f"{files[i].label} vs {files[base].label}{suffix}" for i in others)]
    rows = []
    for row in comparison.rows:
        cells = [row.key.label()]
        for index in others:
            entry = row.entries[index]
            if entry is None:
                # "Not judged" only where a gate asked for a judgement; otherwise the file simply has no such
                # measurement (another sweep), which the warnings count once per file.
                gated = comparison.threshold_pct is not None and row.entries[base] is not None
                cells.append("not judged: missing" if gated else "—")
            else:
                cells.append(_verdict(entry, metric, comparison))
        rows.append(cells)
    return headers, rows


def _verdict(entry: Entry, metric: str, comparison: Comparison) -> str:
    gated = metric == comparison.gate_metric and comparison.threshold_pct is not None
    if gated and entry.unjudged and not entry.settings_differ:
        return f"not judged: {entry.unjudged}"
    test = entry.tests.get(metric)
    if test is None:
        return "—"
    differ = f" (settings differ: {entry.settings_differ}; not judged)" if entry.settings_differ else ""
    if test.low is None:
        why = "no spread in either file's runs" if test.without_spread else "fewer than 2 runs"
        return f"{_pct(test.ratio)} (not judged: {why}){differ}"
    word = test.direction()
    pct = comparison.threshold_pct if gated else None
    if gated and entry.verdict == REGRESSION:
        word = f"REGRESSION (> {pct:g}%)"
    elif gated and entry.verdict == INCONCLUSIVE:
        word = f"INCONCLUSIVE (straddles +{pct:g}%{_settle_words(entry, short=True)})"
    elif gated and entry.verdict == PASS:
        word += f", pass (< +{pct:g}%)"
    return f"{_pct(test.ratio)} {interval_text(test, pct)} {word}{differ}"


def _settle_words(entry: Entry, short: bool = False) -> str:
    """How many runs would likely settle an inconclusive verdict at the noise seen."""
    unit = "process(es)" if entry.tested_on_process_means else "run(s)"
    if entry.settle_runs is None:
        return "" if short else "more runs are unlikely to settle it, as its estimate sits on the threshold"
    here, there = entry.settle_runs
    if short:
        return f"; ~{here} {unit} here, {there} in the baseline would likely settle it"
    return f"about {here} {unit} here and {there} in the baseline would likely settle it"


def inconclusive_lines(comparison: Comparison) -> list[str]:
    """One line per inconclusive measurement: its change and the interval against +PCT, then what to do
    about it: the noise of each side's runs, the smallest change so many runs resolve, and the ways out
    (the runs that would likely settle it, a wider threshold, a quieter machine); the gate's choice to pass
    them said on each."""
    lines = []
    metric = comparison.gate_metric
    for row, index in comparison.inconclusive:
        entry, base_entry = row.entries[index], row.entries[comparison.baseline]
        assert entry is not None
        test = entry.tests[metric]
        passed = " (passed: --pass-inconclusive)" if comparison.pass_inconclusive else ""
        lines.append(
            f"{row.key.label()} in {comparison.files[index].label}: {_pct(test.ratio)}"
            f" {interval_text(test, comparison.threshold_pct)} straddles +{comparison.threshold_pct:g}%"
            f"{_ways_out(entry, base_entry, test, metric)}{passed}"
        )
    return lines


def _ways_out(entry: Entry, base_entry: Entry | None, test: Any, metric: str) -> str:
    """What the noise allows and what to change: how much each side's runs vary, the smallest change so
    many runs resolve (a threshold below it likely leaves even unchanged code inconclusive), and the runs,
    threshold or machine that would settle it."""
    settle = _settle_words(entry)
    resolvable = resolvable_change(test)
    here = entry.samples[metric]
    there = base_entry.samples[metric] if base_entry is not None else []
    spread = [coefficient_of_variation(values) for values in (here, there)]
    if resolvable is None or spread[0] is None or spread[1] is None:
        return f"; {settle}"
    unit = "process(es)" if entry.tested_on_process_means else "run(s)"
    smallest = f"{resolvable:.0%}" if resolvable >= 0.1 else f"{resolvable:.1%}"
    return (
        f"; {unit} vary by {spread[0]:.1%} of their mean here and {spread[1]:.1%} in the baseline, so"
        f" {len(here)} and {len(there)} resolve a change of about {smallest} (below that, even unchanged code"
        f" is likely inconclusive); ways out: {settle}, a threshold above {smallest}, or a quieter machine"
        " (nothing else running)"
    )


def gate_summary(comparison: Comparison) -> str | None:
    """The gate's outcome in one line: counts of each verdict, and whether inconclusive ones passed."""
    if comparison.threshold_pct is None:
        return None
    verdicts = [e.verdict for row in comparison.rows for e in row.entries if e is not None and e.verdict]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in (REGRESSION, INCONCLUSIVE, PASS))
    unjudged = f", {len(comparison.unjudged)} not judged" if comparison.unjudged else ""
    outcome = {
        REGRESSION: "FAILED: a regression",
        "unjudged": "FAILED: could not judge every measurement",
        INCONCLUSIVE: "FAILED: inconclusive (too noisy to rule out a regression)",
        PASS: "passed",
    }[comparison.outcome or PASS]
    if comparison.outcome == PASS and comparison.inconclusive:
        outcome += " (inconclusive ones passed by --pass-inconclusive)"
    return f"gate at +{comparison.threshold_pct:g}% {outcome}: {counts}{unjudged}"


def speedup_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Cached over uncached speedup per cell, in each file, with its 95% interval."""
    headers = ["cell", *(f"{loaded.label} cached speedup" for loaded in comparison.files)]
    rows = []
    for row in comparison.rows:
        if row.key.mode != CACHED.name or not any(s is not None for s in row.speedup_tests):
            continue
        label = row.key.cell.label()
        rows.append([label, *(speedup_cell(test) for test in row.speedup_tests)])
    return headers, rows


def speedup_cell(test: RatioTest | None) -> str:
    """ "4.00× [3.80×, 4.21×]" when the cache is faster; "0.45× (cached 2.22× slower)" when it is not."""
    if test is None:
        return "—"
    shown = f"{test.ratio:.2f}×"
    if test.without_spread:
        shown += " (no spread: no interval)"
    elif test.low is not None and test.high is not None:
        low, high = outward(test.low, test.high)
        shown += f" [{low}×, {high}×]"
    if test.ratio < 1:
        shown += f" ({speedup_words(test).split(' (')[0]})"
    return shown


def percentile_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per measurement and file, the serving metrics' percentiles; no rows when no file recorded them."""
    headers = ["measurement", *(f"{loaded.label} (ms unless named)" for loaded in comparison.files)]
    rows = []
    for row in comparison.rows:
        cells = [" · ".join(serving_parts(e.summary)) if e is not None else "" for e in row.entries]
        if any(cells):
            rows.append([row.key.label(), *(cell or "—" for cell in cells)])
    return headers, rows


def method_note(comparison: Comparison) -> str:
    base = comparison.files[comparison.baseline].label
    family = comparison.family_sizes.get("latency", 0)
    note = (
        f"Baseline: {base}. Change = other mean / baseline mean − 1, means over all runs (outlying runs"
        f" included; flagged from {OUTLIER_MIN_N} runs at a median-based z-score above {OUTLIER_Z:g}), with an"
        " interval from one t statistic on the log of the ratio (delta method, Welch–Satterthwaite df):"
        " faster or slower exactly when the interval excludes 0%; each side's standard deviation is taken"
        f" as at least {CLOCK_TICK_S * 1e6:g} µs, the resolution times are stored to."
        f" The {family} latency comparison(s) are one family (each metric its own): each interval is at"
        f" confidence 1 − {ALPHA:.0%}/{max(family, 1)} (Bonferroni), so all of them hold together at"
        f" {1 - ALPHA:.0%} and the chance of any false call, a word or a gate verdict, is at most {ALPHA:.0%}."
        f" With {PROCESS_MEANS_FROM} or more processes a measurement is tested on its process means."
    )
    if comparison.threshold_pct is not None:
        rule = GATE_RULE.replace("PCT", f"{comparison.threshold_pct:g}")
        note += f" The gate on {JUDGED_METRICS[comparison.gate_metric].label} {rule}."
    return note


def records(comparison: Comparison) -> list[dict[str, Any]]:
    """One flat record per measurement per file, labelled with that file's own settings: what CSV and
    JSON carry."""
    out = []
    for row in comparison.rows:
        base_entry = row.entries[comparison.baseline]
        for loaded, entry, speedup in zip(comparison.files, row.entries, row.speedup_tests):
            if entry is None:
                continue
            test = entry.versus_baseline
            record = {
                "file": loaded.path,
                "label": loaded.label,
                "baseline": loaded is comparison.files[comparison.baseline],
                "complete": loaded.result.complete,
                **asdict(entry.key.cell),
                "mode": entry.key.mode,
                "compared_with": row.key.label(),
                "n": entry.summary.n,
                "mean_s": entry.summary.mean_s,
                "std_s": entry.summary.std_s,
                "cv": coefficient_of_variation(entry.latencies_s),
                "median_s": entry.summary.median_s,
                "outlier_runs": " ".join(str(run) for run in entry.summary.outlier_runs),
                "peak_memory_bytes": entry.peak_memory_bytes,
                "peak_memory_source": entry.peak_memory_source,
                "peak_memory_change_pct": memory_change_pct(entry, base_entry),
                "cached_speedup": speedup.ratio if speedup else None,
                "cached_speedup_low": speedup.low if speedup else None,
                "cached_speedup_high": speedup.high if speedup else None,
                "ratio_to_baseline": test.ratio if test else None,
                "ci_low": test.low if test else None,
                "ci_high": test.high if test else None,
                "ci_confidence": test.confidence if test and test.low is not None else None,
                "p_value": test.p_value if test else None,
                "significant": test.significant() if test else None,
                **{name: getattr(entry.summary, name) for name in SERVING_FIELDS},
            }
            for metric in [m for m in JUDGED_METRICS.values() if m.name != "latency"]:
                values = entry.samples.get(metric.name)
                other = entry.tests.get(metric.name)
                # A mean the summary holds (tpot_mean_s) is set above with the serving figures, unless the runs
                # lack per-token times; then, as for one it lacks (ttft_mean_s), the mean of what the tests take.
                if record.get(metric.mean_field) is None:
                    record[metric.mean_field] = sum(values) / len(values) if values else None
                record[f"{metric.name}_ratio_to_baseline"] = other.ratio if other else None
                record[f"{metric.name}_ci_low"] = other.low if other else None
                record[f"{metric.name}_ci_high"] = other.high if other else None
            record["regression"] = entry.regression
            record["verdict"] = entry.verdict
            record["settle_runs"] = entry.settle_runs[0] if entry.settle_runs else None
            record["settle_runs_baseline"] = entry.settle_runs[1] if entry.settle_runs else None
            record["settings_differ"] = entry.settings_differ
            record["tested_on"] = entry.tested_on()
            record["unjudged"] = entry.unjudged
            out.append(record)
    return out


def verdict_grid(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per file, each group of cells that differ only in their cache implementation: every cache against the
    dynamic cache (kvbench.analysis.cache_choice), "—" where a figure is missing and the reason in the last column."""
    headers = ["file", "settings", *(header for header, _, _ in VERDICT_COLUMNS), "why —"]
    rows = []
    for loaded in comparison.files:
        for group in cache_verdicts(loaded.result):
            for verdict in group.verdicts:
                missing = "; ".join(f"{figure}: {reason}" for figure, reason in verdict.missing())
                rows.append([loaded.label, group.title(), *verdict_row(verdict), missing])
    return headers, rows


def verdict_records(comparison: Comparison) -> list[dict[str, Any]]:
    """The verdict grid's figures as numbers, one record per cache implementation per group per file (None
    where a figure is missing, its reason under "missing"), with what fits in the default GPU memory sizes."""
    out = []
    for loaded in comparison.files:
        for group in cache_verdicts(loaded.result):
            for verdict in group.verdicts:
                test, saved = present(verdict.latency_ratio), present(verdict.memory_saved_bytes)
                share, agreement = present(verdict.memory_saved_share), present(verdict.agreement)
                fits = group.what_fits(verdict, DEFAULT_GPU_MEMORY_BYTES)
                out.append(
                    {
                        "file": loaded.path,
                        "label": loaded.label,
                        **asdict(verdict.cell.settings),
                        "reference": verdict.is_reference,
                        "latency_ratio_to_dynamic": test.ratio if test else None,
                        "latency_ci_low": test.low if test else None,
                        "latency_ci_high": test.high if test else None,
                        "kv_cache_measured_bytes": verdict.cell.kv_cache_measured_bytes,
                        "kv_cache_saved_bytes": saved,
                        "kv_cache_saved_share": share,
                        **{
                            name: getattr(agreement, name) if agreement else None
                            for name in (
                                "agreement_token_share",
                                "agreement_first_divergence",
                                "agreement_top1_share",
                                "agreement_kl_mean_nats",
                            )
                        },
                        "kv_bytes_per_position": None if isinstance(fits, Missing) else fits.bytes_per_position,
                        "weight_bytes": None if isinstance(fits, Missing) else fits.weight_bytes,
                        "what_fits": []
                        if isinstance(fits, Missing)
                        else [
                            {
                                "gpu_memory_bytes": fit.gpu_memory_bytes,
                                "longest_context_at_batch_1": fit.longest_context,
                                "largest_batch": fit.largest_batch,
                            }
                            for fit in fits.fits
                        ],
                        "missing": dict(verdict.missing()),
                    }
                )
    return out
