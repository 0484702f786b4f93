"""Judge each measurement of results files against the baseline's (matched by kvbench.compare.matching): the
tests, their family, the gate's verdicts and what it cannot judge. No torch, no display."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvbench.compare.matching import (
    NO_SUCH_MEASUREMENT,
    LoadedFile,
    MeasurementKey,
    align,
    baseline_index,
    cell_state,
    differences,
    differences_of,
    expand_paths,
    failed_everywhere,
    named,
    refuse_repeated_files,
    unmatched_counts,
)
from kvbench.core.errors import KvbenchError
from kvbench.core.metrics import JUDGED_METRICS
from kvbench.core.stats import (
    NOISY_CV,
    RatioTest,
    cached_speedup,
    coefficient_of_variation,
    compare_means,
    noise_warning,
    process_aware_samples,
    runs_to_settle,
)
from kvbench.model.modes import CACHED, UNCACHED
from kvbench.model.records import BenchmarkResult, CellState, ModeSummary, RunRecord
from kvbench.storage.document import read_result

# The false-alarm rate of a whole comparison, per metric: every measurement (cell × mode × file) is one
# interval of a family of m, each at confidence 1 - ALPHA / m (Bonferroni), so that all m hold together
# with confidence at least 1 - ALPHA, and any word or verdict read from them is false in at most ALPHA of
# comparisons, whatever it is read against (0%, or the gate's +PCT%).
ALPHA = 0.05
# The gate's three verdicts on a measurement, from the family-wide interval of its change against
# +PCT: wholly below (a regression of more than PCT is ruled out), wholly above, or neither.
PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
# The gate's answer when it could not judge every measurement it was asked to: it fails closed.
UNJUDGED = "unjudged"
# `compare --fail-on-regression`'s exit code for each answer of the gate; `kvbench gate` reads them back.
EXIT_CODES = {PASS: 0, REGRESSION: 1, UNJUDGED: 3, INCONCLUSIVE: 4}
# From this many processes, a measurement is tested on its per-process means (see metric_samples).
PROCESS_MEANS_FROM = 3


@dataclass
class Entry:
    """One measurement in one file, judged against the baseline file's matching measurement."""

    key: MeasurementKey  # this file's own settings, which may differ from the row's (the baseline's)
    summary: ModeSummary  # recomputed from the runs, never a stored summary
    samples: dict[str, list[float]]  # per metric, what the tests take: one value per run, or per process
    peak_memory_bytes: int | None
    peak_memory_source: str = ""
    processes: int = 1  # how many processes measured its runs
    per_run: dict[str, list[float]] = field(default_factory=dict)  # per metric, one value per run
    tests: dict[str, RatioTest] = field(default_factory=dict)  # per metric, against the baseline
    verdict: str | None = None  # the gate's: PASS, REGRESSION or INCONCLUSIVE; None without a judgement
    # For an inconclusive verdict: the runs (processes, when tested on process means) here and in the
    # baseline that would likely settle it at the noise seen; None where no number is likely to.
    settle_runs: tuple[int, int] | None = None
    settings_differ: str | None = None  # paired with a baseline measurement of other settings: what differs
    # Its cell failed after some runs (a measuring process killed, say): the runs kept are shown, not judged.
    cell_failed: str | None = None
    unjudged: str | None = None  # why the gate could not judge this measurement
    # Per file this one was tested against (the baseline, or for the baseline each other file): whether
    # that test took process means. A side from 3 or more processes against one from fewer is tested run
    # by run, so its own process count alone does not say how it was tested.
    tested_against: dict[str, bool] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return self.verdict == REGRESSION

    @property
    def tested_on_process_means(self) -> bool:
        return self.processes >= PROCESS_MEANS_FROM

    def tested_on(self) -> str:
        """How its tests took its runs: "process means", "runs", or, for a baseline tested both ways,
        "process means; runs against B"."""
        if not self.tested_on_process_means or (self.tested_against and not any(self.tested_against.values())):
            return "runs"
        by_run = [label for label, on_means in self.tested_against.items() if not on_means]
        return "process means" + (f"; runs against {', '.join(by_run)}" if by_run else "")

    @property
    def latencies_s(self) -> list[float]:
        return self.samples["latency"]

    @property
    def versus_baseline(self) -> RatioTest | None:
        """The latency test against the baseline; None for the baseline itself."""
        return self.tests.get("latency")

    def change_of(self, metric: str) -> float | None:
        """The change against the baseline in percent, by a judged metric; None for the baseline itself."""
        test = self.tests.get(metric)
        return (test.ratio - 1) * 100 if test is not None else None


