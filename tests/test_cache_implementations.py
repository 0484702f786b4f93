"""Cache implementations beside the dynamic cache: the settings each generate() call is given."""

from __future__ import annotations

import json

import pytest
import torch

from kvbench.analysis.explain import named_settings, varying_axes
from kvbench.compare.judging import compare_results
from kvbench.core.errors import KvbenchError
from kvbench.measure.generation import Generation, TokenClock
from kvbench.measure.measurer import Measurer
from kvbench.measure.prompts import PromptBatch
from kvbench.model.caches import cache_config
from kvbench.model.cells import Cell, cell_count, expand, shown_value
from kvbench.model.experiment import build_config
from kvbench.model.settings import BenchConfig
from kvbench.model.validation import validate
from kvbench.render.plot import _groups
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config


class PoppingModel:
    """generate() as transformers 5.17 has it for a quantized cache: it pops 'backend' from the cache_config
    it is given (`cache_config.pop("backend", "quanto")`), and records what each call received."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    def generate(self, *args, **kwargs):
        settings = kwargs["cache_config"]
        self.received.append(dict(settings))
        settings.pop("backend", "quanto")
        return None


def test_every_call_gets_the_whole_cache_config_even_when_generate_pops_from_it():
    cell = Cell("tiny-gpt2", 4, 1, "auto", "quantized", "auto", quantized_nbits=2)
    settings = cache_config(BenchConfig(quantized_backend="hqq", quantized_nbits=[2]), cell)
    model = PoppingModel()
    ids = torch.ones(1, 3, dtype=torch.long)
    batch = PromptBatch(ids, torch.ones_like(ids), [3])
    generation = Generation(model, cell, batch, 0, TokenClock(lambda: None), False, settings)
    for _ in range(3):
        generation("cached")
    assert [call["backend"] for call in model.received] == ["hqq"] * 3
    # What the theory of the cache's bytes reads afterwards (kvbench.measure.measurement.record_cache_size).
    assert generation.cache_config == {"backend": "hqq", "nbits": 2, "q_group_size": 64, "residual_length": 128}


# The quantized cache's bits as a sweep axis


def test_swept_bits_multiply_the_quantized_cells_only(tmp_path):
    experiment = tmp_path / "bits.toml"
    experiment.write_text('cache_implementation = ["dynamic", "static", "quantized"]\nquantized_nbits = [4, 2]\n')
    config = build_config(experiment, {"batch_size": [1, 2]})
    cells = expand(config)
    assert [(cell.cache_implementation, cell.quantized_nbits) for cell in cells if cell.batch_size == 1] == [
        ("dynamic", None),
        ("static", None),
        ("quantized", 4),
        ("quantized", 2),
    ]
    assert len(cells) == 8 == cell_count(config)
    ids = [cell.id for cell in cells if cell.batch_size == 1]
    assert ids[0] == "gpt2 new=1000 batch=1 auto cache=dynamic attn=auto"
    assert ids[2:] == [
        "gpt2 new=1000 batch=1 auto cache=quantized nbits=4 attn=auto",
        "gpt2 new=1000 batch=1 auto cache=quantized nbits=2 attn=auto",
    ]
    assert cells[3].label() == "gpt2 · 1000 tok · batch 1 · auto · cache quantized int2"


def test_the_command_line_sweeps_bits_and_one_value_works_as_before():
    swept = build_config(None, {"cache_implementation": ["quantized"], "quantized_nbits": [4, 2]})
    assert [cell.quantized_nbits for cell in expand(swept)] == [4, 2]
    # A library caller's single value, as before the bits were an axis.
    assert BenchConfig(quantized_nbits=2).quantized_nbits == [2]


def test_every_swept_bit_width_is_checked_against_the_backend_and_fp8_takes_none():
    with pytest.raises(KvbenchError, match="'quantized_nbits' cannot be 3 with the quanto backend; choose one of 2, 4"):
        validate(BenchConfig(cache_implementation=["quantized"], quantized_nbits=[4, 3]))
    validate(BenchConfig(cache_implementation=["quantized"], quantized_backend="hqq", quantized_nbits=[8, 3, 1]))
    with pytest.raises(KvbenchError, match="'quantized_nbits' lists several values, but the fp8 backend"):
        validate(BenchConfig(cache_implementation=["quantized"], quantized_backend="fp8", quantized_nbits=[4, 2]))
    # fp8's width is fixed: its cell names no bits.
    (fp8,) = expand(BenchConfig(cache_implementation=["quantized"], quantized_backend="fp8"))
    assert fp8.quantized_nbits is None and fp8.id.endswith("cache=quantized attn=auto")


class RecordingGenerate:
    """A real model's generate(), with the cache settings of each call noted."""

    def __init__(self, model) -> None:
        self.original, self.calls = model.generate, []

    def __call__(self, *args, **kwargs):
        self.calls.append({key: kwargs[key] for key in ("cache_implementation", "cache_config") if key in kwargs})
        return self.original(*args, **kwargs)


