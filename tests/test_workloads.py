"""The KV cache where inference engineers use it: a shared prefix whose cache each request copies (the prefix
mode), and real batches (a different prompt per row, ragged lengths left-padded, a prompts file). Real tiny
models; structure only: no test decides anything from how long something took."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from kvbench.analysis.roofline import step_cost
from kvbench.cli import app
from kvbench.core.kvsize import kv_cache_bytes
from kvbench.measure.prompts import build_batch, distinct_rows, ragged_lengths
from kvbench.model.cells import expand
from kvbench.model.costs import ModelCost
from kvbench.model.experiment import build_config
from kvbench.model.settings import BenchConfig
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config

runner = CliRunner()
MILTON = "tiny-milton"  # trained, with a tokenizer: token-identical outputs mean something


def test_prefix_mode_starts_each_generation_from_a_copy_of_the_prefix_cache(tmp_path):
    out = tmp_path / "prefix.json"
    result = runner.invoke(
        app,
        ["run", "-m", MILTON, "--prompt-tokens", "200", "--prefix-tokens", "180", "--modes", "cached,prefix"]
        + ["-n", "12", "-r", "2", "-w", "1", "-d", "cpu", "--isolation", "none", "--no-device-peaks", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    stored = read_result(out)
    (cell,) = stored.cells
    assert cell.settings.prefix_tokens == 180 and cell.id.endswith(" prefix=180")
    assert {run.mode for run in stored.runs} == {"cached", "prefix"}
    assert cell.prefix_outputs_match is True and cell.prefix_first_divergence is None
    # One row's cache of the 180 prefix positions: the formula's bytes (4 layers, 4 heads of 32, float32).
    assert cell.prefix_cache_bytes == kv_cache_bytes(4, 4, 32, 180, 1, 4)
    for run in stored.runs:
        if run.mode == "prefix":
            # The copy is part of what the request costs: timed, within its first token.
            assert run.prefix_copy_s is not None and 0 < run.prefix_copy_s <= run.time_to_first_token_s
            assert run.prefill_tokens == 200 - 180
        else:
            assert run.prefix_copy_s is None and run.prefill_tokens is None
    document = json.loads(out.read_text())
    (reuse,) = document["prefix_reuse"]
    assert reuse["cell"] == cell.id and reuse["prefix_tokens"] == 180
    assert reuse["ttft_saved_s"] == pytest.approx(reuse["ttft_cached_s"] - reuse["ttft_prefix_s"])
    assert reuse["outputs_match"] is True
    # The saving is in the run's report and in show.
    assert "prefix reuse (180 of 200 prompt tokens" in result.output
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0 and "prefix reuse (180 of 200 prompt tokens" in shown.output
    assert "outputs token-identical to cached" in shown.output


def test_the_prefix_cache_is_never_changed_by_the_generations_that_copy_it():
    from kvbench.measure.measurer import Measurer

    config = tiny_config("tiny-llama", prompt_tokens=[64], prefix_tokens=[48], modes=["cached", "prefix"], batch_size=[3])
    measurer = Measurer(config, "cpu")
    cell = expand(config)[0]
    measurer.prepare([cell])
    loaded = measurer._model_for(_job(config, cell), lambda event: None)
    generation = _generation(measurer, loaded, cell)
    prefix = generation.prefill_prefix()
    assert prefix.get_seq_length() == 48
    first = generation("prefix").sequences
    second = generation("prefix").sequences
    cached = generation("cached").sequences
    assert prefix.get_seq_length() == 48 and prefix.layers[0].keys.shape[0] == 1
    assert (first == second).all() and (first == cached).all()
    # Three different prompts, one shared prefix.
    rows = generation.input_ids
    assert (rows[:, :48] == rows[0, :48]).all() and len({tuple(row[48:].tolist()) for row in rows}) == 3


def _job(config: BenchConfig, cell):
    from kvbench.model.jobs import CellJob

    return CellJob(config, cell, config.runs)


def _generation(measurer, loaded, cell):
    from kvbench.measure.generation import TokenClock, pad_token_id, prepare_generation

    batch = measurer.batch_of(cell, pad_token_id(loaded.model))
    return prepare_generation(loaded, cell, batch, TokenClock(lambda: None))


def test_a_ragged_batch_records_each_rows_length_and_its_cache_is_the_padded_theory(tmp_path):
    config = tiny_config("tiny-llama", prompt_tokens=[64], batch_size=[4], ragged=True, max_new_tokens=[6])
    result = run_benchmark(config, output=tmp_path / "ragged.json")
    (cell,) = read_result(tmp_path / "ragged.json").cells
    assert cell.status == "measured"
    assert cell.prompt_tokens_by_row == [64, 56, 48, 40] and len(set(cell.prompt_tokens_by_row)) == 4
    assert cell.padding_share == pytest.approx(1 - sum(cell.prompt_tokens_by_row) / (4 * 64))
    # Padded positions are cached as real ones: the measured cache is the formula at the batch's full width.
    assert cell.kv_cache_measured_bytes == cell.kv_cache_theory_bytes
    assert cell.kv_cache_theory_bytes == kv_cache_bytes(2, 2, 16, 64 + 6 - 1, 4, 4)
    assert cell.outputs_match is True
    # Prefill counts the real tokens, not the padding.
    assert {run.prefill_tokens for run in result.runs} == {sum(cell.prompt_tokens_by_row)}


def test_batch_rows_are_different_prompts_and_a_batch_of_one_is_the_prompt_as_before():
    import torch

    first = torch.arange(10, 30)
    text_rows = distinct_rows(first, 3, synthetic=False, vocab_size=100, seed=0)
    synthetic_rows = distinct_rows(first, 3, synthetic=True, vocab_size=100, seed=0)
    for rows in (text_rows, synthetic_rows):
        assert rows[0] is first and len({tuple(row.tolist()) for row in rows}) == 3
        assert all(len(row) == 20 for row in rows)
    # The text's own tokens in another order: real tokens of the model's vocabulary.
    assert sorted(text_rows[2].tolist()) == sorted(first.tolist())
    assert ragged_lengths(64, 4) == [64, 56, 48, 40] and ragged_lengths(3, 8) == [3, 2, 1, 1, 1, 1, 1, 1]
    batch = build_batch(text_rows, prefix_tokens=None, ragged=True, pad_token_id=0)
    assert batch.lengths == [20, 17, 14] and batch.padded
    # Left-padded: every row's last token in the last column, its mask zero over the padding only.
    assert batch.attention_mask.sum(dim=1).tolist() == [20, 17, 14]
    assert batch.attention_mask[2, :6].tolist() == [0] * 6 and (batch.input_ids[2, 6:] == text_rows[2][:14]).all()
    shared = build_batch(text_rows, prefix_tokens=5, ragged=False, pad_token_id=0)
    assert (shared.input_ids[:, :5] == first[:5]).all() and not shared.padded


def test_a_prompts_file_gives_each_row_its_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Of Man's first disobedience\n\nand the fruit\nOf that forbidden tree, whose mortal taste\n")
    config = tiny_config(MILTON, prompts=str(prompts), batch_size=[3], max_new_tokens=[4])
    run_benchmark(config, output=tmp_path / "file.json")
    (cell,) = read_result(tmp_path / "file.json").cells
    assert cell.status == "measured" and cell.prompt_source == "file"
    # Character-level tokens: each line's length, the blank line skipped; left-padded to the longest.
    assert cell.prompt_tokens_by_row == [27, 13, 42] and cell.prompt_tokens == 42


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--modes", "cached,prefix"], "reuses a shared prefix's cache, and there is none; add --prefix-tokens"),
        (["--prompt-tokens", "64", "--prefix-tokens", "64", "--modes", "cached,prefix"], "no prefix (64 tokens) is shorter"),
        (["--prefix-tokens", "8", "--ragged", "-b", "2"], "--ragged left-pads the shorter prompts"),
        (
            ["--prefix-tokens", "8", "--modes", "prefix", "--cache-implementation", "static"],
            "the prefix mode copies a dynamic cache, and the sweep also has static",
        ),
        (["--prefix-tokens", "19", "--modes", "cached,prefix"], "prefix of 19 tokens is not shorter than the 19-token prompt"),
        (["--prompts", "{missing}", "-b", "2"], "prompts file"),
        (["--prompts", "{short}", "-b", "3"], "has 2 prompt line(s), fewer than the batch of 3; add lines"),
        (["--prompts", "{short}", "-b", "2", "-m", "tiny-llama"], "tiny-llama has no tokenizer to read --prompts with"),
    ],
)
def test_workload_mistakes_are_one_line(tmp_path, arguments, message):
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\n")
    arguments = [a.format(missing=tmp_path / "none.txt", short=short) for a in arguments]
    model = [] if "-m" in arguments else ["-m", MILTON]
    result = runner.invoke(app, ["run", *model, "-n", "2", "-r", "1", "-w", "0", "-d", "cpu", "--dry-run", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_each_prompt_pairs_with_the_prefixes_shorter_than_it():
    config = build_config(None, {"prompt_tokens": [2048, 8192], "prefix_tokens": [2000, 8000], "modes": ["cached", "prefix"]})
    cells = expand(config)
    assert [(cell.prompt_tokens, cell.prefix_tokens) for cell in cells] == [(2048, 2000), (8192, 2000), (8192, 8000)]
    from kvbench.model.cells import cell_count

    assert cell_count(config) == 3
    assert cell_count(build_config(None, {})) == len(expand(build_config(None, {}))) == 1


def test_the_prefix_modes_first_step_computes_only_the_tokens_after_the_prefix():
    model = ModelCost(
        parameters=1000, head_parameters=300, lookup_parameters=100, layers=2, hidden=8, attention_width=8,
        kv_heads=1, head_dim=8, bytes_per_element=4,
    )  # fmt: skip
    full = step_cost(model, "cached", 0, 100, 1)
    reused = step_cost(model, "prefix", 0, 100, 1, prefix_tokens=90)
    # 10 of 100 positions computed: body FLOPs and attention a tenth; the head once either way.
    assert reused.flops == 2 * (600 * 10 + 300) + 4 * 2 * 8 * 10 * 100
    assert full.flops == 2 * (600 * 100 + 300) + 4 * 2 * 8 * 100 * 100
    # The copy reads and writes the prefix's cache once.
    assert reused.bytes_moved - (full.bytes_moved - 2 * 2 * 100 * 8 * 4 + 2 * 2 * 10 * 8 * 4) == 2 * model.kv_bytes(90, 1)
    # Later steps are the cached mode's.
    assert step_cost(model, "prefix", 3, 100, 1, prefix_tokens=90) == step_cost(model, "cached", 3, 100, 1)


def test_comparing_step_by_step_gives_the_figures_keeping_every_steps_logits_gives(monkeypatch):
    from kvbench.measure import agreement

    def figures() -> tuple:
        config = tiny_config(
            MILTON, max_new_tokens=[24], cache_implementation=["dynamic", "quantized"], quantized_backend="fp8",
            modes=["cached"], runs=1, warmup=1, prompt="Of Mans First Disobedience",
        )  # fmt: skip
        cell = run_benchmark(config).cells[1]
        assert cell.status == "measured", cell.reason
        names = ("agreement_token_share", "agreement_first_divergence", "agreement_top1_share", "agreement_kl_mean_nats")
        return tuple(getattr(cell, name) for name in names)

    kept = figures()
    monkeypatch.setattr(agreement, "MOST_KEPT_LOGITS_BYTES", 0)
    streamed = figures()
    assert kept[3] > 0  # lossy: the comparison has something to find
    assert streamed[:3] == kept[:3] and streamed[3] == pytest.approx(kept[3], rel=1e-9)


def test_the_comparisons_peak_memory_does_not_grow_with_steps_times_vocabulary():
    """A 64-step comparison's peak over where it started, each way, in processes of their own: keeping every
    step's logits (31 MiB a pass over a 128k vocabulary) rises by both passes' worth, comparing step by step
    by less than one pass's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("agreement_peak.py")
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(script.parents[1])}
    children = {
        way: subprocess.Popen([sys.executable, str(script), way], stdout=subprocess.PIPE, text=True, env=environment)
        for way in ("streamed", "stored")
    }
    growth = {}
    for way, child in children.items():
        output, _ = child.communicate(timeout=900)
        assert child.returncode == 0
        growth[way] = int(output.strip().splitlines()[-1])
    assert growth["stored"] > 56 * 2**20
    assert growth["streamed"] < 16 * 2**20


