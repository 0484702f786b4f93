import csv
import io
import json

import pytest

from kvbench.compare.formats import FORMATS
from kvbench.compare.formats.grids import percentile_grid, records, speedup_grid, timing_grid
from kvbench.compare.judging import compare_results
from kvbench.core.errors import KvbenchError
from kvbench.model.records import SERVING_FIELDS
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.writer import write_result
from tests.conftest import make_result, make_sweep, tiny_config


@pytest.fixture(scope="session")
def two_real_runs(tmp_path_factory, tiny_gpt2_dir):
    """Two results files written by real runs of the same tiny model."""
    folder = tmp_path_factory.mktemp("real-runs")
    paths = []
    for name in ("first", "second"):
        path = folder / f"{name}.json"
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[16], runs=3), output=path)
        paths.append(path)
    return paths


def save(tmp_path, name, result):
    path = tmp_path / f"{name}.json"
    write_result(result, path)
    return path


def test_real_runs_compare_in_every_format(two_real_runs):
    comparison = compare_results(two_real_runs)
    assert [row.key.mode for row in comparison.rows] == ["cached", "uncached"]
    assert all(entry is not None for row in comparison.rows for entry in row.entries)
    assert all(speedup > 0 for row in comparison.rows for speedup in row.speedups)
    # Real runs record the first token: time to first token and per-token decode time are compared too.
    assert all({"latency", "ttft", "tpot"} <= set(row.entries[1].tests) for row in comparison.rows)
    assert any("(time to first token)" in header for header in timing_grid(comparison)[0])
    markdown = FORMATS["markdown"].render(comparison)
    assert markdown.startswith("**mean ± std and peak memory, by file**\n\n| measurement | first mean ± std (s) |")
    assert "second vs first" in markdown
    rows = list(csv.DictReader(io.StringIO(FORMATS["csv"].render(comparison))))
    assert len(rows) == 4 and {row["label"] for row in rows} == {"first", "second"}
    document = json.loads(FORMATS["json"].render(comparison))
    assert document["test"] == "log-ratio-t, bonferroni" and len(document["measurements"]) == 4
    assert document["family_sizes"]["latency"] == 2 and document["unjudged"] == []
    action = json.loads(FORMATS["benchmark-action"].render(comparison))
    assert [entry["unit"] for entry in action] == ["s", "s"]
    assert all(set(entry) == {"name", "unit", "value", "range", "extra"} for entry in action)


def test_serving_percentiles_in_every_format(two_real_runs, tmp_path):
    """TTFT, ITL and end-to-end p50/p90/p99 from real runs: a table per file, and every serving figure of
    each mode's summary as a CSV column; files without token times get no such table."""
    comparison = compare_results(two_real_runs)
    headers, rows = percentile_grid(comparison)
    assert len(headers) == 3 and [row[0].split(" · ")[-1] for row in rows] == ["cached", "uncached"]
    assert all("TTFT p50/90/99" in cell and "ITL p50/90/99" in cell for row in rows for cell in row[1:])
    assert "ITL p50/90/99" in FORMATS["markdown"].render(comparison)
    csv_rows = list(csv.DictReader(io.StringIO(FORMATS["csv"].render(comparison))))
    entries = [entry for r in comparison.rows for entry in r.entries if entry is not None]
    assert len(csv_rows) == len(entries) == 4
    for row, entry in zip(csv_rows, entries):
        summary = entry.summary
        assert set(SERVING_FIELDS) <= set(row)
        assert float(row["itl_p99_s"]) == pytest.approx(summary.itl_p99_s)
        assert float(row["e2e_p50_s"]) == pytest.approx(summary.e2e_p50_s)
        assert summary.itl_p50_s <= summary.itl_p90_s <= summary.itl_p99_s
    # Stored runs with no per-token times: nothing to take percentiles of, so no table at all.
    bare = compare_results([save(tmp_path, "a", make_result()), save(tmp_path, "b", make_result())])
    assert percentile_grid(bare)[1] == []
    assert "p50/90/99" not in FORMATS["markdown"].render(bare)