def recording_generate(monkeypatch) -> list[RecordingGenerate]:
    """Each model a Measurer loads, its generate() wrapped to note the cache settings of every call."""
    recorders: list[RecordingGenerate] = []
    original = Measurer._model_for

    def model_for(self, job, *rest):
        loaded = original(self, job, *rest)
        if not isinstance(loaded.model.generate, RecordingGenerate):
            loaded.model.generate = RecordingGenerate(loaded.model)
            recorders.append(loaded.model.generate)
        return loaded

    monkeypatch.setattr(Measurer, "_model_for", model_for)
    return recorders


def test_a_sweep_of_int4_and_int2_measures_each_quantized_cell_against_its_own_theory(tiny_gpt2_dir, tmp_path, monkeypatch):
    pytest.importorskip("optimum.quanto", reason="the quanto backend needs pip install 'kvbench[quantized]'")
    recorders = recording_generate(monkeypatch)
    config = tiny_config(
        tiny_gpt2_dir,
        max_new_tokens=[20],
        runs=1,
        warmup=1,  # the backend loads its kernels in the first generation
        modes=["cached"],
        cache_implementation=["dynamic", "quantized"],
        quantized_nbits=[4, 2],
        quantized_group_size=16,
        quantized_residual_length=2,
    )
    result = run_benchmark(config, output=tmp_path / "r.json")
    assert [cell.status for cell in result.cells] == ["measured"] * 3, [cell.reason for cell in result.cells]
    dynamic, int4, int2 = result.cells
    # Each quantized cell's calls, in the order the cells ran, carry that cell's bits.
    bits = [call["cache_config"]["nbits"] for recorder in recorders for call in recorder.calls if "cache_config" in call]
    assert list(dict.fromkeys(bits)) == [4, 2]
    for cell, nbits in ((int4, 4), (int2, 2)):
        assert cell.kv_cache_class == "QuantizedCache"
        assert cell.kv_cache_measured_bytes == pytest.approx(cell.kv_cache_theory_bytes, rel=0.05)
        assert f"positions at {nbits} bits per value" in cell.kv_cache_note
    # Fewer bits, less to store, in the measured bytes as in the theory.
    assert int2.kv_cache_measured_bytes < int4.kv_cache_measured_bytes < dynamic.kv_cache_measured_bytes
    assert int2.kv_cache_theory_bytes < int4.kv_cache_theory_bytes
    stored = read_result(tmp_path / "r.json")
    assert [cell.settings.quantized_nbits for cell in stored.cells] == [None, 4, 2]
    assert stored.config["quantized_nbits"] == [4, 2]
    assert {run.cell for run in stored.runs} == {cell.id for cell in result.cells}
    assert "cache quantized int2" in stored.cells[2].label()
    # The bits vary among the quantized cells; the dynamic cell has none to show.
    assert varying_axes(stored) == ["cache_implementation", "quantized_nbits"]
    assert [named_settings(cell.settings, varying_axes(stored)) for cell in stored.cells] == [
        "cache=dynamic",
        "cache=quantized, nbits=4",
        "cache=quantized, nbits=2",
    ]
    # Drawn along the cache implementation, the three are one panel's bars, the bits named in each.
    (panel,) = _groups(stored, "cache_implementation").values()
    assert [shown_value(cell.settings, "cache_implementation") for cell in panel] == [
        "dynamic",
        "quantized int4",
        "quantized int2",
    ]


def as_written_before_bits_were_an_axis(path) -> None:
    """Rewrite a results file the way kvbench wrote it when the bits were one value: a number in the
    config, and quantized cells whose settings and ids do not name their bits."""
    data = json.loads(path.read_text())
    (data["config"]["quantized_nbits"],) = data["config"]["quantized_nbits"]
    renamed = {}
    for cell in data["cells"]:
        if cell["settings"].pop("quantized_nbits", None) is not None:
            old_id = Cell(**cell["settings"]).id
            renamed[cell["id"]], cell["id"] = old_id, old_id
    for run in data["runs"]:
        run["cell"] = renamed.get(run["cell"], run["cell"])
    assert renamed and all(" nbits=" not in run["cell"] for run in data["runs"])
    path.write_text(json.dumps(data))


def test_a_file_from_before_the_bits_were_an_axis_loads_resumes_and_compares(tiny_gpt2_dir, tmp_path, monkeypatch):
    pytest.importorskip("optimum.quanto", reason="the quanto backend needs pip install 'kvbench[quantized]'")
    config = tiny_config(
        tiny_gpt2_dir,
        max_new_tokens=[6],
        runs=2,
        warmup=1,  # the backend loads its kernels in the first generation
        cache_implementation=["dynamic", "quantized"],
        quantized_group_size=16,
        quantized_residual_length=2,
    )
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    run_benchmark(config, output=old)
    run_benchmark(config, output=new)
    as_written_before_bits_were_an_axis(old)
    loaded = read_result(old)
    quantized = loaded.cells[1]
    assert quantized.settings.quantized_nbits == 4 and quantized.id.endswith("cache=quantized nbits=4 attn=auto")
    assert len(loaded.runs_of(quantized.id, "cached")) == 2
    assert loaded.config["quantized_nbits"] == [4]
    assert varying_axes(loaded) == ["cache_implementation"]  # one width: not an axis of this file
    # Resumed with the same settings: both cells are finished, nothing is measured again.
    recorders = recording_generate(monkeypatch)
    resumed = run_benchmark(config, output=old, resume=True)
    assert not any(recorder.calls for recorder in recorders)
    assert [run.latency_s for run in resumed.runs] == [run.latency_s for run in loaded.runs]
    # Compared with a file written now, the quantized cell is the same measurement in both.
    comparison = compare_results([old, new])
    rows = [row for row in comparison.rows if row.key.cell.cache_implementation == "quantized"]
    assert len(rows) == 2 and all(None not in row.entries for row in rows)
    assert not [warning for warning in comparison.warnings if "compared although" in warning]