@dataclass
class Row:
    key: MeasurementKey
    entries: list[Entry | None]  # one per file, None where the file lacks it
    speedup_tests: list[RatioTest | None] = field(default_factory=list)  # uncached over cached, per file

    @property
    def speedups(self) -> list[float | None]:
        return [test.ratio if test is not None else None for test in self.speedup_tests]


@dataclass
class Comparison:
    files: list[LoadedFile]
    baseline: int
    rows: list[Row]
    warnings: list[str]
    threshold_pct: float | None
    gate_metric: str = "latency"
    # One line per measurement the gate cannot judge; with the gate on, these fail it (exit 3).
    unjudged: list[str] = field(default_factory=list)
    # Per metric, how many tests share one family (each interval at confidence 1 - ALPHA / that many).
    family_sizes: dict[str, int] = field(default_factory=dict)
    # Whether an inconclusive verdict passes the gate (--pass-inconclusive); by default it fails it.
    pass_inconclusive: bool = False

    def _with_verdict(self, verdict: str) -> list[tuple[Row, int]]:
        return [
            (row, index)
            for row in self.rows
            for index, entry in enumerate(row.entries)
            if entry is not None and entry.verdict == verdict
        ]

    @property
    def regressions(self) -> list[tuple[Row, int]]:
        return self._with_verdict(REGRESSION)

    @property
    def inconclusive(self) -> list[tuple[Row, int]]:
        return self._with_verdict(INCONCLUSIVE)

    @property
    def outcome(self) -> str | None:
        """The gate's one answer, the worst first: REGRESSION, UNJUDGED, INCONCLUSIVE (unless passed by
        choice), else PASS; None without the gate."""
        if self.threshold_pct is None:
            return None
        if self.regressions:
            return REGRESSION
        if self.unjudged:
            return UNJUDGED
        if self.inconclusive and not self.pass_inconclusive:
            return INCONCLUSIVE
        return PASS


def metric_samples(runs: list[RunRecord]) -> dict[str, list[float]]:
    """Each metric's values as the tests take them: latency, time to first token, and decode time per
    token, (latency - first token) / (new tokens - 1), one per run; or, when the runs come from 3 or more
    processes (--processes), one per process, its mean, so the standard error includes the drift between
    processes that runs inside one process cannot show. A metric some run lacks is left out."""
    processes = [(run.host, run.pid) for run in runs]
    return {metric: process_aware_samples(values, processes) for metric, values in _per_run(runs).items()}


def _per_run(runs: list[RunRecord]) -> dict[str, list[float]]:
    per_run = {}
    for name, metric in JUDGED_METRICS.items():
        values = [metric.per_run(run) for run in runs]
        present = [value for value in values if value is not None]
        if len(present) == len(values):
            per_run[name] = present
    return per_run


def _measurements(result: BenchmarkResult) -> dict[MeasurementKey, Entry]:
    resolved = {
        cell.id: replace(cell.settings, dtype=(cell.model or {}).get("dtype", cell.settings.dtype)) for cell in result.cells
    }
    # Two cells resolving to one key (--dtype auto --dtype float32 on a CPU) are both kept, each named by
    # the dtype it asked for: dropping either would lose a measurement.
    seen = list(resolved.values())
    found = {}
    for cell in result.cells:
        settings = resolved[cell.id]
        written = cell.settings.dtype if seen.count(settings) > 1 else ""
        for mode in result.modes:
            runs = result.runs_of(cell.id, mode)
            if not runs:
                continue
            key = MeasurementKey(settings, mode, written)
            summary = result.summary_of(cell.id, mode)
            assert summary is not None  # the mode has runs
            memory, source = summary.peak_memory()
            processes = len({(run.host, run.pid) for run in runs})
            entry = Entry(key, summary, metric_samples(runs), memory, source, processes, _per_run(runs))
            if CellState(cell.status).failed:
                entry.cell_failed = f"{cell.status}: {cell.reason}" if cell.reason else str(cell.status)
            found[key] = entry
    return found


