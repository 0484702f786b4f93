"""The gate's verdicts end to end: it fails closed (exit 3) on what it cannot judge, reading refuses
impossible times, and a printed interval never contradicts the word beside it."""

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kvbench.analysis.derived import derived_sections
from kvbench.cli import app
from kvbench.compare.formats.grids import timing_grid
from kvbench.compare.judging import EXIT_CODES, UNJUDGED, compare_results
from kvbench.core.errors import KvbenchError
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result
from tests.conftest import make_result

EXIT_UNJUDGED = EXIT_CODES[UNJUDGED]

runner = CliRunner()
STEADY = [1.00, 1.01, 0.99, 1.00]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def save(folder: Path, name: str, result) -> Path:
    """A results file as a run's closing save writes it, with its derived sections."""
    path = folder / f"{name}.json"
    write_result(result, path, derived_sections(result))
    return path


def not_judged_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("not judged:")]


# --- fails closed -------------------------------------------------------------------------------------


def test_one_run_in_the_compared_file_fails_closed(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": STEADY, "uncached": STEADY}))
    thin = save(tmp_path, "thin", make_result({"cached": [1.0], "uncached": STEADY}))
    result = invoke("compare", base, thin, "--fail-on-regression", 5)
    assert result.exit_code == EXIT_UNJUDGED == 3, result.output
    lines = not_judged_lines(result)
    assert len(lines) == 1 and "cached in thin" in lines[0] and "1 run(s) here and 4 in the baseline" in lines[0]
    # Without the gate the same comparison is only reported.
    ungated = invoke("compare", base, thin)
    assert ungated.exit_code == 0 and len(not_judged_lines(ungated)) == 1


def test_one_run_in_the_baseline_fails_closed(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": [1.0]}))
    other = save(tmp_path, "other", make_result({"cached": STEADY}))
    result = invoke("compare", base, other, "--fail-on-regression", 5)
    assert result.exit_code == 3
    assert "4 run(s) here and 1 in the baseline" in not_judged_lines(result)[0]


@pytest.mark.parametrize("status, reason", [("oom", "CUDA out of memory"), ("error", "boom"), ("incomplete", None)])
def test_a_measurement_missing_from_a_compared_file_fails_closed(tmp_path, status, reason):
    base = save(tmp_path, "base", make_result({"cached": STEADY, "uncached": STEADY}))
    broken = make_result({"cached": STEADY, "uncached": STEADY})
    broken.runs = [run for run in broken.runs if run.mode == "cached"]  # no uncached run at all
    broken.cells[0].status, broken.cells[0].reason = status, reason
    broken.complete = status != "incomplete"
    other = save(tmp_path, "other", broken)
    result = invoke("compare", base, other, "--fail-on-regression", 5)
    assert result.exit_code == 3, result.output
    lines = not_judged_lines(result)
    missing = [line for line in lines if "uncached in other: missing" in line]
    assert len(missing) == 1 and f"its cell is {status}" in missing[0]
    if reason:
        assert reason in missing[0]
    # A failed cell's cached runs are shown, not judged; an interrupted cell's finished runs are judged.
    assert len(lines) == (2 if status in ("oom", "error") else 1)


def test_a_whole_cell_missing_fails_closed(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": STEADY}, max_new_tokens=100))
    empty = make_result({"cached": STEADY}, max_new_tokens=100)
    empty.runs, empty.cells[0].status = [], "oom"
    other = save(tmp_path, "other", empty)
    comparison = compare_results([base, other], threshold_pct=5)
    assert comparison.outcome == "unjudged" and len(comparison.unjudged) == 1
    assert invoke("compare", base, other, "--fail-on-regression", 5).exit_code == 3


def test_a_regression_outranks_an_unjudged_measurement(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": STEADY, "uncached": STEADY}))
    mixed = save(tmp_path, "mixed", make_result({"cached": [1.5, 1.51, 1.49, 1.5], "uncached": [1.0]}))
    result = invoke("compare", base, mixed, "--fail-on-regression", 5)
    assert result.exit_code == 1
    assert len(not_judged_lines(result)) == 1


def test_a_gate_on_a_metric_the_files_lack_fails_closed(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": STEADY}))  # make_result records no first token
    other = save(tmp_path, "other", make_result({"cached": STEADY}))
    result = invoke("compare", base, other, "--fail-on-regression", 5, "--gate-metric", "ttft")
    assert result.exit_code == 3
    assert "no time to first token recorded" in not_judged_lines(result)[0]
    assert invoke("compare", base, other, "--fail-on-regression", 5).exit_code == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_threshold_that_can_never_fail_is_refused(tmp_path, value):
    a = save(tmp_path, "a", make_result())
    result = invoke("compare", a, a, f"--fail-on-regression={value}")
    assert result.exit_code == 2
    assert "non-negative percentage" in result.stderr


def test_an_unknown_gate_metric_is_refused(tmp_path):
    a, b = save(tmp_path, "a", make_result()), save(tmp_path, "b", make_result())
    result = invoke("compare", a, b, "--gate-metric", "memory")
    assert result.exit_code == 2 and "gate metric cannot be 'memory'" in result.stderr


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -3.32])
def test_reading_refuses_times_no_run_can_take(tmp_path, bad):
    path = save(tmp_path, "bad", make_result({"cached": STEADY}))
    data = json.loads(path.read_text())
    data["runs"][2]["latency_s"] = bad
    path.write_text(json.dumps(data))  # json writes NaN and Infinity, which are not JSON: refused as it is read
    not_json = bad != bad or bad in (float("inf"), float("-inf"))
    named = "(NaN|Infinity) is not a JSON number" if not_json else "run 2 of cached .* has latency_s .*not a number of seconds"
    with pytest.raises(KvbenchError, match=named):
        read_result(path)
    good = save(tmp_path, "good", make_result({"cached": STEADY}))
    result = invoke("compare", good, path, "--fail-on-regression", 5)
    assert result.exit_code == 2 and "bad.json" in result.stderr


def test_reading_refuses_a_first_token_after_the_end(tmp_path):
    path = save(tmp_path, "bad", make_result({"cached": STEADY}))
    data = json.loads(path.read_text())
    data["runs"][0]["time_to_first_token_s"] = 5.0
    path.write_text(json.dumps(data))
    with pytest.raises(KvbenchError, match="first token after its end"):
        read_result(path)


def test_compare_shows_the_mean_of_the_runs_not_a_stored_summary(tmp_path):
    base = save(tmp_path, "base", make_result({"cached": STEADY}))
    path = save(tmp_path, "edited", make_result({"cached": [2.0, 2.02, 1.98, 2.0]}))
    data = json.loads(path.read_text())
    data["summary"][0]["mean_s"] = 1.0  # a stored summary that disagrees with the runs
    path.write_text(json.dumps(data))
    comparison = compare_results([base, path])
    entry = comparison.rows[0].entries[1]
    assert entry.summary.mean_s == pytest.approx(2.0)
    assert timing_grid(comparison)[1][0][3].startswith("2.000 ± ")


# --- the printed interval and the word beside it --------------------------------------------------------

VERDICT = re.compile(
    r"^(?P<change>[+-]\d+\.\d)% \[(?P<low>[+-]\d+\.\d+)%, (?P<high>[+-]\d+\.\d+)%\]"
    r"(?: \((?P<confidence>[\d.]+)% CI\))? (?P<word>.+)$"
)


def check_verdict(text: str, pct: int | None) -> None:
    """The printed bounds (rounded outward, with more decimals near 0% and +PCT%) always agree with the
    words beside them, strictly: "slower" only beside a lower bound printed above 0."""
    if text.endswith("(not judged: no spread in either file's runs)") or "every run took the same" in text:
        return  # identical runs on both sides: no interval at all (tests/test_gate.py)
    match = VERDICT.match(text)
    assert match, text
    low, high, word = float(match["low"]), float(match["high"]), match["word"]
    assert low <= float(match["change"]) <= high
    if pct is not None:
        gate = word.split(", ")[-1] if not word.startswith(("REGRESSION", "INCONCLUSIVE")) else word
        if gate.startswith("REGRESSION"):
            assert low > pct, text
        elif gate.startswith("INCONCLUSIVE"):
            assert low <= pct <= high, text
        else:
            assert gate == f"pass (< +{pct}%)" and high < pct, text
        if word.startswith(("REGRESSION", "INCONCLUSIVE")):
            return
        word = word.split(", ")[0]
    if word == "slower":
        assert low > 0, text
    elif word == "faster":
        assert high < 0, text
    else:
        assert word == "no significant change", text
        assert low <= 0 <= high, text


latencies = st.lists(st.floats(0.5, 2.0, allow_nan=False), min_size=2, max_size=10)
scales = st.sampled_from([0.8, 0.95, 1.0, 1.03, 1.08, 1.3]) | st.floats(0.5, 2.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base_cached=latencies,
    base_uncached=latencies,
    other_cached=latencies,
    other_uncached=latencies,
    scale=scales,
    pct=st.sampled_from([None, 0, 5]),
)
def test_the_verdict_never_contradicts_the_printed_interval(
    base_cached, base_uncached, other_cached, other_uncached, scale, pct
):
    """Random pairs of files, two measurements each (a family of two), through the real writing, reading
    and comparing code."""
    with tempfile.TemporaryDirectory() as folder:
        base = save(Path(folder), "base", make_result({"cached": base_cached, "uncached": base_uncached}))
        other = save(
            Path(folder),
            "other",
            make_result({"cached": [v * scale for v in other_cached], "uncached": other_uncached}),
        )
        # A threshold of 0 is accepted only with --pass-inconclusive, which changes no verdict.
        comparison = compare_results([base, other], threshold_pct=pct, pass_inconclusive=pct == 0)
    for row, cells in zip(comparison.rows, timing_grid(comparison)[1]):
        check_verdict(cells[-1], pct)
        test = row.entries[1].versus_baseline
        # The verdict is the test's, and its p-value says the same at the level of its family.
        if test.judged:
            assert (
                test.significant() == (test.p_value < 1 - test.confidence) or abs(test.p_value - (1 - test.confidence)) < 1e-9
            )
    judged = [row.entries[1].versus_baseline.judged for row in comparison.rows]
    assert comparison.family_sizes["latency"] == sum(judged)  # two, less any without spread on both sides
