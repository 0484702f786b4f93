import importlib.util
import json

import pytest

from kvbench.core.errors import KvbenchError
from kvbench.measure.agreement import first_divergence
from kvbench.model.events import Observer
from kvbench.runner.benchmark import Benchmark, run_benchmark
from kvbench.storage.document import read_result
from tests.clocks import ScriptedClock, jittered, steady
from tests.conftest import tiny_config


class Recorder(Observer):
    def __init__(self, interrupt_after: int | None = None):
        self.labels: list[str] = []
        self.tokens = 0
        self.finished = 0
        self.interrupt_after = interrupt_after

    def generation_started(self, label, generation):
        self.labels.append(label)

    def token(self):
        self.tokens += 1

    def generation_finished(self, latency_s, generation=None):
        self.finished += 1
        if self.interrupt_after is not None and self.finished >= self.interrupt_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_every_run_generates_exactly_the_requested_tokens(model_fixture, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    result = run_benchmark(tiny_config(model_dir, max_new_tokens=[12]), output=tmp_path / "r.json")
    assert len(result.runs) == 4
    for run in result.runs:
        assert run.new_tokens == 12
        assert len(run.token_times_s) == 12
        assert run.token_times_s == sorted(run.token_times_s)
        assert 0 < run.time_to_first_token_s <= run.latency_s


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_greedy_cached_and_uncached_outputs_are_identical(model_fixture, request):
    model_dir = request.getfixturevalue(model_fixture)
    result = run_benchmark(tiny_config(model_dir, max_new_tokens=[20], runs=1))
    cell = result.cells[0]
    assert cell.status == "measured"
    assert cell.outputs_match is True
    assert cell.first_divergence is None


def test_first_divergence_finds_the_first_differing_position():
    import torch

    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    b = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 4]])
    assert first_divergence(a, b) == 2
    assert first_divergence(a, a.clone()) is None


def test_runs_interleave_modes_after_warmup(tiny_gpt2_dir):
    recorder = Recorder()
    result = run_benchmark(tiny_config(tiny_gpt2_dir, runs=2, warmup=1), observer=recorder)
    assert recorder.labels == [
        "warmup cached 1/1",
        "warmup uncached 1/1",
        "cached 1/2",
        "uncached 1/2",
        "cached 2/2",
        "uncached 2/2",
    ]
    assert [run.mode for run in result.runs] == ["cached", "uncached", "cached", "uncached"]
    assert recorder.tokens == 6 * 8


def test_tokenizer_is_used_when_the_model_has_one(tiny_gpt2_dir, tiny_llama_dir):
    with_tokenizer = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1))
    assert with_tokenizer.cells[0].prompt_source == "tokenized"
    assert with_tokenizer.cells[0].prompt_tokens == 5  # what is kv caching ?
    without = run_benchmark(tiny_config(tiny_llama_dir, runs=1))
    assert without.cells[0].prompt_source == "synthetic"
    assert without.cells[0].prompt_tokens == 6
    # A prompt length with a tokenizer: the prompt's own tokens, repeated and cut to that length.
    forced = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, prompt_tokens=[12]))
    assert forced.cells[0].prompt_source == "tokenized"
    assert forced.runs[0].prompt_tokens == 12
    synthetic = run_benchmark(tiny_config(tiny_llama_dir, runs=1, prompt_tokens=[9]))
    assert synthetic.cells[0].prompt_source == "synthetic"
    assert synthetic.runs[0].prompt_tokens == 9


def test_results_file_holds_environment_config_runs_and_summary(tiny_llama_dir, tmp_path):
    path = tmp_path / "r.json"
    Benchmark(tiny_config(tiny_llama_dir, batch_size=[2]), output=path, command="kvbench run x").run()
    data = json.loads(path.read_text())
    assert data["format"] == "kvbench-results" and data["schema_version"] == 1
    assert data["complete"] is True
    assert data["command"] == "kvbench run x"
    assert data["kvbench_version"]
    for key in ("python", "torch", "transformers", "device", "cpu"):
        assert data["environment"][key]
    assert data["config"]["batch_size"] == [2]
    assert data["cells"][0]["model"]["weights"] == "pretrained"
    assert {run["mode"] for run in data["runs"]} == {"cached", "uncached"}
    assert all(run["batch_size"] == 2 and run["latency_s"] > 0 for run in data["runs"])
    summary = {row["mode"]: row for row in data["summary"]}
    cached_latencies = [run["latency_s"] for run in data["runs"] if run["mode"] == "cached"]
    assert summary["cached"]["n"] == 2
    assert summary["cached"]["mean_s"] == pytest.approx(sum(cached_latencies) / 2)
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert csv[0].startswith("cell,mode,run,model,max_new_tokens,batch_size,dtype,") and ",latency_s," in csv[0]
    assert len(csv) == 1 + 4
    # Theoretical KV size: 2 x 2 layers x 2 KV heads x head_dim 8 x (6 + 8) tokens x batch 2 x 4 bytes.
    assert data["cells"][0]["kv_cache_bytes"] == 2 * 2 * 2 * 8 * 14 * 2 * 4