def _noise_warnings(files: list[LoadedFile], noisy: list[list[Entry]], each: bool) -> list[str]:
    """A line per noisy measurement where each is asked for (--verbose, the gate), else a line per file:
    a sweep run on a busy machine is noisy throughout, and one line each would bury the comparison."""
    lines = []
    for loaded, entries in zip(files, noisy):
        if each or len(entries) == 1:
            lines += [f"{entry.key.label()} in {loaded.label}: {noise_warning(entry.latencies_s)}" for entry in entries]
        elif entries:
            worst = max(coefficient_of_variation(entry.latencies_s) or 0.0 for entry in entries)
            lines.append(
                f"{loaded.label}: {len(entries)} measurements' runs vary by more than {NOISY_CV:.0%} of their mean"
                f" (up to {worst:.1%}): too noisy to trust; stop other work on the machine or add runs;"
                " --verbose lists each"
            )
    return lines


def compare_results(
    paths: Sequence[str | Path],
    baseline: str | None = None,
    threshold_pct: float | None = None,
    gate_metric: str = "latency",
    allow_single: bool = False,
    names: Sequence[str] = (),
    pass_inconclusive: bool = False,
    list_unmatched: bool = False,
) -> Comparison:
    """Read the files, match their measurements, and judge each against the baseline's. With a
    threshold (the gate), each measurement's `gate_metric` change gets a verdict from its family-wide
    interval (see gate_verdict); one it cannot judge goes into `unjudged`. `allow_single` accepts one
    file (for exporting it, with nothing to judge); `pass_inconclusive` lets inconclusive verdicts pass.
    `names` labels the files, in order, in every table, export and verdict (their file names otherwise).
    Measurements only one side holds (files of other sweeps) are one line each with the gate or
    `list_unmatched`, else counted in one warning per file."""
    if threshold_pct is not None and (not math.isfinite(threshold_pct) or threshold_pct < 0):
        raise KvbenchError(
            f"the regression threshold (--fail-on-regression) must be a non-negative percentage such as 5, not {threshold_pct}"
        )
    if threshold_pct == 0 and not pass_inconclusive:
        raise KvbenchError(zero_threshold_problem("--fail-on-regression 0"))
    if gate_metric not in JUDGED_METRICS:
        raise KvbenchError(f"the gate metric cannot be {gate_metric!r}; choose one of {', '.join(JUDGED_METRICS)}")
    expanded = expand_paths(paths)
    refuse_repeated_files(expanded)
    if len(expanded) < (1 if allow_single else 2):
        raise KvbenchError("compare needs at least two results files; pass two files or a directory of them")
    files = [LoadedFile(str(path), label, read_result(path)) for path, label in zip(expanded, named(expanded, names))]
    base_index = baseline_index(files, baseline)
    base_label = files[base_index].label
    measured = [_measurements(f.result) for f in files]
    base = measured[base_index]
    warnings = differences(files)
    # Each row is a baseline measurement, or one that no baseline measurement matches.
    row_keys = list(base)
    placed: list[dict[MeasurementKey, MeasurementKey]] = []
    for index, found in enumerate(measured):
        if index == base_index:
            mapping = {key: key for key in found}
        else:
            mapping, notes = align(base, found, files[index].label)
            warnings += notes
        for key in found:
            if key not in mapping:
                mapping[key] = key
                if key not in row_keys:
                    row_keys.append(key)
        placed.append(mapping)
    rows = []
    unjudged: list[str] = []
    # Without the gate nothing hangs on a measurement that only one side holds: files of other sweeps would
    # bury the comparison under one line each, so they are counted per file. The gate fails on each: named.
    each_unmatched = list_unmatched or threshold_pct is not None
    lacking = [0] * len(files)  # per file, the baseline's measurements it has no cell for
    extra = [0] * len(files)  # per file, its measurements the baseline has no cell for
    noisy: list[list[Entry]] = [[] for _ in files]  # per file, its measurements too noisy to trust
    for row_key in row_keys:
        entries: list[Entry | None] = []
        for found, mapping in zip(measured, placed):
            own = next((key for key, target in mapping.items() if target == row_key), None)
            entries.append(found[own] if own is not None else None)
        base_entry = entries[base_index]
        # A baseline cell that failed (oom, error, interrupted) has nothing to regress from, yet the gate
        # was asked to judge it: it fails closed, like a measurement missing from a compared file.
        base_failed = cell_state(files[base_index].result, row_key) if base_entry is None else None
        for index, entry in enumerate(entries):
            if entry is not None and noise_warning(entry.latencies_s):
                noisy[index].append(entry)
            if index == base_index:
                continue
            where = f"{row_key.label()} in {files[index].label}"
            if base_entry is None:
                if entry is not None and base_failed:
                    entry.unjudged = f"not measured in the baseline {base_label} ({base_failed})"
                    unjudged.append(f"{where}: {entry.unjudged}")
                elif entry is not None:
                    extra[index] += 1
                continue
            if entry is None:
                state = cell_state(files[index].result, row_key)
                if state is None and not each_unmatched:
                    lacking[index] += 1
                else:
                    unjudged.append(f"{where}: missing ({state or NO_SUCH_MEASUREMENT})")
                continue
            if entry.key != row_key:
                entry.settings_differ = differences_of(entry.key, row_key)
            mixed = entry.tested_on_process_means != base_entry.tested_on_process_means
            entry.tested_against[base_label] = entry.tested_on_process_means and not mixed
            base_entry.tested_against[files[index].label] = base_entry.tested_on_process_means and not mixed
            for metric in JUDGED_METRICS:
                # Process means against single runs would mix two kinds of spread: both sides run by run.
                ours = (entry.per_run if mixed else entry.samples).get(metric)
                theirs = (base_entry.per_run if mixed else base_entry.samples).get(metric)
                if ours and theirs and _positive(ours) and _positive(theirs):
                    test = compare_means(ours, theirs)
                    # Identical runs on both sides would give a zero-width interval, a false certainty.
                    entry.tests[metric] = replace(test, low=None, high=None, p_value=None) if test.without_spread else test
            entry.unjudged = _why_unjudged(entry, base_entry, gate_metric, base_label)
            if entry.unjudged:
                unjudged.append(f"{where}: {entry.unjudged}")
        if base_entry is None and not base_failed and each_unmatched:
            warnings.append(f"{row_key.label()}: not in the baseline {base_label}; shown, not judged")
        rows.append(Row(row_key, entries, [_speedup(f.result, e) for f, e in zip(files, entries)]))
    if not rows:
        raise KvbenchError("none of these files holds a finished measurement; rerun kvbench run")
    warnings += _noise_warnings(files, noisy, each=each_unmatched)
    if not each_unmatched:
        warnings += unmatched_counts(files, base_index, lacking, extra)
    family_sizes = _adjust_for_family(rows)
    for row in rows:
        base_entry = row.entries[base_index]
        for entry in row.entries:
            if entry is None or entry.unjudged or threshold_pct is None:
                continue
            gate_test = entry.tests.get(gate_metric)
            entry.verdict = gate_verdict(gate_test, threshold_pct)
            if entry.verdict == INCONCLUSIVE and gate_test is not None and base_entry is not None:
                factor = runs_to_settle(gate_test, 1 + threshold_pct / 100)
                if factor is not None and math.isfinite(factor):
                    here, there = len(entry.samples[gate_metric]), len(base_entry.samples[gate_metric])
                    entry.settle_runs = (max(math.ceil(factor * here), here + 1), max(math.ceil(factor * there), there + 1))
    nothing_judged = (
        threshold_pct is not None
        and not unjudged
        and not any(entry is not None and entry.verdict is not None for row in rows for entry in row.entries)
    )
    failed, skipped = failed_everywhere(files, base_index, set(row_keys))
    unjudged += failed
    warnings += skipped
    if nothing_judged:
        unjudged.append(f"nothing to judge: no measurement of the baseline {base_label} is in another file")
    return Comparison(files, base_index, rows, warnings, threshold_pct, gate_metric, unjudged, family_sizes, pass_inconclusive)


