"""The explanations wired into a run: prompt length as an axis, the cache object measured against theory,
memory over time, energy, device peaks, serving metrics, roofline fractions and length fits."""

import os

import pytest
from rich.console import Console

from kvbench.analysis.explain import ModeBound, explain_result, named_settings, percent
from kvbench.hardware.memory import downsample
from kvbench.model.cells import Cell, expand
from kvbench.model.experiment import build_config
from kvbench.model.settings import BenchConfig
from kvbench.render.cells import metric_lines
from kvbench.render.verdicts import fit_table
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import make_result, make_sweep, tiny_config


def test_a_cell_without_a_prompt_length_keeps_its_old_id():
    old = Cell("gpt2", 100, 1, "float32", "dynamic", "auto")
    assert old.id == "gpt2 new=100 batch=1 float32 cache=dynamic attn=auto"
    assert Cell("gpt2", 100, 1, "float32", "dynamic", "auto", 64).id == old.id + " prompt=64"


def test_prompt_tokens_is_a_sweep_axis_from_toml_and_the_command_line(tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text("prompt_tokens = [128, 512]\nmax_new_tokens = [8]\n")
    config = build_config(toml, {})
    assert [cell.prompt_tokens for cell in expand(config)] == [128, 512]
    assert [cell.prompt_tokens for cell in expand(build_config(None, {"prompt_tokens": [7]}))] == [7]
    assert [cell.prompt_tokens for cell in expand(BenchConfig(max_new_tokens=[8]))] == [None]


def test_the_cache_object_measures_as_theory_for_mha_and_gqa(tiny_gpt2_dir, tiny_llama_dir, tmp_path):
    """A real run of each tiny model: the cache walked after the first cached run holds exactly
    2 x layers x kv_heads x head_dim x (prompt + new - 1) x batch x 4 bytes (GQA: 2 KV heads, not 4)."""
    path = tmp_path / "r.json"
    config = tiny_config(tiny_gpt2_dir, runs=1, prompt_tokens=[3, 10])
    result = run_benchmark(config, output=path)
    llama = run_benchmark(tiny_config(tiny_llama_dir, runs=1, batch_size=[2]))
    for cell in [*result.cells, *llama.cells]:
        assert cell.kv_cache_class == "DynamicCache"
        assert cell.kv_cache_agrees is True
        assert cell.kv_cache_positions == cell.prompt_tokens + 8 - 1
    gpt2_cell = result.cells[1]
    assert gpt2_cell.prompt_tokens == 10
    assert gpt2_cell.kv_cache_measured_bytes == 2 * 2 * 2 * 16 * 17 * 1 * 4
    assert llama.cells[0].kv_cache_measured_bytes == 2 * 2 * 2 * 8 * (6 + 7) * 2 * 4
    # Stored, read back, and the runs carry what the summary and plots need.
    stored = read_result(path)
    assert stored.cells[1].kv_cache_bytes_by_device == {"cpu": 2 * 2 * 2 * 16 * 17 * 1 * 4}
    run = stored.runs[0]
    assert run.memory_timeline and run.memory_timeline_source.startswith("this process's RSS")
    assert run.time_per_output_token_s == pytest.approx((run.latency_s - run.token_times_s[0]) / 7, rel=1e-3)
    assert run.energy_j is None and "RAPL" in stored.unmeasured["energy"] or run.energy_j > 0
    summary = stored.summary_of(stored.cells[0].id, "cached")
    assert summary.ttft_p50_s <= summary.ttft_p99_s
    assert summary.itl_p50_s > 0 and summary.decode_tokens_per_s > 0


def test_device_peaks_give_each_mode_a_roofline_fraction(tiny_gpt2_dir):
    result = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, device_peaks=True))
    peaks = result.environment["device_peaks"]
    assert peaks["copy_bandwidth_bytes_per_s"] > 0 and peaks["matmul_flops_per_s"] > 0
    explanation = explain_result(result)
    bounds = [explanation.bound_of(result.cells[0].id, mode) for mode in ("cached", "uncached")]
    for bound in bounds:
        # A measurement can approach the bound, never beat it.
        assert 0 < bound.fraction_of_bound < 1
    lines = [line.plain for line in metric_lines(result, result.cells[0])]
    assert any(line.startswith("roofline (float32 peaks): cached at") for line in lines)
    assert any(line.startswith("cached: TTFT p50/90/99") for line in lines)


