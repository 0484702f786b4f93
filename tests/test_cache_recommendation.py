"""Which cache to use, said first: the verdict table heads `show` (and the end of `run`) where a sweep compares
cache implementations, followed by one sentence of recommendation derived from it within the tolerance for
agreement; from results built with chosen figures."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kvbench.analysis.cache_choice import cache_verdicts, recommend
from kvbench.cli import app
from kvbench.model.cells import expand, reference_of
from kvbench.model.experiment import build_config
from kvbench.render.report import render_result
from kvbench.render.verdicts import recommendation_text
from kvbench.storage.writer import write_result
from tests.conftest import make_result, make_sweep
from tests.test_verdict_table import AGREES, cache_cell, cache_result, shown

runner = CliRunner()


def quantized_pair(int4_top1: float = 0.99, int2_top1: float = 0.85):
    """The dynamic cache, a lossless static one, and two quantized ones: int4 saves 75% and agrees at
    `int4_top1`, int2 saves 85% and agrees at `int2_top1`; both slower than the dynamic cache."""
    return cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000),
        cache_cell("static", [1.0, 1.05, 0.95], 4_000_000, **AGREES),
        cache_cell("quantized", [2.0, 2.2, 1.8], 1_000_000, agreement_token_share=0.9, agreement_top1_share=int4_top1),
        cache_cell("offloaded", [1.5, 1.6, 1.4], 600_000, agreement_token_share=0.2, agreement_top1_share=int2_top1),
    )


def sentence(result, min_top1: float = 0.98) -> str:
    (group,) = cache_verdicts(result)
    return recommendation_text(recommend(group, min_top1))


def test_the_recommendation_names_the_cache_that_saves_most_within_the_tolerance_and_its_latency_cost():
    result = quantized_pair(int4_top1=0.99, int2_top1=0.85)
    (group,) = cache_verdicts(result)
    assert recommend(group, 0.98).chosen.cache == "quantized"  # offloaded saves more but agrees at 85% only
    text = sentence(result)
    assert text.startswith("recommended: quantized, which saves the most KV cache memory (75.0%")
    assert "99.0% of positions (at least 98%)" in text
    assert "at 2.00× [" in text and text.endswith("the dynamic cache's latency")  # clearly slower
    # A looser tolerance admits the cache that saves more.
    assert recommend(group, 0.80).chosen.cache == "offloaded"
    assert sentence(result, 0.80).startswith("recommended: offloaded, which saves the most KV cache memory (85.0%")


def test_when_nothing_qualifies_the_recommendation_keeps_the_dynamic_cache_and_names_the_closest_miss():
    text = sentence(quantized_pair(int4_top1=0.97, int2_top1=0.85))
    assert text.startswith("recommended: the dynamic cache: no cache here saves memory while agreeing at 98%")
    # The closest miss is the one that agrees most: a slightly lower tolerance would choose it.
    assert "(quantized saves 75.0% but agrees at 97.0% of positions; --min-agreement sets the tolerance)" in text
    lossless = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000), cache_cell("static", [1.0, 1.1, 0.9], 4_000_000, **AGREES)
    )
    assert sentence(lossless) == "recommended: the dynamic cache: no other cache here saves KV cache memory"


def test_a_cache_without_agreement_measured_is_never_recommended():
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000),
        cache_cell("quantized", [1.0, 1.1, 0.9], 1_000_000),  # no agreement pass
    )
    (group,) = cache_verdicts(result)
    assert recommend(group, 0.0).chosen is None
    assert "quantized saves 75.0% but has no top-1 agreement measured" in sentence(result, 0.0)


def test_a_latency_within_the_noise_is_said_to_be_no_difference_and_a_faster_one_faster():
    within = cache_result(
        cache_cell("dynamic", [1.0, 1.2, 0.8], 4_000_000),
        cache_cell("quantized", [1.05, 1.25, 0.85], 1_000_000, agreement_token_share=1.0, agreement_top1_share=1.0),
    )
    assert "with no latency difference these runs can tell (1.05× [" in sentence(within)
    faster = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000),
        cache_cell("quantized", [0.5, 0.55, 0.45], 1_000_000, agreement_token_share=1.0, agreement_top1_share=1.0),
    )
    assert "and faster: 0.50× [" in sentence(faster)


def test_show_puts_the_verdict_and_its_recommendation_first(tmp_path):
    path = tmp_path / "caches.json"
    write_result(quantized_pair(), path)  # the quantized cell is written with its bits: "quantized int4"
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # The environment line, then the verdict table before any cell's own table.
    assert lines[1].startswith("which KV cache: tiny")
    verdict_end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    assert lines[verdict_end + 1].startswith("recommended: quantized int4, which saves the most KV cache memory")
    first_cell_table = next(i for i, line in enumerate(lines) if "mean ± std" in line)
    what_fits = next(i for i, line in enumerate(lines) if line.startswith("what fits beside"))
    assert verdict_end < first_cell_table < what_fits
    # The tolerance is the user's, said as given.
    stricter = " ".join(runner.invoke(app, ["show", str(path), "--min-agreement", "99.5"]).output.split())
    assert "recommended: the dynamic cache: no cache here saves memory while agreeing at 99.5% of positions" in stricter


def test_a_bad_tolerance_is_one_line_naming_the_option(tmp_path):
    path = tmp_path / "caches.json"
    write_result(quantized_pair(), path)
    result = runner.invoke(app, ["show", str(path), "--min-agreement", "150"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--min-agreement cannot be 150" in lines[0]


def test_a_sweep_without_cache_implementations_to_compare_shows_no_verdict_or_recommendation():
    sweep = make_sweep([make_result(max_new_tokens=100), make_result(max_new_tokens=200)])
    text = shown(render_result(sweep))
    assert "which KV cache" not in text and "recommended" not in text


REPO = Path(__file__).resolve().parent.parent
WHICH_CACHE = REPO / "configs" / "which-cache-cpu.toml"


def test_the_one_minute_example_is_one_verdict_group_on_a_shipped_trained_model(quanto_planned, monkeypatch):
    """configs/which-cache-cpu.toml: a few cells on tiny-milton (shipped: no download), differing only in their
    cache implementation, so the run ends in one verdict table; with the quantized extra every cell runs."""
    config = build_config(WHICH_CACHE, {})
    cells = expand(config)
    assert config.model == ["tiny-milton"] and config.modes == ["cached"] and len(cells) <= 4
    assert {reference_of(cell) for cell in cells} == {reference_of(cells[0])}
    assert [cell.cache_name for cell in cells] == ["dynamic", "static", "quantized int4", "quantized int2"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = runner.invoke(app, ["run", "--config", str(WHICH_CACHE), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    assert [cell["what_happens"] for cell in json.loads(plan.stdout)["cells"]] == ["measure"] * 4


def test_the_readme_installs_the_extra_the_example_needs_and_the_docs_give_its_time():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[quantized]'" in readme and "configs/which-cache-cpu.toml" in readme
    results = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    section = results.split("## Which KV cache, in a minute", 1)[1].split("\n## ", 1)[0]
    assert "kvbench run --config configs/which-cache-cpu.toml" in section
    assert "of wall time" in section and "recommended: quantized int4" in section