def zero_threshold_problem(given: str) -> str:
    """Why a threshold of 0% is refused unless inconclusive verdicts pass: a pass needs the interval of the
    change wholly below +0%, which the interval of an unchanged measurement reaches in at most 2.5% of
    comparisons, however many runs it has, so unchanged code would end inconclusive almost always."""
    return (
        f"{given} can never pass unchanged code: a pass needs the whole interval of a change below +0%, which"
        " an unchanged measurement's interval reaches in at most 2.5% of comparisons however many runs it has,"
        " so the gate would end inconclusive (exit 4) almost every time; give a threshold above the drift between"
        " reruns, such as 5, or add --pass-inconclusive to fail only where the data show a slowdown"
    )


def gate_verdict(test: RatioTest | None, threshold_pct: float | None) -> str | None:
    """The gate's rule on a (family-wide) interval of the change: REGRESSION when it lies wholly above
    +threshold_pct, PASS when wholly below (a regression of more than threshold_pct is ruled out), else
    INCONCLUSIVE; None without a threshold or an interval."""
    if threshold_pct is None or test is None or test.low is None or test.high is None:
        return None
    limit = 1 + threshold_pct / 100
    if test.low > limit:
        return REGRESSION
    if test.high < limit:
        return PASS
    return INCONCLUSIVE


