"""Which KV cache: each cache implementation against the dynamic cache at equal settings, what fits in a GPU's
memory, and where they are shown (show, compare's exports, plot), from results built with chosen figures."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from rich.console import Console, Group
from typer.testing import CliRunner

from kvbench.analysis.cache_choice import Missing, cache_verdicts, what_fits, what_fits_notes
from kvbench.cli import app
from kvbench.compare.formats import FORMATS
from kvbench.compare.formats.markdown import GITHUB_COMMENT_LIMIT, to_markdown
from kvbench.compare.judging import compare_results
from kvbench.core.errors import KvbenchError
from kvbench.core.units import parse_bytes, seconds_as_ms
from kvbench.model.cells import Cell
from kvbench.model.records import BenchmarkResult, CellResult, RunRecord
from kvbench.model.settings import BenchConfig, config_to_dict
from kvbench.render.plot import plot_result
from kvbench.render.report import render_result
from kvbench.render.verdicts import cache_choice_parts
from kvbench.storage.writer import write_result

runner = CliRunner()

# A model of 1,000,000 parameters at 2 bytes each: 2,000,000 bytes of weights.
COST = {"parameters": 1_000_000, "bytes_per_element": 2, "layers": 2, "hidden": 32, "attention_width": 32,
        "kv_heads": 2, "head_dim": 16}  # fmt: skip
AGREES = {"agreement_token_share": 1.0, "agreement_top1_share": 1.0, "agreement_kl_mean_nats": 0.0}


def cache_cell(cache: str, latencies: list[float], measured: int | None, batch: int = 2, **fields) -> dict:
    return {"cache": cache, "latencies": latencies, "measured": measured, "batch": batch, **fields}


def cache_result(*cells: dict, new_tokens: int = 100, positions: int = 100, dtype: str = "float16") -> BenchmarkResult:
    """A results file whose cells differ only in their cache implementation, with the chosen cached-mode
    latencies, measured cache bytes (at `positions` positions) and agreement fields."""
    config = BenchConfig(model=["tiny"], max_new_tokens=[new_tokens], modes=["cached"])
    result = BenchmarkResult(
        environment={"device": "cuda:0", "device_name": "Test GPU", "torch": "2.13.0"},
        config=config_to_dict(config),
        complete=True,
        kvbench_version="0.1.0",
    )
    for chosen in cells:
        settings = Cell("tiny", new_tokens, chosen["batch"], dtype, chosen["cache"], "auto")
        status = chosen.get("status", "measured")
        cell = CellResult(
            settings=settings,
            status=status,
            reason=chosen.get("reason"),
            model={"dtype": "float16", "weights": "pretrained", "cost": COST},
            prompt_tokens=6,
            kv_cache_measured_bytes=chosen["measured"],
            kv_cache_positions=positions if chosen["measured"] is not None else None,
            **{key: value for key, value in chosen.items() if key.startswith("agreement_")},
        )
        result.cells.append(cell)
        for index, latency in enumerate(chosen["latencies"]):
            result.runs.append(
                RunRecord(
                    cell=cell.id,
                    mode="cached",
                    run=index,
                    latency_s=latency,
                    new_tokens=new_tokens,
                    prompt_tokens=6,
                    batch_size=chosen["batch"],
                    tokens_per_s=new_tokens / latency,
                    time_to_first_token_s=None,
                    peak_rss_bytes=1000,
                )
            )
    return result


def three_caches() -> BenchmarkResult:
    return cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000),
        cache_cell("static", [0.5, 0.55, 0.45], 4_000_000, **AGREES),
        cache_cell(
            "quantized",
            [2.0, 2.2, 1.8],
            1_000_000,
            agreement_token_share=0.9,
            agreement_first_divergence=12,
            agreement_top1_share=0.95,
            agreement_kl_mean_nats=0.0123,
        ),
    )


def by_cache(result: BenchmarkResult):
    (group,) = cache_verdicts(result)
    return {verdict.cache: verdict for verdict in group.verdicts}


def shown(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_latency_ratio_against_the_dynamic_cache_with_an_interval_that_brackets_it():
    verdicts = by_cache(three_caches())
    static, quantized = verdicts["static"].latency_ratio, verdicts["quantized"].latency_ratio
    # Means 0.5 s and 2.0 s against the dynamic cache's 1.0 s.
    assert static.ratio == pytest.approx(0.5) and quantized.ratio == pytest.approx(2.0)
    for test in (static, quantized):
        assert test.low < test.ratio < test.high
        assert test.confidence == 0.95
    assert static.high < 1 < quantized.low  # clearly faster, clearly slower
    assert list(verdicts) == ["dynamic", "static", "quantized"] and verdicts["dynamic"].is_reference


def test_memory_saved_against_the_dynamic_cache_as_bytes_and_share():
    verdicts = by_cache(three_caches())
    assert verdicts["quantized"].memory_saved_bytes == 3_000_000
    assert verdicts["quantized"].memory_saved_share == pytest.approx(0.75)
    assert verdicts["static"].memory_saved_bytes == 0
    larger = by_cache(cache_result(cache_cell("dynamic", [1.0, 1.1], 1_000_000), cache_cell("static", [1.0, 1.2], 1_500_000)))
    assert larger["static"].memory_saved_bytes == -500_000
    assert larger["static"].memory_saved_share == pytest.approx(-0.5)


def test_without_a_dynamic_cell_speed_and_memory_are_missing_with_the_reason():
    result = cache_result(cache_cell("static", [1.0, 1.1], 4_000_000, **AGREES), cache_cell("quantized", [2.0, 2.1], 1_000_000))
    verdicts = by_cache(result)
    for verdict in verdicts.values():
        assert isinstance(verdict.latency_ratio, Missing) and isinstance(verdict.memory_saved_bytes, Missing)
        assert "no dynamic cache cell" in verdict.latency_ratio.reason
    assert not isinstance(verdicts["static"].agreement, Missing)  # measured against the dynamic cache all the same
    assert dict(verdicts["quantized"].missing())["agreement"] == "not measured in this file"
    text = shown(render_result(result))
    # One line for the figures that share a reason.
    assert "static: latency, memory saved —: no dynamic cache cell at these settings to compare with" in text


def test_a_skipped_cell_has_every_figure_missing_with_its_reason():
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1], 4_000_000),
        cache_cell("quantized", [], None, status="skipped", reason="quanto is not installed"),
    )
    quantized = by_cache(result)["quantized"]
    skipped = "skipped: quanto is not installed"
    assert dict(quantized.missing()) == dict.fromkeys(["latency", "memory saved", "agreement"], skipped)
    assert isinstance(what_fits(quantized.cell), Missing)
    text = shown(render_result(result))
    assert "quantized: latency, memory saved, agreement —: skipped: quanto is not installed" in text
    assert "quantized: what fits —: skipped: quanto is not installed" in text


def test_a_failed_dynamic_cell_is_named_as_the_reason():
    result = cache_result(
        cache_cell("dynamic", [], None, status="oom", reason="out of memory"),
        cache_cell("static", [1.0, 1.1], 4_000_000),
    )
    static = by_cache(result)["static"]
    assert static.latency_ratio == Missing("the dynamic cache's cell was oom: out of memory")


def test_the_title_names_the_dtype_auto_resolved_to():
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1], 4_000_000), cache_cell("static", [1.0, 1.2], 4_000_000), dtype="auto"
    )
    (group,) = cache_verdicts(result)
    assert group.title() == "tiny · 100 tok · batch 2 · float16"


def test_one_cache_implementation_gives_no_verdict():
    result = cache_result(cache_cell("dynamic", [1.0, 1.1], 4_000_000))
    assert cache_verdicts(result) == []
    assert "which KV cache" not in shown(render_result(result))


def test_what_fits_from_bytes_per_position_and_the_weights():
    # 4,000,000 bytes over 100 positions at batch 2: 20,000 bytes per position. This file records no output head
    # and no intermediate size, so beside the cache only the residual stream is counted: 2 tensors x 32 wide x 2
    # bytes = 128 bytes per prompt position. In 1 GiB beside 2,000,000 bytes of weights, 1,071,741,824 bytes are
    # left: 53,246 positions of 20,128 bytes at batch 1, or 535 sequences of 100 positions after a 6-token
    # prompt (2,000,000 + 6 x 128 = 2,000,768 bytes each). 1 MiB holds not even the weights.
    dynamic = by_cache(three_caches())["dynamic"]
    fits = what_fits(dynamic.cell, (2**30, 2**20))
    assert fits.bytes_per_position == 20_000 and fits.weight_bytes == 2_000_000 and fits.positions == 100
    assert (fits.fits[0].longest_context, fits.fits[0].largest_batch) == (53_246, 535)
    assert (fits.fits[1].longest_context, fits.fits[1].largest_batch) == (0, 0)
    # The quantized cell (no bits: no residual window) adds two full-precision copies of one layer's states per
    # position, 2 x (2 x 2 x 16 x 2 bytes) = 256: 5,000 + 128 + 256 = 5,384 bytes per position.
    quantized = what_fits(by_cache(three_caches())["quantized"].cell, (2**30,))
    assert quantized.bytes_per_position == 5_000 and quantized.fits[0].longest_context == 199_060
    (group,) = cache_verdicts(three_caches())
    notes = what_fits_notes(group)
    assert any(note.startswith("not counted, as the results file does not say enough: the logits") for note in notes)


# A model whose cost says everything what-fits counts: 1,000,000 parameters of 2 bytes; 2 layers of 2 KV heads of
# 16 (256 bytes of full-precision cache per position), 4 attention heads, 32 wide, an MLP 64 wide, and an output
# head of 32,000 parameters (a vocabulary of 1,000).
FULL_COST = {**COST, "attention_width": 64, "head_parameters": 32_000, "intermediate_size": 64}


def footprint_cell(cache: str, measured: int, attention: str = "sdpa", nbits: int | None = None) -> CellResult:
    """A cell of FULL_COST's model: a 93-token prompt and 8 new tokens at batch 1 (100 positions cached)."""
    settings = Cell("tiny", 8, 1, "float16", cache, attention, quantized_nbits=nbits, prompt_tokens=93)
    model = {"dtype": "float16", "cost": FULL_COST, "attn_implementation": attention}
    return CellResult(
        settings, "measured", model=model, prompt_tokens=93, kv_cache_measured_bytes=measured, kv_cache_positions=100
    )