# transformers' other names for the same caches


ALIASES = {
    "sliding_window": "use static",
    "hybrid_chunked": "use static",
    "offloaded_hybrid": "use offloaded_static",
    "offloaded_hybrid_chunked": "use offloaded_static",
    "hybrid": "use static or dynamic",
}


@pytest.mark.parametrize(("name", "advice"), ALIASES.items())
def test_an_older_transformers_name_is_refused_naming_the_same_cache(name, advice, tmp_path):
    from tests.test_cli import assert_user_error, invoke

    refused = invoke("run", "--dry-run", "--cache-implementation", name)
    assert_user_error(refused, f"'{name}' is an older transformers name", advice)
    experiment = tmp_path / "aliases.toml"
    experiment.write_text(f'cache_implementation = ["dynamic", "{name}"]\n')
    with pytest.raises(KvbenchError, match=advice):
        build_config(experiment, {})


def cache_layout(model, name: str) -> tuple[str, list[str]]:
    output = model.generate(
        torch.ones(1, 3, dtype=torch.long),
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        cache_implementation=name,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    cache = output.past_key_values
    return type(cache).__name__, [type(layer).__name__ for layer in cache.layers]


@pytest.mark.parametrize("sliding_window", [None, 4])
def test_the_installed_transformers_builds_the_named_cache_for_each_older_name(sliding_window):
    """What the refusals say, checked against the transformers installed: on a model of full attention
    layers and on one of sliding-window layers (Mistral's), each older name builds the same cache object,
    with the same layers, as the choice it names. The offloaded names need CUDA to run; transformers takes
    them down the same path, offloading on (kvbench/model/caches/__init__.py SAME_CACHE_AS)."""
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=100,
        sliding_window=sliding_window,
    )
    model = AutoModelForCausalLM.from_config(config)
    static, dynamic = cache_layout(model, "static"), cache_layout(model, "dynamic")
    assert ("SlidingWindow" in static[1][0]) is (sliding_window is not None)
    assert cache_layout(model, "sliding_window") == static
    assert cache_layout(model, "hybrid_chunked") == static
    assert cache_layout(model, "hybrid") in (static, dynamic)


def test_each_bit_width_is_a_cell_of_its_own_to_plan_estimate_and_measure_in_its_own_process(tiny_gpt2_dir, quanto_planned):
    from kvbench.launch.base import cell_jobs
    from kvbench.runner.benchmark import Benchmark

    config = tiny_config(tiny_gpt2_dir, cache_implementation=["dynamic", "quantized"], quantized_nbits=[4, 2], warmup=1)
    benchmark = Benchmark(config)
    planned = benchmark.plan()
    assert [action for _, action in planned.cells] == ["measure"] * 3
    assert planned.generations == 3 * (config.runs + config.warmup) * len(config.modes)
    # The time left counts each cell's generations: both widths' are there.
    assert {generation.cell for generation in benchmark.planned()} == {cell.id for cell in expand(config)}
    # A measuring process is given its own cell, the one planned, and generate() its own bits.
    for cell in expand(config):
        (job,) = cell_jobs(config, cell, sweep=True)
        assert job.cell == cell
        settings = cache_config(job.config, job.cell)
        assert (settings or {}).get("nbits") == cell.quantized_nbits


def test_an_fp8_cache_on_a_transformers_without_one_is_skipped_with_the_fix(monkeypatch):
    """transformers 5.17 has no Fp8QuantizedLayer: its generate() would fail inside the first run. Played here by
    taking the layer out of the installed cache_utils."""
    from transformers import cache_utils

    from kvbench.measure.support import unsupported_reason

    cell = Cell("tiny-llama", 4, 1, "auto", "quantized", "auto")
    assert unsupported_reason(cell, "cpu", settings=BenchConfig(quantized_backend="fp8")) is None
    monkeypatch.delattr(cache_utils, "Fp8QuantizedLayer")
    reason = unsupported_reason(cell, "cpu", settings=BenchConfig(quantized_backend="fp8"))
    assert reason is not None and "fp8 quantized cache" in reason and "pip install -U transformers" in reason
    assert "fp8" not in (unsupported_reason(cell, "cpu", settings=BenchConfig(quantized_backend="quanto")) or "")