def _why_unjudged(entry: Entry, base: Entry, metric: str, base_label: str) -> str | None:
    name = JUDGED_METRICS[metric].label
    for failed, where in ((entry.cell_failed, "its cell"), (base.cell_failed, f"the baseline {base_label}'s cell")):
        if failed:
            return f"{where} failed after some runs ({failed}): the runs it kept are shown, not judged"
    if entry.settings_differ:
        return f"its settings differ from the baseline's ({entry.settings_differ}): not the same measurement"
    if entry.tested_on_process_means != base.tested_on_process_means:
        return (
            f"its runs come from {entry.processes} process(es) and the baseline's from {base.processes}:"
            f" tested run by run, blind to the drift between processes; rerun both with the same --processes"
        )
    if metric not in entry.samples or metric not in base.samples:
        side = "this file" if metric not in entry.samples else f"the baseline {base_label}"
        return f"no {name} recorded in {side}"
    n, n_base = len(entry.samples[metric]), len(base.samples[metric])
    if n < 2 or n_base < 2:
        return f"{n} run(s) here and {n_base} in the baseline; judging needs at least 2 in each"
    if not _positive(entry.samples[metric] + base.samples[metric]):
        return f"a {name} that is not a finite positive number"
    test = entry.tests.get(metric)
    if test is not None and test.without_spread:
        return (
            f"every run took the same {name} in both files: no spread, so no interval;"
            " a clock this coarse cannot judge a change"
        )
    return None


def _positive(values: list[float]) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def _adjust_for_family(rows: list[Row]) -> dict[str, int]:
    """Widen every judged interval of a metric's family of m to confidence 1 - ALPHA / m (Bonferroni):
    all m intervals then hold together with confidence 1 - ALPHA, so each word (faster, slower: against
    0%) and each gate verdict (against +PCT%) read from them is false in at most ALPHA of comparisons,
    and the one interval printed is the one both are read from. Holm's step-down levels depend on the
    p-values' order against one null: tested against +PCT% they gave the most-slowed measurement the
    least-widened interval, so turning the gate on changed the words and false "slower" reached 24%;
    tested against 0% they let a change at exactly +PCT% pass the gate's bound. A level that depends
    on no p-value serves both, and changes no word when the gate is turned on."""
    sizes = {}
    for metric in JUDGED_METRICS:
        family = [
            entry
            for row in rows
            for entry in row.entries
            if entry is not None and metric in entry.tests and entry.tests[metric].judged
        ]
        for entry in family:
            entry.tests[metric] = entry.tests[metric].at(1 - ALPHA / len(family))
        sizes[metric] = len(family)
    return sizes


def _speedup(result: BenchmarkResult, entry: Entry | None) -> RatioTest | None:
    """Uncached over cached mean latency in the entry's cell, from the runs, with its 95% interval."""
    if entry is None:
        return None
    cell = entry.summary.cell
    uncached = [run.latency_s for run in result.runs_of(cell, UNCACHED.name)]
    cached = [run.latency_s for run in result.runs_of(cell, CACHED.name)]
    if not uncached or not cached:
        return None
    return cached_speedup(uncached, cached)