def test_what_fits_counts_the_logits_the_activations_and_eager_attentions_scores():
    # Per sequence: the logits, 1,000 x (2 + 4 + 4) = 10,000 bytes; per prompt position, the residual stream and
    # three MLP tensors, (2 x 32 + 3 x 64) x 2 = 512 bytes; the cache, 25,600 / 100 = 256 bytes per position.
    # 10,000,000 bytes of memory leave 8,000,000 beside the weights.
    sdpa = what_fits(footprint_cell("dynamic", 25_600), (10_000_000,))
    # At batch 1: 10,000 + 768 P <= 8,000,000, so P = 10,403.
    assert sdpa.fits[0].longest_context == 10_403
    # Eager attention adds its score matrix, 4 heads x (2 + 4) = 24 bytes per prompt position squared:
    # 24 P^2 + 768 P <= 7,990,000 holds at P = 561 (7,984,152) and not at 562 (8,011,872): a division by the
    # bytes per position would have said 31,250.
    eager = what_fits(footprint_cell("dynamic", 25_600, "eager"), (10_000_000,))
    assert eager.fits[0].longest_context == 561
    # One sequence of 100 positions after 93 prompt tokens: 25,600 + 10,000 + 93 x 512 + 93^2 x 24 = 290,792 bytes,
    # so 27 of them in 8,000,000 (sdpa: 83,216 bytes, 96 of them).
    assert (eager.fits[0].largest_batch, sdpa.fits[0].largest_batch) == (27, 96)


