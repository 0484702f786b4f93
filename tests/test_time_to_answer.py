"""A sweep costs its generations, not its processes: a measuring process serves one model's consecutive cells
(a fresh one after a failure), every cell records where its time went, device peaks are measured once per
machine, and comparing outputs takes no untimed generation a warmup could give. Structure only: no test here
decides anything from how long something took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.core.eta import Planned, TimeLeft
from kvbench.model.phases import PHASES
from kvbench.model.settings import BenchConfig
from kvbench.runner.benchmark import Benchmark, run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config
from tests.faults import inject

runner = CliRunner()


def pids(cell) -> list[int]:
    return cell.ran_on["pids"]


def test_one_process_serves_a_models_consecutive_cells_and_each_cell_says_where_its_time_went(tiny_gpt2_dir, tmp_path):
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6, 8], isolation="model", warmup=1)
    result = run_benchmark(config, output=tmp_path / "r.json")
    assert [cell.status for cell in result.cells] == ["measured"] * 3
    assert len({pid for cell in result.cells for pid in pids(cell)}) == 1
    assert {run.pid for run in result.runs} == set(pids(result.cells[0]))
    for cell in result.cells:
        assert {"model_load", "warmup", "timed_runs", "output_comparison", "save"} <= set(cell.phases_s)
        assert set(cell.phases_s) <= set(PHASES) and all(seconds >= 0 for seconds in cell.phases_s.values())
    # The later cells found the process started and the model loaded: they paid neither.
    for cell in result.cells[1:]:
        assert "process_start" not in cell.phases_s and "imports" not in cell.phases_s
        assert "device_setup" not in cell.phases_s
    # What the file holds reads back the same.
    assert [cell.phases_s for cell in read_result(tmp_path / "r.json").cells] == [cell.phases_s for cell in result.cells]


def test_each_model_gets_its_own_process_and_each_cell_one_with_isolation_cell(tiny_gpt2_dir, tiny_llama_dir):
    by_model = run_benchmark(
        BenchConfig(**{**tiny_config(tiny_gpt2_dir).__dict__, "model": [str(tiny_gpt2_dir), str(tiny_llama_dir)],
                       "max_new_tokens": [4, 6], "isolation": "model"})
    )  # fmt: skip
    processes = [tuple(pids(cell)) for cell in by_model.cells]
    assert processes[0] == processes[1] and processes[2] == processes[3] and processes[0] != processes[2]
    per_cell = run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], isolation="cell"))
    assert len({tuple(pids(cell)) for cell in per_cell.cells}) == 2
    # The name the per-cell isolation had before processes served several cells.
    assert BenchConfig(isolation="process").isolation == "cell"


def test_a_cell_that_fails_is_followed_by_a_fresh_process(tiny_gpt2_dir, tmp_path, monkeypatch):
    inject(monkeypatch, tmp_path, "error@new=6 ")
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6, 8], isolation="model")
    result = Benchmark(config, output=tmp_path / "r.json").run()
    first, failed, after = result.cells
    assert [first.status, failed.status, after.status] == ["measured", "error", "measured"]
    assert "CUDA error" in failed.reason
    assert set(pids(after)).isdisjoint(pids(first))


def test_a_cells_peak_memory_does_not_depend_on_the_larger_cell_before_it():
    """Memory is freed between cells: the small cell's peak resident memory, measured after a batch 64 times
    larger in the same process, is that of the small cell measured alone. Without the heap given back
    between cells it read 423 MiB against 394 (+7%) on the development machine."""

    def small_cells_peak(batches: list[int]) -> int:
        config = tiny_config("tiny-llama", batch_size=batches, prompt_tokens=[480], modes=["cached"], isolation="model")
        result = run_benchmark(config)
        small = next(cell for cell in result.cells if cell.settings.batch_size == 1)
        return result.summary_of(small.id, "cached").peak_rss_bytes

    alone, after_a_larger_one = small_cells_peak([1]), small_cells_peak([64, 1])
    assert after_a_larger_one <= alone * 1.03


def test_device_peaks_are_measured_once_and_read_back_with_where_they_came_from(tiny_gpt2_dir, own_cache, monkeypatch):
    import kvbench.hardware.peaks as peaks

    real, timed = peaks.measure_device_peaks, []
    monkeypatch.setattr(
        peaks, "measure_device_peaks", lambda device, **options: timed.append(device) or real(device, seconds=0.05, **options)
    )
    config = tiny_config(tiny_gpt2_dir, device_peaks=True)
    first = run_benchmark(config).environment["device_peaks"]
    second = run_benchmark(config).environment["device_peaks"]
    assert timed == ["cpu"] and first["cached_in"] is None and first["measured_at"]
    assert second["cached_in"] == str(own_cache / peaks.CACHE_FILE)
    assert second["copy_bandwidth_bytes_per_s"] == first["copy_bandwidth_bytes_per_s"]
    # Forced, they are measured again, and the new ones are kept.
    third = run_benchmark(tiny_config(tiny_gpt2_dir, device_peaks=True, remeasure_peaks=True)).environment["device_peaks"]
    assert timed == ["cpu", "cpu"] and third["cached_in"] is None
    # A damaged cache is no cache: measured again, and written whole.
    (own_cache / peaks.CACHE_FILE).write_text('{"x": {"device": "cpu", "copy_bandwidth_bytes_per_s": -1}')
    run_benchmark(config)
    assert timed == ["cpu"] * 3 and json.loads((own_cache / peaks.CACHE_FILE).read_text())


def test_comparing_outputs_gives_the_same_agreement_from_warmups_as_from_untimed_passes(tmp_path):
    """The reference kept from the dynamic cell's warmup and the static cell's warmup fed its tokens give the
    figures the untimed passes give (warmup 0, a fresh process per cell), to the last bit."""

    def agreement(warmup: int, isolation: str) -> list[tuple]:
        config = tiny_config(
            "tiny-milton", max_new_tokens=[12], cache_implementation=["dynamic", "static"], modes=["cached"],
            runs=1, warmup=warmup, isolation=isolation, prompt="Of Mans First Disobedience",
        )  # fmt: skip
        cells = run_benchmark(config).cells
        return [(c.status, c.agreement_token_share, c.agreement_top1_share, c.agreement_kl_mean_nats) for c in cells]

    from_warmups, from_passes = agreement(1, "model"), agreement(0, "cell")
    assert from_warmups == from_passes and from_warmups[1][1] == 1.0


def test_show_says_where_the_time_went_and_the_dry_run_counts_start_ups(tiny_gpt2_dir, tmp_path):
    earlier = tmp_path / "earlier.json"
    run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], isolation="model"), output=earlier)
    shown = runner.invoke(app, ["show", str(earlier)])
    (line,) = [line for line in shown.output.splitlines() if line.startswith("time: ")]
    assert "measuring:" in line and "timed runs" in line and "%" in line
    plan = Benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], isolation="model"), output=tmp_path / "new.json").plan()
    assert plan.estimate is not None and plan.estimate.beyond_generations_s is not None
    assert "starting, loading and saving" in plan.estimate.text()


def test_the_time_left_counts_a_start_up_only_for_the_cells_that_start_a_process():
    """Cell a started the process (10 s beyond its generations); b, c and d run in it. After a, the time left
    is their generations and no start-up; counted as every cell's, it would add 30 s."""
    now = [0.0]
    cells = ["a", "b", "c", "d"]
    plan = {Planned("cached", 8, 8, "m", cell): 1 for cell in cells}
    shared, fresh = TimeLeft(plan, clock=lambda: now[0], starting={"a"}), TimeLeft(plan, clock=lambda: now[0])
    for left in (shared, fresh):
        now[0] = 0.0
        left.cell_started("a")
        now[0] = 11.0
        left.finished(Planned("cached", 8, 8, "m", "a"), 1.0)
        left.cell_finished("a")
    assert shared.seconds_left() == pytest.approx(3 * 1.0)
    assert fresh.seconds_left() == pytest.approx(3 * 1.0 + 3 * 10.0)


def test_a_dry_run_starts_no_measuring_process(tiny_gpt2_dir, tmp_path, monkeypatch):
    from kvbench.launch import workers

    monkeypatch.setattr(workers, "WorkerProcess", lambda *args: pytest.fail("a dry run started a process"))
    result = runner.invoke(
        app, ["run", "-m", str(tiny_gpt2_dir), "-n", "4", "--device", "cpu", "--dry-run", "-o", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    assert not Path(tmp_path / "r.json").exists()