def test_the_long_context_tool_predicts_uncached_time_as_a_sum_of_first_token_times(monkeypatch):
    """tools/long_context.py fits the cached first-token times and sums them over a generation's steps; on
    times made to follow a quadratic exactly, it recovers it, agrees with an uncached run that took that sum,
    and marks the prompt with no uncached run as predicted."""
    import importlib.util
    from pathlib import Path

    from kvbench.model.records import RunRecord

    spec = importlib.util.spec_from_file_location("long_context", Path(__file__).parent.parent / "tools" / "long_context.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "long_context", tool)  # its dataclasses look themselves up there
    spec.loader.exec_module(tool)

    def ttft(tokens: int) -> float:
        return 0.02 + 3e-6 * tokens + 2e-10 * tokens * tokens

    def run(mode: str, prompt: int, latency: float, first: float | None) -> RunRecord:
        return RunRecord("c", mode, 0, latency, 8, prompt, 1, 8 / latency, first)

    runs = [run("cached", p, ttft(p) + 0.05, ttft(p)) for p in (1024, 2048, 4096, 8192, 32768)]
    runs.append(run("uncached", 2048, sum(ttft(2048 + t) for t in range(8)), ttft(2048)))
    fit, rows = tool.table_of(runs)
    assert fit.c == pytest.approx(2e-10, rel=1e-6) and fit.b == pytest.approx(3e-6, rel=1e-6)
    by_prompt = {row.prompt_tokens: row for row in rows}
    assert by_prompt[2048].uncached_predicted_s == pytest.approx(by_prompt[2048].uncached_measured_s, rel=1e-9)
    assert by_prompt[32768].uncached_measured_s is None
    table = tool.markdown(fit, rows)
    assert "measured (predicted" in table and "**predicted**" in table.splitlines()[-1]