def test_what_fits_counts_the_quantized_caches_full_precision_window_and_dequantized_layer():
    # int4 with a 32-position window after 8 new tokens: 7 decode steps leave 7 positions at full precision
    # (256 bytes each) beside 93 quantized ones of 64 bytes: 93 x 64 + 7 x 256 = 7,744 bytes measured.
    fits = what_fits(footprint_cell("quantized", 7_744, nbits=4), (10_000_000,), residual_length=32)
    footprint = fits.footprint
    assert footprint.cache_per_position == 64
    # The window's 7 positions cost 256 - 64 = 192 bytes more each; each step dequantizes one of the 2 layers
    # twice over: 2 x 256 / 2 = 256 bytes per position beside the 512 of activations.
    assert footprint.window_per_sequence == 7 * 192 and footprint.activations_per_position == 512 + 256
    # 10,000 + 1,344 + (64 + 768) P <= 8,000,000: P = 9,601.
    assert fits.fits[0].longest_context == 9_601
    # Without the run's window length the measured bytes are taken as an average: 77.44 bytes per position.
    average = what_fits(footprint_cell("quantized", 7_744, nbits=4), (10_000_000,))
    assert average.footprint.window_per_sequence == 0 and float(average.footprint.cache_per_position) == 77.44


@pytest.mark.parametrize(
    "text, size",
    [("80GiB", 80 * 2**30), ("24GB", 24 * 10**9), ("16G", 16 * 2**30), ("1.5 TiB", int(1.5 * 2**40)), ("512mib", 2**29)],
)
def test_gpu_memory_sizes_parse(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["80", "eighty", "80XB", "0GiB", "-4G", ""])
def test_a_bad_gpu_memory_size_names_the_option_and_the_forms(text):
    with pytest.raises(KvbenchError, match=r"--gpu-memory cannot be .*such as 80GiB, 24GB or 16G"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.0123, "12.3"), (0.09996, "100"), (0.9996, "1000"), (40.3, "40300"), (None, "—")]
)
def test_milliseconds_never_turn_into_an_exponent(seconds, shown):
    """A long prompt's first token takes seconds: 40300 ms, not 4.03e+04."""
    assert seconds_as_ms(seconds) == shown