def test_random_weights_are_said_plainly(tmp_path):
    result = run_benchmark(tiny_config("tiny-gpt2", runs=1))
    assert result.cells[0].model["weights"] == "random"
    assert "shipped config" in result.cells[0].model["source"]


def test_interrupt_leaves_a_valid_partial_file(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(tiny_config(tiny_gpt2_dir, runs=3), output=path, observer=Recorder(interrupt_after=3))
    partial = read_result(path)
    assert partial.complete is False
    assert partial.cells[0].status == "incomplete"
    assert [run.mode for run in partial.runs] == ["cached", "uncached", "cached"]
    assert not list(tmp_path.glob(".*.tmp"))
    # The interrupted run's last save is its closing one: the summaries of what was measured are there.
    document = json.loads(path.read_text())
    assert [row["mode"] for row in document["summary"]] == ["cached", "uncached"] and "explained" in document


def test_a_save_mid_run_holds_the_runs_and_computes_nothing(tiny_gpt2_dir, tmp_path):
    """Saved after every generation, the file holds what was measured; summaries come at the closing save."""
    path = tmp_path / "r.json"
    seen = []

    class ReadsTheFile(Observer):
        def generation_finished(self, latency_s, generation=None):
            seen.append(json.loads(path.read_text()))

    run_benchmark(tiny_config(tiny_gpt2_dir, runs=2), output=path, observer=ReadsTheFile())
    assert [len(document["runs"]) for document in seen] == [1, 2, 3, 4]
    assert not any("summary" in document or "explained" in document for document in seen)
    assert [row["n"] for row in json.loads(path.read_text())["summary"]] == [2, 2]


def test_resume_measures_only_unfinished_cells(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "sweep.json"
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6, 8], runs=1)
    with pytest.raises(KeyboardInterrupt):
        # 2 generations per cell: stop inside the second cell.
        run_benchmark(config, output=path, observer=Recorder(interrupt_after=3))
    partial = read_result(path)
    assert [cell.status for cell in partial.cells] == ["measured", "incomplete", "pending"]
    first_cell_runs = [run.latency_s for run in partial.runs if run.cell == partial.cells[0].id]

    recorder = Recorder()
    resumed = run_benchmark(config, output=path, observer=recorder, resume=True)
    assert resumed.complete
    assert [cell.status for cell in resumed.cells] == ["measured"] * 3
    assert recorder.finished == 4  # the two unfinished cells only
    assert [run.latency_s for run in resumed.runs if run.cell == resumed.cells[0].id] == first_cell_runs
    assert len(resumed.runs) == 6


def test_resume_refuses_a_file_made_with_other_settings(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "r.json"
    run_benchmark(tiny_config(tiny_gpt2_dir, runs=1), output=path)
    with pytest.raises(KvbenchError, match="runs=1"):
        Benchmark(tiny_config(tiny_gpt2_dir, runs=2), output=path, resume=True)


def test_unsupported_cache_implementation_is_skipped_with_reason(tiny_llama_dir):
    config = tiny_config(tiny_llama_dir, cache_implementation=["dynamic", "static", "offloaded"], runs=1)
    result = run_benchmark(config)
    statuses = {cell.settings.cache_implementation: cell for cell in result.cells}
    assert statuses["dynamic"].status == "measured"
    assert statuses["static"].status == "measured"
    assert statuses["offloaded"].status == "skipped"
    assert "CUDA" in statuses["offloaded"].reason


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tiny_llama_dir):
    class OutOfMemoryAtBatch2(Observer):
        """Fails the batch-2 cell's first generation as an allocation would, from inside the measuring loop."""

        def generation_started(self, label, generation):
            if "batch=2" in generation.cell:
                raise MemoryError("simulated")

    result = run_benchmark(tiny_config(tiny_llama_dir, batch_size=[1, 2], runs=1), observer=OutOfMemoryAtBatch2())
    assert [cell.status for cell in result.cells] == ["measured", "oom"]
    assert "batch 2" in result.cells[1].reason
    assert all(run.batch_size == 1 for run in result.runs)