def test_a_known_slowdown_is_flagged_as_a_regression(tmp_path):
    base = save(
        tmp_path, "base", make_result({"cached": [1.00, 1.02, 0.98, 1.01, 0.99], "uncached": [4.0, 4.1, 3.9, 4.0, 4.0]})
    )
    slow = save(
        tmp_path, "slow", make_result({"cached": [1.30, 1.32, 1.28, 1.31, 1.29], "uncached": [4.0, 4.1, 3.9, 4.0, 4.0]})
    )
    comparison = compare_results([base, slow], threshold_pct=10)
    cached = comparison.rows[0].entries[1]
    assert cached.change_of("latency") == pytest.approx(30.0)
    assert cached.regression
    assert not comparison.rows[1].entries[1].regression
    assert len(comparison.regressions) == 1
    assert "REGRESSION (> 10%)" in timing_grid(comparison)[1][0][-1]


def test_an_identical_rerun_is_not_a_regression(tmp_path):
    latencies = {"cached": [1.0, 1.1, 0.9, 1.05], "uncached": [4.0, 4.2, 3.8, 4.1]}
    comparison = compare_results(
        [save(tmp_path, "a", make_result(latencies)), save(tmp_path, "b", make_result(latencies))],
        threshold_pct=0,
        pass_inconclusive=True,
    )
    assert comparison.regressions == []
    assert all(not row.entries[1].versus_baseline.significant() for row in comparison.rows)


def test_a_large_but_noisy_difference_is_not_significant(tmp_path):
    base = save(tmp_path, "a", make_result({"cached": [1.0, 2.0, 0.5]}))
    noisy = save(tmp_path, "b", make_result({"cached": [2.0, 0.8, 2.5]}))
    comparison = compare_results([base, noisy], threshold_pct=5)
    assert comparison.rows[0].entries[1].change_of("latency") > 5
    assert comparison.regressions == []


def test_speedup_per_file(tmp_path):
    a = save(tmp_path, "a", make_result({"cached": [1.0, 1.0], "uncached": [4.0, 4.0]}))
    b = save(tmp_path, "b", make_result({"cached": [2.0, 2.0], "uncached": [4.0, 4.0]}))
    headers, rows = speedup_grid(compare_results([a, b]))
    assert headers == ["cell", "a cached speedup", "b cached speedup"]
    # Every run of each mode took the same time: no interval, never "4.00× [4.00×, 4.00×]".
    assert rows[0][1:] == ["4.00× (no spread: no interval)", "2.00× (no spread: no interval)"]
    c = save(tmp_path, "c", make_result({"cached": [2.2, 2.3, 2.1], "uncached": [1.0, 1.01, 0.99]}))
    headers, rows = speedup_grid(compare_results([a, c]))
    assert rows[0][2].startswith("0.45× [") and rows[0][2].endswith("(cached is 2.20× slower than uncached)")


def test_baseline_can_be_chosen(tmp_path):
    a = save(tmp_path, "a", make_result({"cached": [1.0, 1.1]}))
    b = save(tmp_path, "b", make_result({"cached": [2.0, 2.1]}))
    comparison = compare_results([a, b], baseline="b")
    assert comparison.baseline == 1
    assert comparison.rows[0].entries[0].change_of("latency") == pytest.approx((1.05 / 2.05 - 1) * 100)
    with pytest.raises(KvbenchError, match="not among the files"):
        compare_results([a, b], baseline="c")


def test_mismatched_files_are_compared_with_warnings(tmp_path):
    a = save(tmp_path, "a", make_result(max_new_tokens=100, device_name="Tesla T4"))
    b = save(tmp_path, "b", make_result(max_new_tokens=200, device_name="H100", prompt="Other", complete=False))
    comparison = compare_results([a, b])
    assert all(row.entries[1] is not None and row.entries[1].versus_baseline for row in comparison.rows)
    text = "\n".join(comparison.warnings)
    assert "max_new_tokens 200 vs 100" in text
    assert "'device_name' differs (a: 'Tesla T4', b: 'H100')" in text
    assert "'prompt' differs" in text
    assert "b is incomplete" in text
    assert all(record["complete"] is False for record in records(comparison) if record["label"] == "b")
    assert "b (incomplete) mean ± std (s)" in timing_grid(comparison)[0]


def test_a_directory_stands_for_its_results_files(tmp_path):
    save(tmp_path, "a", make_result())
    save(tmp_path, "b", make_result())
    comparison = compare_results([tmp_path])
    assert [f.label for f in comparison.files] == ["a", "b"]