def test_length_fits_find_the_exponents_and_the_crossover():
    """Latencies made from known curves: cached 0.5 + 0.01 n, uncached 0.05 n + 0.001 n^2 (each run
    scaled by a little deterministic noise): cached k near 1, uncached clearly above it."""
    parts = []
    for length in (8, 16, 32, 64):
        curves = {"cached": 0.5 + 0.01 * length, "uncached": 0.05 * length + 0.001 * length**2}
        parts.append(
            make_result({mode: [value * f for f in (0.98, 1.0, 1.02)] for mode, value in curves.items()}, max_new_tokens=length)
        )
    result = make_sweep(parts)
    (fit,) = explain_result(result).fits
    fitted = fit.extrapolation
    assert fitted.cached.exponent == pytest.approx(1.0, abs=0.1)
    assert fitted.uncached.exponent > 1.3
    # 0.5 + 0.01 n = 0.05 n + 0.001 n^2 at n = 10.
    assert fitted.crossover_new_tokens == pytest.approx(10, rel=0.1)
    assert fitted.speedup_at_10x > fitted.speedup_at_2x > 1
    assert fit_table(result) is not None


def test_an_extrapolation_the_fits_cannot_support_is_not_a_figure():
    """Equal exponents in noisy runs over short lengths: the exponents' difference has an interval across
    0 (+3.37 [-1.06, +7.80] in the issue), so a speedup at 2x or 10x the longest length could be anything.
    It used to be printed ("46.55× at 128 / 6823.69× at 640") beside the line saying so; now the table
    says "not extrapolated" and why, and the results file holds no figure for it."""
    noise = (0.80, 1.0, 1.25)
    parts = []
    for length in (8, 16, 32, 64):
        curves = {"cached": 0.3 + 0.05 * length, "uncached": 0.3 + 0.08 * length}
        factors = {"cached": noise, "uncached": noise[::-1] if length % 16 else noise}
        parts.append(
            make_result({mode: [value * f for f in factors[mode]] for mode, value in curves.items()}, max_new_tokens=length)
        )
    result = make_sweep(parts)
    (fit,) = explain_result(result).fits
    fitted = fit.extrapolation
    assert fitted.exponent_gap_ci95_low < 0 < fitted.exponent_gap_ci95_high
    assert fitted.speedup_at_2x is None and fitted.speedup_at_10x is None
    assert "no speedup is extrapolated beyond the lengths run" in fitted.speedup_reason
    console = Console(width=200, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(fit_table(result))
    text = console.export_text()
    assert "not extrapolated" in text and "× at 128" not in text and "× at 640" not in text
    assert "cannot tell the exponents apart" in text and "no speedup is extrapolated" in text
    assert explain_result(result).to_dict()["length_fits"][0]["extrapolation"]["speedup_at_10x"] is None


def test_a_rate_above_its_roofline_bound_is_never_more_than_100_percent():
    """A tiny GQA model at 8,192 prompt tokens, peaks measured under load: "cached at 101% of the compute
    bound … uncached at 118%". A lower bound cannot be beaten: the words say the bound or the peaks are
    wrong, and print no share of it."""
    beaten = ModeBound("cell", "uncached", 0.00118, 0.001, 1.18, "compute", 0, 8)
    words = beaten.words()
    assert "118%" not in words and "%" not in words
    assert words.startswith("uncached measured faster than its compute bound (1.18 ms/token bound, 1 measured)")
    assert "the bound's cost model or the peaks it uses are wrong" in words
    assert beaten.reached() == "measured faster than it: the bound or the peaks are wrong"
    within = ModeBound("cell", "cached", 0.00071, 0.001, 0.71, "memory bandwidth", 8, 8)
    assert within.words().startswith("cached at 71% of the memory-bandwidth bound") and within.reached() == "run at 71% of it"
    at_the_bound = ModeBound("cell", "cached", 0.001, 0.001, 1.0, "compute", 0, 8)
    assert at_the_bound.words().startswith("cached at 100% of the compute bound")


def test_named_settings_percent_and_downsample():
    cell = Cell("gpt2", 8, 1, "float32", "dynamic", "eager", None)
    assert named_settings(cell, ["attn_implementation", "batch_size", "prompt_tokens"]) == "attn=eager, batch=1, prompt=text"
    assert percent(0.71) == "71%" and percent(0.0013) == "0.13%"
    timeline = [(i / 1000, 100 + (5000 if i == 437 else i)) for i in range(1000)]
    kept = downsample(timeline, 100)
    assert len(kept) <= 101 and kept[0] == [0.0, 100] and kept[-1][0] == pytest.approx(0.999)
    assert max(used for _, used in kept) == 5100  # the highest reading survives
    assert downsample(None) is None