def test_context_overflow_is_caught_before_any_generation(tiny_gpt2_dir):
    recorder = Recorder()
    with pytest.raises(KvbenchError, match="exceeds its context of 64 tokens; use --max-new-tokens 59"):
        run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[8, 60]), observer=recorder)
    assert recorder.labels == []


def test_target_rse_stops_once_precise_enough(tiny_gpt2_dir):
    """Runs 1% apart: the 90% upper bound of each mode's RSE is under 5% at the third run, where it stops."""
    clock = ScriptedClock(jittered(steady(), [1.0, 1.01, 0.99]))
    config = tiny_config(tiny_gpt2_dir, target_rse=0.05, min_runs=3, max_runs=8)
    result = run_benchmark(config, observer=clock, clock=clock)
    cell = result.cells[0]
    assert [len(result.runs_of(cell.id, mode)) for mode in ("cached", "uncached")] == [3, 3]
    assert "within the target RSE 5.0%" in cell.stop_reason
    # The latencies are the scripted ones: 8 tokens at 10 ms (cached) and 30 ms (uncached), times the jitter.
    cached = [run.latency_s for run in result.runs_of(cell.id, "cached")]
    assert cached == pytest.approx([0.08, 0.0808, 0.0792])


def test_target_rse_runs_on_while_the_runs_are_too_spread(tiny_gpt2_dir):
    """Runs 30% apart never bring the bound under 5%: it measures every run allowed and says why it stopped."""
    clock = ScriptedClock(jittered(steady(), [1.0, 1.3, 0.7]))
    config = tiny_config(tiny_gpt2_dir, target_rse=0.05, min_runs=2, max_runs=4)
    result = run_benchmark(config, observer=clock, clock=clock)
    cell = result.cells[0]
    assert len(result.runs_of(cell.id, "uncached")) == 4
    assert "most runs (4)" in cell.stop_reason


def test_device_map_path_runs_and_records_placement(tiny_llama_dir):
    """On a machine without GPUs accelerate places everything on the CPU; the same code path spreads a
    model over GPUs where there are several (tests/test_gpu.py)."""
    result = run_benchmark(tiny_config(tiny_llama_dir, device_map="auto", runs=1))
    model = result.cells[0].model
    assert result.cells[0].status == "measured"
    assert model["device_map"] and model["devices"][0] in ("cpu", "cuda:0")
    assert all(run.new_tokens == 8 for run in result.runs)


def test_device_map_with_random_weights(tiny_llama_dir):
    result = run_benchmark(tiny_config(tiny_llama_dir, device_map="sequential", weights="random", runs=1))
    assert result.cells[0].model["weights"] == "random"
    assert result.cells[0].model["device_map"]