@pytest.mark.parametrize("content, message", [("nope", "is not JSON"), ('{"a": 1}', "not a kvbench results file")])
def test_bad_files_are_named(tmp_path, content, message):
    good = save(tmp_path, "good", make_result())
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(KvbenchError, match=message) as error:
        compare_results([good, bad])
    assert "bad.json" in str(error.value)


def test_a_single_file_is_not_enough(tmp_path):
    with pytest.raises(KvbenchError, match="at least two results files"):
        compare_results([save(tmp_path, "a", make_result())])


def _with_attn(result, attn):
    from dataclasses import replace

    for cell in result.cells:
        old_id = cell.id
        cell.settings = replace(cell.settings, attn_implementation=attn)
        for run in result.runs:
            if run.cell == old_id:
                run.cell = cell.id
    return result


def test_each_file_is_labelled_with_its_own_settings(tmp_path):
    sdpa = save(tmp_path, "sdpa", _with_attn(make_result(), "sdpa"))
    eager = save(tmp_path, "eager", _with_attn(make_result(), "eager"))
    comparison = compare_results([sdpa, eager])
    rows = list(csv.DictReader(io.StringIO(FORMATS["csv"].render(comparison))))
    assert {(row["label"], row["attn_implementation"]) for row in rows} == {("sdpa", "sdpa"), ("eager", "eager")}
    assert all("attn sdpa" in row["compared_with"] for row in rows)
    action = json.loads(FORMATS["benchmark-action"].render(comparison))
    assert all("attn eager" in entry["name"] for entry in action)


def test_benchmark_action_works_from_a_single_file(tmp_path):
    only = save(tmp_path, "only", make_result())
    comparison = compare_results([only], allow_single=True)
    action = json.loads(FORMATS["benchmark-action"].render(comparison))
    assert [entry["value"] for entry in action] == [pytest.approx(1.0), pytest.approx(4.0)]
    with pytest.raises(KvbenchError, match="at least two"):
        compare_results([only])


def test_time_to_first_token_and_decode_time_per_token_from_the_runs(tmp_path):
    def with_first_token(latencies, ttft):
        result = make_result({"cached": latencies}, max_new_tokens=11)
        for run, first in zip(result.runs, ttft):
            run.time_to_first_token_s = first
        return result

    # Decode time per token = (latency - first token) / (11 - 1): base (1.0 - 0.2) / 10 = 0.08 s.
    base = save(tmp_path, "base", with_first_token([1.0, 1.0, 1.0], [0.2, 0.21, 0.19]))
    slow_prefill = save(tmp_path, "slow", with_first_token([1.2, 1.2, 1.2], [0.4, 0.41, 0.39]))
    comparison = compare_results([base, slow_prefill], threshold_pct=50, gate_metric="ttft")
    entry = comparison.rows[0].entries[1]
    assert entry.samples["tpot"] == pytest.approx([0.08, 0.079, 0.081])
    assert entry.change_of("ttft") == pytest.approx(100.0)
    assert entry.change_of("tpot") == pytest.approx(0.0, abs=1e-9)
    assert entry.regression  # first token twice as slow, the whole interval above +50%
    assert not compare_results([base, slow_prefill], threshold_pct=50, gate_metric="tpot").regressions
    record = next(r for r in records(comparison) if r["label"] == "slow")
    assert record["ttft_mean_s"] == pytest.approx(0.4) and record["tpot_ratio_to_baseline"] == pytest.approx(1.0)


def test_peak_memory_change_against_the_baseline(tmp_path):
    base = make_result()
    bigger = make_result()
    for run in bigger.runs:
        run.peak_rss_bytes = 1500
    comparison = compare_results([save(tmp_path, "a", base), save(tmp_path, "b", bigger)])
    assert timing_grid(comparison)[1][0][4] == "1.5 KiB (+50.0%)"
    assert next(r for r in records(comparison) if r["label"] == "b")["peak_memory_change_pct"] == pytest.approx(50.0)