def test_show_prints_the_verdict_and_what_fits(tmp_path):
    path = tmp_path / "caches.json"
    write_result(three_caches(), path)
    result = runner.invoke(app, ["show", str(path), "--gpu-memory", "1GiB"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "which KV cache: tiny · 100 tok · batch 2 · float16, against the dynamic cache" in text
    assert "0.50× [" in text and "2.00× [" in text
    assert "75.0%" in text and "2.9 MiB" in text and "90.0%" in text and "12" in text and "0.0123" in text
    assert "1 GiB" in text and "53k" in text and "535" in text and "24 GiB" not in text
    assert "what fits is an estimate: it counts the weights, the KV cache, the last position's logits" in text
    assert "residual window" in text
    default = runner.invoke(app, ["show", str(path)]).output
    assert all(f"{size} GiB" in default for size in (24, 40, 80, 140))


def test_show_rejects_a_bad_gpu_memory_in_one_line(tmp_path):
    path = tmp_path / "caches.json"
    write_result(three_caches(), path)
    result = runner.invoke(app, ["show", str(path), "--gpu-memory", "80"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--gpu-memory cannot be '80'" in lines[0]


def test_show_fits_80_columns_without_cutting_a_label(snapshot):
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4_000_000),
        cache_cell("offloaded_static", [1.5, 1.6, 1.4], 4_000_000, **AGREES),
        cache_cell("quantized", [2.0, 2.2, 1.8], 1_000_000, agreement_token_share=0.9, agreement_first_divergence=12),
    )
    text = shown(render_result(result), width=80)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert "offloaded_static" in text and "which KV cache" in text
    assert shown(Group(*cache_choice_parts(result)), width=80) == snapshot


def two_files(tmp_path) -> list:
    paths = [tmp_path / "before.json", tmp_path / "after.json"]
    for path in paths:
        write_result(three_caches(), path)
    return paths


def test_markdown_export_holds_the_verdict_table_within_the_size_guard(tmp_path):
    comparison = compare_results(two_files(tmp_path))
    full = to_markdown(comparison)
    assert len(full) <= GITHUB_COMMENT_LIMIT
    assert "**which KV cache, against the dynamic cache, by file**" in full
    # A quantized cell from a file names its bits (the file's quantized_nbits, 4 by default).
    row = "| before | tiny · 100 tok · batch 2 · float16 | quantized int4 | 2.00× [1.59, 2.51] | 75.0% | 2.9 MiB | 90.0% | 12 |"
    assert row in full
    # Tighter limits drop the percentiles and the speedups first, then the verdicts, and say so.
    without = next(
        text for limit in range(len(full) - 1, 0, -20) if "**which KV cache" not in (text := to_markdown(comparison, limit))
    )
    assert "left out to fit a GitHub comment: which KV cache, against the dynamic cache, by file" in without
    assert "**mean ± std and peak memory, by file**" in without


def test_json_export_holds_the_verdict_records(tmp_path):
    document = json.loads(FORMATS["json"].render(compare_results(two_files(tmp_path))))
    records = {(r["label"], r["cache_implementation"]): r for r in document["cache_verdicts"]}
    assert len(records) == 6
    quantized = records[("after", "quantized")]
    assert quantized["latency_ratio_to_dynamic"] == pytest.approx(2.0)
    assert quantized["latency_ci_low"] < 2.0 < quantized["latency_ci_high"]
    assert quantized["kv_cache_saved_bytes"] == 3_000_000 and quantized["agreement_first_divergence"] == 12
    assert quantized["kv_bytes_per_position"] == 5_000 and quantized["weight_bytes"] == 2_000_000
    first = quantized["what_fits"][0]
    assert first["gpu_memory_bytes"] == 24 * 2**30
    # 5,000 bytes of cache, 128 of residual stream and 256 of dequantized layer per position (see above).
    assert first["longest_context_at_batch_1"] == (24 * 2**30 - 2_000_000) // (5_000 + 128 + 256)
    assert records[("after", "dynamic")]["reference"] and records[("after", "dynamic")]["missing"] == {}


def test_plot_writes_the_cache_choice_figure(tmp_path):
    written = plot_result(three_caches(), tmp_path / "plots")
    figure = tmp_path / "plots" / "cache-choice.png"
    assert figure in written and figure.read_bytes().startswith(b"\x89PNG")
    single = plot_result(cache_result(cache_cell("dynamic", [1.0, 1.1], 4_000_000)), tmp_path / "single")
    assert not any(path.name == "cache-choice.png" for path in single)


def test_a_hostile_reason_cannot_break_out_of_the_markdown_table(tmp_path):
    """A results file's text (a skipped cell's reason) reaches the markdown as one cell: no new row, heading or
    HTML tag in a pull-request comment."""
    hostile = "no\n## owned <img src=x onerror=alert(1)> | cell"
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 1000), cache_cell("static", [], None, status="skipped", reason=hostile)
    )
    paths = [tmp_path / "hostile.json", tmp_path / "again.json"]
    for path in paths:
        write_result(result, path)
    text = to_markdown(compare_results(paths, threshold_pct=10))
    assert "owned" in text
    assert "\n## owned" not in text and "<img" not in text
    row = next(line for line in text.splitlines() if "owned" in line)
    assert row.startswith("| ") and row.endswith(" |") and "\\|" in row