def test_library_call_returns_a_full_result_without_writing_a_file(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A notebook user: one call, scalars allowed, no file, summaries and data frames ready."""
    import kvbench

    monkeypatch.chdir(tmp_path)
    # Device peaks (seconds of copy and matmul loops) are the one default left out: test_explain measures them.
    config = kvbench.BenchConfig(model=str(tiny_gpt2_dir), max_new_tokens=8, runs=2, warmup=0, device="cpu", device_peaks=False)
    result = kvbench.run_benchmark(config)
    assert config.max_new_tokens == [8]
    assert result.complete
    assert [(s.mode, s.n) for s in result.summary] == [("cached", 2), ("uncached", 2)]
    assert result.speedup(result.cells[0].id) > 0
    runs, summary = result.runs_frame(), result.summary_frame()
    assert len(runs) == 4 and set(runs["mode"]) == {"cached", "uncached"}
    assert list(summary["n"]) == [2, 2]
    assert summary["mean_s"].tolist() == [s.mean_s for s in result.summary]
    assert list(tmp_path.iterdir()) == []


def test_config_output_is_where_the_library_writes(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "from-config.json"
    run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, output=str(path)))
    assert read_result(path).complete
    assert path.with_suffix(".csv").exists()


def test_a_long_uncached_run_on_a_cpu_comes_with_advice():
    from kvbench.model.settings import BenchConfig
    from kvbench.runner.planning import advice

    long = BenchConfig(model=["gpt2"], max_new_tokens=[64, 500])
    assert "--max-new-tokens 200" in advice(long, "cpu")[0]
    assert advice(long, "cuda") == []
    assert advice(BenchConfig(model=["gpt2"], max_new_tokens=[499]), "cpu") == []
    assert advice(BenchConfig(model=["gpt2"], max_new_tokens=[500], modes=["cached"]), "cpu") == []


def test_where_results_go(tmp_path):
    from kvbench.model.settings import BenchConfig
    from kvbench.runner.planning import results_path

    assert results_path(BenchConfig(model=["gpt2"], output="-"), resume=False) is None
    assert results_path(BenchConfig(model=["gpt2"], output="a.json"), resume=True).name == "a.json"
    assert results_path(BenchConfig(model=["gpt2"]), resume=False).parent.name == "results"
    for output in (None, "-"):
        with pytest.raises(KvbenchError, match="--resume needs --output"):
            results_path(BenchConfig(model=["gpt2"], output=output), resume=True)


def _earlier_run_here(model, folder):
    """A results file of `model` at length 4 on this CPU: 10 ms a token cached, 30 ms uncached."""
    from kvbench.hardware.environment import cpu_name
    from kvbench.storage.writer import write_result
    from tests.conftest import make_result

    folder.mkdir(exist_ok=True)
    earlier = make_result(
        {"cached": [0.04, 0.04], "uncached": [0.12, 0.12]}, model=str(model), max_new_tokens=4, device_name=cpu_name()
    )
    write_result(earlier, folder / "earlier.json")
    return earlier


def test_the_time_a_run_will_take_is_predicted_from_earlier_runs_on_this_machine(tiny_gpt2_dir, tmp_path):
    """Length 4 ran before on this CPU at 10 ms (cached) and 30 ms (uncached) a token: a new run of length 6,
    3 runs and a warmup per mode, plans 4 x (6 x 10 ms + 6 x 30 ms) of generations. A file from another
    machine is no source."""
    from kvbench.storage.writer import write_result

    folder = tmp_path / "results"
    earlier = _earlier_run_here(tiny_gpt2_dir, folder)
    new = tiny_config(tiny_gpt2_dir, max_new_tokens=[6], runs=3, warmup=1, output=str(folder / "new.json"))
    estimate = Benchmark(new).plan().estimate
    assert estimate.seconds == pytest.approx(4 * (6 * 0.01 + 6 * 0.03))
    assert estimate.sources == [str(folder / "earlier.json")]
    assert "about 0:00 of generations" in estimate.text()

    earlier.environment["device_name"] = "another CPU"
    write_result(earlier, folder / "earlier.json")
    assert Benchmark(new).plan().estimate is None


def test_the_estimate_leaves_out_cells_that_will_be_skipped(tiny_gpt2_dir, tmp_path):
    """An offloaded cache needs a GPU: on a CPU its cell is skipped, and its generations are not waited for."""

    folder = tmp_path / "results"
    _earlier_run_here(tiny_gpt2_dir, folder)
    new = tiny_config(
        tiny_gpt2_dir,
        max_new_tokens=[6],
        runs=3,
        warmup=1,
        cache_implementation=["dynamic", "offloaded"],
        output=str(folder / "new.json"),
    )
    planned = Benchmark(new).plan()
    assert [what for _, what in planned.cells][1].startswith("skip")
    assert planned.estimate.seconds == pytest.approx(4 * (6 * 0.01 + 6 * 0.03))


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_a_static_cache_agrees_with_the_dynamic_cache_at_every_position(model_fixture, request):
    # Lossless: the static cache holds the same keys and values in preallocated tensors.
    model_dir = request.getfixturevalue(model_fixture)
    config = tiny_config(model_dir, max_new_tokens=[12], runs=1, modes=["cached"], cache_implementation=["static"])
    cell = run_benchmark(config).cells[0]
    assert cell.status == "measured"
    assert cell.agreement_token_share == 1.0
    assert cell.agreement_first_divergence is None
    assert cell.agreement_top1_share == 1.0
    assert cell.agreement_kl_mean_nats == pytest.approx(0.0, abs=1e-9)


def test_a_dynamic_cache_cell_has_nothing_to_agree_with(tiny_gpt2_dir):
    cell = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, modes=["cached"])).cells[0]
    assert cell.status == "measured"
    assert cell.agreement_token_share is None and cell.agreement_kl_mean_nats is None


def test_output_agreement_from_tokens_and_logits_worked_by_hand():
    import math

    import torch

    from kvbench.measure.agreement import output_agreement

    reference_ids, ids = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 6, 9, 8]])
    # Position 0: p = (1/2, 1/2) against q = (3/4, 1/4); both pick token 0 (a tie goes to the first).
    # Position 1: p = softmax(2, 1) against q = softmax(1, 2): the top token differs, and
    # KL = (p0 - p1) * ln(p0 / p1) = tanh(1/2) * 1.
    reference_logits = torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
    logits = torch.tensor([[[math.log(3), 0.0], [1.0, 2.0]]])
    agreement = output_agreement(reference_ids, ids, reference_logits, logits)
    assert agreement.token_share == 0.75
    assert agreement.first_divergence == 2
    assert agreement.top1_share == 0.5
    assert agreement.kl_mean_nats == pytest.approx((0.5 * math.log(4 / 3) + math.tanh(0.5)) / 2)


def _quantized(model_dir, backend: str, nbits: int = 4):
    # A residual window of 2 positions: beyond it the cache is quantized, so 20 new tokens are mostly quantized.
    return tiny_config(
        model_dir,
        max_new_tokens=[20],
        runs=1,
        warmup=1,  # the backend loads its kernels in the first generation
        modes=["cached"],
        cache_implementation=["quantized"],
        quantized_backend=backend,
        quantized_nbits=nbits,
        quantized_group_size=16,
        quantized_residual_length=2,
    )


@pytest.mark.parametrize("nbits", [4, 2])
def test_a_quanto_cache_is_measured_with_its_settings_and_its_output_compared(nbits, tiny_gpt2_dir, tmp_path):
    pytest.importorskip("optimum.quanto", reason="the quanto backend needs pip install 'kvbench[quantized]'")
    result = run_benchmark(_quantized(tiny_gpt2_dir, "quanto", nbits), output=tmp_path / "r.json")
    cell = result.cells[0]
    assert cell.status == "measured", cell.reason
    assert cell.kv_cache_class == "QuantizedCache"
    stored = read_result(tmp_path / "r.json")
    assert (stored.config["quantized_backend"], stored.config["quantized_nbits"]) == ("quanto", [nbits])
    # Lossy: the next-token distributions move, however little; the greedy tokens may still all agree.
    assert cell.agreement_kl_mean_nats > 0
    # Its own theory (kvbench.model.caches.quantized.quantized_cache_bytes), a fraction of what a dynamic cache holds.
    assert cell.kv_cache_measured_bytes == pytest.approx(cell.kv_cache_theory_bytes, rel=0.05)
    assert cell.kv_cache_measured_bytes < cell.kv_cache_bytes / 2
    assert cell.kv_cache_note.startswith("theory for the quanto quantized cache:")
    assert f"positions at {nbits} bits per value" in cell.kv_cache_note
    assert 0 <= cell.agreement_token_share <= 1 and 0 <= cell.agreement_top1_share <= 1


def test_an_fp8_cache_needs_torch_alone_and_its_output_is_compared(tiny_llama_dir):
    cell = run_benchmark(_quantized(tiny_llama_dir, "fp8")).cells[0]
    assert cell.status == "measured", cell.reason
    assert cell.agreement_kl_mean_nats > 0


def test_a_quantized_backend_not_installed_is_skipped_with_how_to_install_it(tiny_gpt2_dir):
    if importlib.util.find_spec("hqq") is not None:
        pytest.skip("hqq is installed here")
    cell = run_benchmark(_quantized(tiny_gpt2_dir, "hqq")).cells[0]
    assert cell.status == "skipped"
    assert cell.reason == "cache_implementation=quantized with the hqq backend needs hqq (pip install hqq)"


def test_a_comparison_pass_that_runs_out_of_memory_keeps_the_cells_timed_runs(tiny_gpt2_dir, monkeypatch):
    from kvbench.measure.generation import Generation

    def out_of_memory(self, cache_implementation, fed_ids=None):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4294967296 bytes.")

    monkeypatch.setattr(Generation, "untimed_pass", out_of_memory)
    config = tiny_config(tiny_gpt2_dir, runs=2, modes=["cached"], cache_implementation=["static"])
    result = run_benchmark(config)
    cell = result.cells[0]
    assert cell.status == "measured" and len(result.runs) == 2
    assert cell.agreement_token_share is None
    assert cell.agreement_note == (
        "not measured: the untimed comparison with the dynamic cache failed (RuntimeError: DefaultCPUAllocator:"
        " can't allocate memory: you tried to allocate 4294967296 bytes.)"
    )


def test_run_benchmark_takes_progress_or_an_observer_not_both(tiny_gpt2_dir):
    with pytest.raises(KvbenchError, match="an observer or progress=True, not both"):
        run_benchmark(tiny_config(tiny_gpt2_dir), observer=Observer(), progress=True)
