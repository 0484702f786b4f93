"""`kvbench capacity`: the search for the longest context and the largest batch that fit, decided by scripted
peaks and faked out-of-memory errors (never by this machine's real memory), one structural run of real probes,
and the one-line refusals of what cannot be searched."""

import io
import json

import pytest

from kvbench.launch.probes import Measured
from kvbench.model.capacity import CapacityReport, Probe, Search
from kvbench.runner.capacity import CapacityRequest, CapacityRun, MemoryLimit
from kvbench.runner.capacity_search import search
from tests.faults import fake_cuda_out_of_memory
from tests.test_cli import assert_user_error, invoke

MiB = 2**20
BUDGET = 1024 * MiB
# A scripted process: 400 MiB before it generates, 64 KiB more per prompt token x sequence. Within 1 GiB it
# holds (1024 - 400) MiB / 64 KiB = 9,984 tokens.
BASE, PER_TOKEN = 400 * MiB, 64 * 2**10


class ScriptedProber:
    """A measuring process whose peak is a chosen function of the probe's prompt tokens x batch."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.values: list[int] = []
        self.started = 1
        self.interrupt_at = interrupt_at

    def __call__(self, job) -> Measured:
        value = job.cell.prompt_tokens * job.cell.batch_size
        self.values.append(value)
        if self.interrupt_at is not None and len(self.values) == self.interrupt_at:
            raise KeyboardInterrupt
        return Measured(BASE + PER_TOKEN * value, "RSS", pid=4242, seconds=0.5)

    def kill(self) -> None:
        pass


def test_the_search_doubles_then_bisects_to_the_resolution():
    run = Search("dynamic", "context", 1, None, start=256, most=32_000, most_reason="the model's limit")

    def probe(value: int) -> Probe:
        return Probe(value, fits=value <= 5000)

    search(run, probe, resolution=1 / 64)
    values = [probe.value for probe in run.probes]
    assert values[:6] == [256, 512, 1024, 2048, 4096, 8192]  # doubling to the first that does not fit
    assert run.largest is not None and run.first_failure is not None
    assert run.largest <= 5000 < run.first_failure
    assert run.first_failure - run.largest <= max(1, run.largest // 64)
    # To the exact value with no resolution; a search that fits at its most stops there.
    exact = search(Search("dynamic", "batch", None, 64, 1, 4096, "--most-batch"), lambda v: Probe(v, v <= 37), 0)
    assert (exact.largest, exact.first_failure) == (37, 38)
    whole = search(Search("dynamic", "batch", None, 64, 1, 100, "--most-batch 100"), lambda v: Probe(v, True))
    assert (whole.largest, whole.first_failure) == (100, None) and [p.value for p in whole.probes][-1] == 100
    assert "fits at the most allowed" in whole.stopped


def test_lower_bounds_are_shown_as_such():
    from rich.console import Console

    from kvbench.render.capacity import capacity_table

    capped = search(Search("dynamic", "batch", None, 64, 1, 4, "--most-batch 4"), lambda v: Probe(v, True, 2**20))
    capped.estimate = 1000
    bounded = search(Search("static", "batch", None, 64, 1, 4096, "--most-batch"), lambda v: Probe(v, v <= 100, 2**20))
    bounded.estimate = 1000
    assert capped.ratio is None and bounded.ratio == pytest.approx(0.1)
    report = CapacityReport("m", "cpu", "float32", 8, 2**30, "--memory-budget 1.0 GiB", 2**30, False, 1, 1, None)
    # An extrapolated context at the model's limit is a lower bound, and the ratio to it an upper one.
    at_limit = search(Search("dynamic", "context", 1, None, 256, 32_760, "limit"), lambda v: Probe(v, v <= 13_568, 2**20))
    at_limit.estimate, at_limit.estimate_at_limit = 32_760, True
    report.searches = [capped, bounded, at_limit]
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(capacity_table(report))
    table = console.export_text()
    assert "≥ 4 (1.0 MiB)" in table and "100 (1.0 MiB)" in table and "0.10×" in table
    assert "≥ 32,760" in table and "≤ 0.41×" in table


def test_a_failure_other_than_memory_ends_the_search():
    run = Search("static", "context", 1, None, 256, 32_000, "the model's limit")
    search(run, lambda value: Probe(value, value < 1000, failure=None if value < 1000 else "not supported here"))
    assert run.largest == 512 and run.first_failure is None
    assert "not supported here" in run.stopped


def test_capacity_reports_the_context_within_the_budget_and_the_next_step_beyond(tmp_path, monkeypatch):
    prober = ScriptedProber()
    monkeypatch.setattr("kvbench.runner.capacity.ProcessProber", lambda: prober)
    output = tmp_path / "capacity.json"
    result = invoke("capacity", "-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "1GiB", "--find", "context", "-o", output)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    (found,) = report["searches"]
    peaks = {probe["value"]: probe["peak_bytes"] for probe in found["probes"]}
    # Prompt tokens only: the new tokens' positions are the same at every probe.
    assert found["largest"] == 9984 and peaks[9984] <= BUDGET
    assert found["first_failure"] == 10112 and peaks[10112] > BUDGET
    assert all(probe["fits"] == (probe["peak_bytes"] <= BUDGET) for probe in found["probes"])
    assert report["complete"] and report["budget_bytes"] == BUDGET
    assert "9,984 (1,024.0 MiB RSS)" in result.stdout and "10,112 (1,032.0 MiB RSS)" in result.stdout
    assert "context 9,984 tokens: peak 1,024.0 MiB RSS <= 1,024.0 MiB: fits" in result.stderr
    assert "context 10,112 tokens: peak 1,032.0 MiB RSS > 1,024.0 MiB: does not fit" in result.stderr


def test_an_interrupted_search_leaves_what_it_measured_written(tmp_path, monkeypatch):
    output = tmp_path / "capacity.json"
    request = CapacityRequest("tiny-gqa-32k", device="cpu", memory_budget=BUDGET, find=["context"], output=output)
    run = CapacityRun(request, measure=ScriptedProber(interrupt_at=4))
    with pytest.raises(KeyboardInterrupt):
        run.run()
    report = json.loads(output.read_text())
    assert not report["complete"]
    assert [probe["value"] for probe in report["searches"][0]["probes"]] == [256, 512, 1024]


def test_on_a_cpu_the_extrapolation_leaves_out_what_the_process_held_before_the_model():
    prober = ScriptedProber()
    prober.baseline_bytes = 300 * MiB
    request = CapacityRequest("tiny-gqa-32k", device="cpu", memory_budget=BUDGET)
    assert CapacityRun(request, measure=prober)._extrapolation_memory() == BUDGET - 300 * MiB
    # On a GPU the process's host memory is not the device's: the extrapolation is for all of it.
    on_gpu = CapacityRun(request, measure=prober, limit=MemoryLimit(None, device_bytes=80 * 2**30))
    assert on_gpu._extrapolation_memory() == 80 * 2**30
    # Without a reading, the budget.
    assert CapacityRun(request, measure=ScriptedProber())._extrapolation_memory() == BUDGET


def test_real_probes_fit_exactly_when_their_measured_peak_is_within_the_budget(tmp_path):
    """Structure only: each probe a real generation in one measuring process, its peak RSS read back."""
    request = CapacityRequest(
        "tiny-gqa-32k", device="cpu", memory_budget=64 * 2**30, most_context=1024, most_batch=4, context=64
    )
    report = CapacityRun(request).run()
    context, batch = report.searches
    assert [probe.value for probe in context.probes] == [256, 512, 1024] and context.largest == 1024
    assert [probe.value for probe in batch.probes] == [1, 2, 4] and batch.largest == 4
    probes = context.probes + batch.probes
    assert all(probe.peak_bytes is not None and probe.peak_source == "RSS" for probe in probes)
    assert all(probe.fits == (probe.peak_bytes <= request.memory_budget) for probe in probes)
    assert report.processes_started == 1 and len({probe.pid for probe in probes}) == 1
    # The cache grows with the prompt, and the extrapolation for the same budget is solved from the last fit.
    sizes = [probe.kv_cache_bytes for probe in context.probes]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert batch.estimate is not None and batch.estimate > 4
    # 64 GiB holds far more than tiny-gqa-32k's 32,768 positions: the extrapolation stops at the limit.
    assert context.estimate == 32_760 and context.estimate_at_limit
    # Solved for the budget less what the process held before it loaded the model, which no peak is below.
    baseline = report.process_baseline_bytes
    assert baseline is not None and 0 < baseline < min(probe.peak_bytes for probe in probes)
    assert report.extrapolated_for_bytes == request.memory_budget - baseline


def test_on_a_faked_gpu_the_bisection_finds_the_boundary_in_a_fresh_process_after_each_out_of_memory(
    tiny_llama_dir, monkeypatch
):
    # Every generation of more than 80 prompt tokens x batch runs out of (faked) CUDA memory: at a 16-token
    # prompt, a batch of 5 fits and 6 does not.
    fake_cuda_out_of_memory(monkeypatch, above=80)
    request = CapacityRequest(str(tiny_llama_dir), device="cpu", find=["batch"], context=16, resolution=0)
    run = CapacityRun(request, limit=MemoryLimit(None, device_bytes=80 * 2**30))
    report = run.run()
    (found,) = report.searches
    assert [(probe.value, probe.out_of_memory) for probe in found.probes] == [
        (1, False), (2, False), (4, False), (8, True), (6, True), (5, False)
    ]  # fmt: skip
    assert (found.largest, found.first_failure) == (5, 6)
    # A fresh process after each out-of-memory: the one that ran out is never asked again.
    pids = [probe.pid for probe in found.probes]
    assert pids[0] == pids[1] == pids[2] == pids[3]
    assert len({pids[3], pids[4], pids[5]}) == 3
    assert report.processes_started == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-m", "tiny-gqa-32k", "-d", "cpu"], ["needs --memory-budget SIZE"]),
        (["-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "2 bananas"], ["--memory-budget cannot be '2 bananas'"]),
        (
            ["-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "1GiB", "--context", 40_000],
            ["--context 40,000", "limit of 32,768 positions", "use --context 32,760 or less"],
        ),
        (
            ["-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "500KB"],
            ["--memory-budget (488.3 KiB) is not more than tiny-gqa-32k's weights alone", "201,024 parameters"],
        ),
        # Counted on the meta device: an 8-billion-parameter model is refused before any weight is built.
        (
            ["-m", "llama-3.1-8b", "-d", "cpu", "--dtype", "bfloat16", "--memory-budget", "8GiB"],
            ["8,030,261,248 parameters x 2 bytes in bfloat16 = 15.0 GiB"],
        ),
        (["-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "1GiB", "--find", "width"], ["--find cannot be 'width'"]),
    ],
)
def test_what_cannot_be_searched_is_one_line(args, fragments, tmp_path):
    assert_user_error(invoke("capacity", *args, "-o", tmp_path / "capacity.json"), *fragments)
    assert not (tmp_path / "capacity.json").exists()


def test_a_model_that_does_not_generate_is_one_line(bert_dir, tmp_path):
    result = invoke("capacity", "-m", bert_dir, "-d", "cpu", "--memory-budget", "1GiB", "-o", tmp_path / "c.json")
    assert_user_error(result)


def test_an_existing_report_is_kept_without_force(tmp_path):
    existing = tmp_path / "capacity.json"
    existing.write_text("{}")
    result = invoke("capacity", "-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "1GiB", "-o", existing)
    assert_user_error(result, "exists", "--force")
    assert existing.read_text() == "{}"


def test_show_names_a_capacity_report_for_what_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr("kvbench.runner.capacity.ProcessProber", ScriptedProber)
    output = tmp_path / "capacity.json"
    args = ["-m", "tiny-gqa-32k", "-d", "cpu", "--memory-budget", "1GiB", "--find", "batch", "--most-batch", 2]
    assert invoke("capacity", *args, "-o", output).exit_code == 0
    assert_user_error(invoke("show", output), "is a kvbench capacity report, not a results file")


@pytest.mark.gpu
def test_on_a_gpu_probes_fit_by_not_running_out_of_its_memory_and_record_its_peak():
    """Structure only (pytest -m gpu): the device's memory is the limit, each probe's peak a GPU figure."""
    request = CapacityRequest("tiny-gqa-32k", device="cuda", most_context=1024, most_batch=4, context=64)
    report = CapacityRun(request).run()
    assert report.out_of_memory_decides and report.budget_bytes is None and report.memory_bytes > 2**30
    probes = [probe for search in report.searches for probe in search.probes]
    assert [search.largest for search in report.searches] == [1024, 4] and all(probe.fits for probe in probes)
    assert all(probe.peak_source != "RSS" and probe.peak_bytes for probe in probes)
    assert report.process_baseline_bytes is None and report.extrapolated_for_bytes == report.memory_bytes