def test_a_quantized_cache_with_its_bits_gets_the_residual_window_note():
    result = cache_result(
        cache_cell("dynamic", [1.0, 1.1, 0.9], 4000), cache_cell("quantized", [1.2, 1.3, 1.1], 1000, **AGREES)
    )
    result.cells[1].settings = replace(result.cells[1].settings, quantized_nbits=4)
    (group,) = cache_verdicts(result)
    assert [verdict.cache for verdict in group.verdicts] == ["dynamic", "quantized int4"]
    own = "quantized: counted as its quantized bytes per position, its residual window"
    assert any(note.startswith(own) for note in what_fits_notes(group))


def test_the_longest_context_stops_at_the_models_position_limit():
    result = cache_result(cache_cell("dynamic", [1.0, 1.1, 0.9], 4000), cache_cell("static", [1.0, 1.0, 1.1], 4000, **AGREES))
    unlimited = what_fits(result.cells[0])
    assert unlimited.fits[0].longest_context > 512
    (group,) = cache_verdicts(result)
    assert not any("position limit" in note for note in what_fits_notes(group))
    for cell in result.cells:
        cell.model["max_positions"] = 512
    limited = what_fits(result.cells[0])
    assert [fit.longest_context for fit in limited.fits] == [512] * len(limited.fits)
    assert [fit.largest_batch for fit in limited.fits] == [fit.largest_batch for fit in unlimited.fits]
    (group,) = cache_verdicts(result)
    assert any("position limit (512 positions)" in note for note in what_fits_notes(group))


def test_negative_bytes_from_a_file_are_not_measurements():
    result = cache_result(cache_cell("dynamic", [1.0, 1.1, 0.9], -4000), cache_cell("static", [1.0, 1.0, 1.1], 4000, **AGREES))
    assert isinstance(what_fits(result.cells[0]), Missing)
    (group,) = cache_verdicts(result)
    assert isinstance(group.verdicts[1].memory_saved_bytes, Missing)
