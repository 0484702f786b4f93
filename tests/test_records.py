"""A result's summaries and explanation are derived from its runs once, and saving mid-run derives nothing."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import kvbench.analysis.explain as explain
import kvbench.model.records as records
from kvbench.analysis.derived import derived_sections
from kvbench.storage.document import read_result
from kvbench.storage.writer import ResultsFile
from tests.conftest import make_result


def counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_summary_is_computed_once_until_a_run_is_added(monkeypatch):
    calls = counting(monkeypatch, records, "summarize_mode")
    result = make_result({"cached": [1.0, 3.0]})
    cell = result.cells[0].id
    assert result.summary_of(cell, "cached").n == 2
    assert result.summary_of(cell, "cached").n == 2
    assert len(calls) == 1
    result.add_runs([replace(result.runs[0], run=2, latency_s=2.0)])
    assert (result.summary_of(cell, "cached").n, result.summary_of(cell, "cached").mean_s) == (3, 2.0)
    assert len(calls) == 2


def test_runs_appended_directly_are_not_hidden_by_the_cache():
    result = make_result({"cached": [1.0, 3.0]})
    cell = result.cells[0].id
    assert result.summary_of(cell, "cached").n == 2
    result.runs.append(replace(result.runs[0], run=2))
    assert result.summary_of(cell, "cached").n == 3


def test_the_explanation_is_computed_once_per_result(monkeypatch):
    calls = counting(monkeypatch, explain, "_explain")
    result = make_result()
    assert explain.explain_result(result) is explain.explain_result(result)
    assert len(calls) == 1


def test_a_save_mid_run_runs_no_statistics_and_the_closing_save_writes_the_derived_blocks(monkeypatch, tmp_path):
    summaries = counting(monkeypatch, records, "summarize_mode")
    explanations = counting(monkeypatch, explain, "_explain")
    result, path = make_result(), tmp_path / "r.json"
    ResultsFile(path).save(result)
    assert (summaries, explanations) == ([], [])
    assert "summary" not in json.loads(path.read_text())
    assert [s.n for s in read_result(path).summary] == [3, 3]  # readers recompute from the runs anyway
    ResultsFile(path, replace=True).save(result, derived=derived_sections(result))
    data = json.loads(path.read_text())
    assert [s["n"] for s in data["summary"]] == [3, 3] and "explained" in data


def test_cell_states_are_written_as_their_names_and_say_whether_they_failed_or_finished():
    from kvbench.model.records import CellState

    assert json.dumps([CellState.OOM]) == '["oom"]' and f"{CellState.TIMEOUT}" == "timeout"
    assert [s.value for s in CellState if s.failed] == ["skipped", "oom", "error", "timeout"]
    assert [s.value for s in CellState if s.finished] == ["measured", "skipped", "oom"]
    assert [s.value for s in CellState if s.to_retry] == ["error", "timeout"]


def test_every_judged_metric_reads_one_value_per_run():
    from kvbench.compare.judging import metric_samples
    from kvbench.core.metrics import JUDGED_METRICS

    runs = [replace(run, time_to_first_token_s=0.2) for run in make_result({"cached": [1.0, 1.2]}).runs]
    assert set(metric_samples(runs)) == set(JUDGED_METRICS)
    assert [JUDGED_METRICS["tpot"].per_run(run) for run in runs] == pytest.approx([0.8 / 99, 1.0 / 99])
    assert set(metric_samples([replace(run, time_to_first_token_s=None) for run in runs])) == {"latency"}


def test_show_explains_a_file_once_and_summarises_each_mode_once(monkeypatch):
    from typer.testing import CliRunner

    from kvbench.cli import app

    summaries = counting(monkeypatch, records, "summarize_mode")
    explanations = counting(monkeypatch, explain, "_explain")
    golden = Path(__file__).parent / "data" / "golden.json"
    shown = CliRunner().invoke(app, ["show", str(golden)])
    assert shown.exit_code == 0, shown.output
    stored = read_result(golden)
    assert len(explanations) == 1
    assert len(summaries) == len({(run.cell, run.mode) for run in stored.runs})


def test_data_frames_have_a_column_per_setting_and_nan_for_what_was_not_measured():
    import math

    result = make_result(model="tiny", max_new_tokens=16)
    summary, runs = result.summary_frame(), result.runs_frame()
    settings = [
        "model",
        "max_new_tokens",
        "batch_size",
        "dtype",
        "cache_implementation",
        "attn_implementation",
        "prompt_tokens",
    ]
    for frame in (summary, runs):
        assert list(frame.columns[frame.columns.get_loc("model") :][:7]) == settings
        assert set(frame["model"]) == {"tiny"} and set(frame["max_new_tokens"]) == {16}
        assert set(frame["prompt_tokens"]) == {6}  # the length the prompt ran at
    # No run recorded a first-token time or VRAM: numbers that are missing are NaN, in numeric columns.
    assert runs["time_to_first_token_s"].dtype == float and all(map(math.isnan, runs["time_to_first_token_s"]))
    assert summary["vram_device_peak_bytes"].dtype == float and summary["vram_device_peak_bytes"].isna().all()
    assert summary["mean_s"].tolist() == [s.mean_s for s in result.summary]
