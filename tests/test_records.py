"""A result's summaries and explanation are derived from its runs once, and saving mid-run derives nothing."""

import json
from dataclasses import replace

import kvbench.explain as explain
import kvbench.records as records
from kvbench.results import ResultsFile, read_result
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
    ResultsFile(path).save(result, derived=False)
    assert (summaries, explanations) == ([], [])
    assert "summary" not in json.loads(path.read_text())
    assert [s.n for s in read_result(path).summary] == [3, 3]  # readers recompute from the runs anyway
    ResultsFile(path, replace=True).save(result)
    data = json.loads(path.read_text())
    assert [s["n"] for s in data["summary"]] == [3, 3] and "explained" in data