def test_many_measurements_widen_the_intervals_for_the_family(tmp_path):
    # Eight measurements (4 lengths × 2 modes): every interval at confidence 1 - 0.05 / 8.
    def sweep(shift):
        latencies = {"cached": [1.0 * shift, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}
        return make_sweep([make_result(latencies, max_new_tokens=t) for t in (10, 20, 30, 40)])

    comparison = compare_results([save(tmp_path, "a", sweep(1.0)), save(tmp_path, "b", sweep(1.02))])
    assert comparison.family_sizes["latency"] == 8
    confidences = [row.entries[1].versus_baseline.confidence for row in comparison.rows]
    assert confidences == pytest.approx([1 - 0.05 / 8] * 8)
    assert all("(99.4% CI)" in row[-1] for row in timing_grid(comparison)[1])
    assert "The 8 latency comparison(s) are one family" in FORMATS["markdown"].render(comparison)


def test_outlying_runs_are_shown_in_compare(tmp_path):
    result = make_result({"cached": [1.0, 1.1, 0.9, 1.05, 1.02, 5.0]})
    comparison = compare_results([save(tmp_path, "a", result), save(tmp_path, "b", result)])
    assert "(n=6; outlying run 6)" in timing_grid(comparison)[1][0][1]
    assert "outlying runs included" in FORMATS["markdown"].render(comparison)


def test_a_noisy_mode_is_warned_about(tmp_path):
    noisy = make_result({"cached": [80.0, 122.5, 165.0, 70.0, 175.0]})
    comparison = compare_results([save(tmp_path, "noisy", noisy), save(tmp_path, "again", noisy)])
    assert any("too noisy to trust" in warning for warning in comparison.warnings)


def test_a_noisy_sweep_gets_one_noise_line_per_file_and_verbose_lists_each(tmp_path):
    noisy = {"cached": [80.0, 122.5, 165.0, 70.0], "uncached": [300.0, 450.0, 200.0, 380.0]}
    sweep = make_sweep([make_result(noisy, max_new_tokens=t) for t in (10, 20)])
    paths = [save(tmp_path, "busy", sweep), save(tmp_path, "again", sweep)]

    noise = [w for w in compare_results(paths).warnings if "too noisy" in w]
    assert len(noise) == 2  # one per file, each counting its four noisy measurements
    assert all("4 measurements" in line and "--verbose lists each" in line for line in noise)
    listed = [w for w in compare_results(paths, list_unmatched=True).warnings if "too noisy" in w]
    assert len(listed) == 8


def test_runs_from_three_processes_are_judged_on_process_means(tmp_path):
    """--processes 3: each process is steady inside, but the processes differ. Judged run by run, a 3%
    difference between two such files looks certain; judged on process means, it is within the drift."""

    def spread(result, per_process):
        runs = result.runs_of(result.cells[0].id, "cached")
        for run, (pid, latency) in zip(runs, per_process):
            run.host, run.pid, run.latency_s = "h", pid, latency
        return result

    drift = [(1, 1.00), (1, 1.001), (2, 1.10), (2, 1.101), (3, 0.95), (3, 0.951)]
    shifted = [(pid, latency * 1.03) for pid, latency in drift]
    base = save(tmp_path, "base", spread(make_result({"cached": [1.0] * 6}), drift))
    other = save(tmp_path, "other", spread(make_result({"cached": [1.0] * 6}), shifted))
    entry = compare_results([base, other]).rows[0].entries[1]
    assert entry.samples["latency"] == pytest.approx([1.0005 * 1.03, 1.1005 * 1.03, 0.9505 * 1.03])
    assert not entry.versus_baseline.significant()


def test_files_named_on_the_command_line_are_named_everywhere(tmp_path):
    """compare -n: the names label every table, export and verdict, and choose the baseline."""
    a = save(tmp_path, "results-20261130-1", make_result({"cached": [1.0, 1.01, 0.99]}))
    b = save(tmp_path, "results-20261130-2", make_result({"cached": [1.5, 1.51, 1.49]}))
    comparison = compare_results([a, b], names=["main", "my-change"], baseline="my-change", threshold_pct=5)
    headers, _ = timing_grid(comparison)
    assert headers[1] == "main mean ± std (s)" and "main vs my-change" in headers
    assert {record["label"] for record in records(comparison)} == {"main", "my-change"}
    assert "results-2026" not in FORMATS["markdown"].render(comparison).split("Baseline")[0]
    assert comparison.files[comparison.baseline].label == "my-change"


@pytest.mark.parametrize("names", [["only-one"], ["same", "same"], ["", "b"]])
def test_names_must_be_one_per_file_and_distinct(tmp_path, names):
    a, b = save(tmp_path, "a", make_result()), save(tmp_path, "b", make_result())
    with pytest.raises(KvbenchError, match="name"):
        compare_results([a, b], names=names)


def test_markdown_fits_a_github_comment_and_never_drops_a_flagged_measurement():
    from pathlib import Path

    from kvbench.compare.formats.markdown import GITHUB_COMMENT_LIMIT, to_markdown

    data = Path(__file__).parent / "data"
    files = [data / "golden.json", data / "golden-rerun.json"]
    plain, gated = compare_results(files), compare_results(files, threshold_pct=10)
    full = to_markdown(plain)
    assert to_markdown(plain, limit=GITHUB_COMMENT_LIMIT) == full  # small: nothing to leave out
    assert full.count("**change in") == 3  # one table per metric family: latency, TTFT, TPOT

    shorter = to_markdown(plain, limit=len(full) - 1)
    assert len(shorter) < len(full) and "left out to fit a GitHub comment: serving metrics" in shorter

    tight = to_markdown(plain, limit=3000)
    assert len(tight) <= 3000 and "of 4 measurements left out to fit a GitHub comment" in tight

    # Every measurement of the rerun is inconclusive at 10%: none may be cut, however tight the limit.
    flagged = to_markdown(gated, limit=3000)
    assert flagged.count("INCONCLUSIVE") == to_markdown(gated).count("INCONCLUSIVE") == 4
    assert "post --format csv instead" in flagged  # still too long, and it says so


def test_unrelated_sweeps_show_no_missing_lines_unless_a_gate_asks_for_a_judgement(tmp_path):
    """Two files with no measurement in common: without a gate there is nothing to judge, so neither a
    "not judged" nor a line per absent figure; with one, every missing measurement is named."""
    from rich.console import Console

    from kvbench.compare.formats.table import render_comparison

    def sweep(*lengths):  # one file of several cells (a file of one cell is matched to any other's one cell)
        return make_sweep([make_result(max_new_tokens=length) for length in lengths])

    short = save(tmp_path, "short", sweep(10, 20))
    long = save(tmp_path, "long", sweep(30, 40))

    def shown(threshold):
        console = Console(width=60, record=True, color_system=None)
        console.print(render_comparison(compare_results([short, long], threshold_pct=threshold)))
        return console.export_text()

    ungated = shown(None)
    assert "not judged: missing" not in ungated and ": —" not in ungated
    assert "mean ± std (s): 1.000" in ungated
    assert "not judged: missing" in shown(10)


def _shown(comparison, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(FORMATS["table"].render(comparison))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 200])
def test_long_file_names_are_lettered_with_a_key_and_verdicts_come_before_figures(tmp_path, width):
    long_a, long_b = "gpt2-cpu-200tok-epyc-2core", "gpt2-cpu-200tok-epyc-2core-r2"
    base = save(tmp_path, long_a, make_result({"cached": [1.0, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}))
    head = save(tmp_path, long_b, make_result({"cached": [1.0, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}))
    lines = _shown(compare_results([base, head], threshold_pct=10), width)
    assert lines[:2] == [f"A = {long_a} (the baseline)", f"B = {long_b}"]
    tables = lines[2 : next(index for index, line in enumerate(lines) if line.startswith("Baseline: A."))]
    assert not any(long_a in line for line in tables)  # the warnings under them name the files in full
    first_verdict = next(index for index, line in enumerate(lines) if "B vs A" in line)
    first_figure = next(index for index, line in enumerate(lines) if "A mean ± std (s)" in line)
    assert first_verdict <= first_figure
    if width == 80:  # the list: each verdict line before its figures
        assert lines[first_verdict].strip().startswith("B vs A: ")


def test_short_labels_stay_as_they_are(tmp_path):
    base = save(tmp_path, "main", make_result())
    head = save(tmp_path, "pr", make_result())
    lines = _shown(compare_results([base, head]), 200)
    assert not lines[0].startswith("A = ") and any("pr vs main" in line for line in lines)
