"""Cells measured in fresh processes: the same file as in this process, failures kept to their cell."""

import os

import pytest

from kvbench.core.errors import KvbenchError
from kvbench.launch.in_process import InProcess
from kvbench.launch.processes import LocalProcesses
from kvbench.launch.ray_tasks import RayLauncher
from kvbench.launch.registry import launcher_for
from kvbench.model.experiment import build_config
from kvbench.model.settings import BenchConfig
from kvbench.runner.benchmark import Benchmark, run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config
from tests.faults import inject
from tests.test_runner import Recorder


def shape(result):
    """What a results file holds, without what differs between two runs (times, memory, processes)."""
    cells = [(c.id, c.status, c.prompt_tokens, c.outputs_match, c.kv_cache_bytes) for c in result.cells]
    runs = [(run.cell, run.mode, run.run, run.new_tokens, len(run.token_times_s)) for run in result.runs]
    return cells, runs


def sweep(model_dir, **overrides):
    return tiny_config(model_dir, max_new_tokens=[4, 6], runs=2, **overrides)


def test_isolated_cells_give_the_file_a_sequential_run_gives(tiny_gpt2_dir, tmp_path):
    here = run_benchmark(sweep(tiny_gpt2_dir), output=tmp_path / "here.json")
    isolated = run_benchmark(sweep(tiny_gpt2_dir, isolation="process"), output=tmp_path / "isolated.json")
    assert shape(read_result(tmp_path / "isolated.json")) == shape(here)
    assert isolated.complete
    for cell in isolated.cells:
        assert cell.ran_on["launcher"] == "process"
        assert os.getpid() not in cell.ran_on["pids"] and cell.ran_on["devices"] == ["cpu"]
    assert {run.pid for run in isolated.runs}.isdisjoint({os.getpid()})
    # One fresh process per cell.
    assert len({run.pid for run in isolated.runs}) == 2
    assert [cell.ran_on["pids"] == [os.getpid()] for cell in here.cells] == [True, True]


def test_processes_spread_a_cells_runs_over_fresh_processes(tiny_gpt2_dir):
    result = run_benchmark(tiny_config(tiny_gpt2_dir, runs=3, processes=3, isolation="none"))
    cell = result.cells[0]
    assert cell.status == "measured" and cell.outputs_match is True
    for mode in ("cached", "uncached"):
        runs = result.runs_of(cell.id, mode)
        assert [run.run for run in runs] == [0, 1, 2]
        assert len({run.pid for run in runs}) == 3
    assert cell.ran_on["pids"] == list(dict.fromkeys(run.pid for run in result.runs))
    assert [s.n for s in result.summary] == [3, 3]


def test_cells_on_two_slots_at_once_keep_the_sequential_order(tiny_gpt2_dir, tmp_path):
    """Two slots stand in for two GPUs: cells measured at once, the file as if one after another."""
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=2, isolation="process")
    benchmark = Benchmark(config, output=tmp_path / "two.json")
    benchmark.launcher = LocalProcesses(config, "cpu", slots=["cpu", "cpu"])
    recorder = Recorder()
    benchmark.observer = recorder
    result = benchmark.run()
    assert [cell.status for cell in result.cells] == ["measured"] * 2
    expected = [(cell.id, mode, run) for cell in result.cells for run in range(2) for mode in ("cached", "uncached")]
    assert [(run.cell, run.mode, run.run) for run in result.runs] == expected
    assert all(label.startswith("cpu ") for label in recorder.labels)
    assert recorder.finished == 2 * 2 * 2


def test_a_cell_whose_process_fails_is_recorded_and_the_sweep_goes_on(tiny_gpt2_dir, tmp_path, monkeypatch):
    """One fault per cell, the cells two at a time: each failure stays in its cell."""
    inject(monkeypatch, tmp_path, "kill@new=4 ,abort@new=5 ,error@new=6 ,oom@new=7 ")
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 5, 6, 7, 8], runs=2, isolation="process")
    benchmark = Benchmark(config, output=tmp_path / "faults.json")
    benchmark.launcher = LocalProcesses(config, "cpu", slots=["cpu", "cpu"])
    result = benchmark.run()
    expected = [
        ("error", "died from SIGKILL"),
        ("error", "died from SIGABRT"),
        ("error", "CUDA error"),
        ("oom", "out of memory"),
        ("measured", None),
    ]
    for cell, (status, words) in zip(result.cells, expected):
        assert cell.status == status, cell.reason
        assert words is None or words in cell.reason
    assert {run.cell for run in result.runs} == {result.cells[-1].id}
    assert read_result(tmp_path / "faults.json").complete


def test_what_a_measuring_process_prints_goes_through_the_display_and_names_its_death(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A process that prints to stdout and stderr and exits: its lines reach the display's output hook
    (not the terminal under it, not the JSON on stdout), and the cell's reason quotes the last."""
    inject(monkeypatch, tmp_path, "exit@new=4 ")
    # No sampling process: it would inherit the worker's stdout and hold the pipe open after the worker dies.
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=2, isolation="process", memory_sampling=False)
    lines = []

    class Display(Recorder):
        def output(self, line):
            lines.append(line)

    result = run_benchmark(config, output=tmp_path / "exit.json", observer=Display())
    failed, measured = result.cells
    assert failed.status == "error" and measured.status == "measured"
    assert "exit code 3" in failed.reason
    assert failed.reason.endswith("the last line it printed: simulated native failure: unrecoverable state")
    assert lines == ["simulated output on stdout", "simulated native failure: unrecoverable state"]


def test_a_hung_cell_is_stopped_at_its_timeout(tiny_gpt2_dir, tmp_path, monkeypatch):
    inject(monkeypatch, tmp_path, "hang")
    # Whether it was stopped at 6 s is the launcher's clock to judge; the test checks what it recorded.
    result = run_benchmark(tiny_config(tiny_gpt2_dir, isolation="process", cell_timeout=6))
    assert result.cells[0].status == "timeout"
    assert "--cell-timeout 6 s" in result.cells[0].reason
    assert result.runs == []


def test_interrupted_isolated_sweep_resumes(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "sweep.json"
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=2, isolation="process")
    with pytest.raises(KeyboardInterrupt):
        # 4 generations per cell: stop inside the second cell, after its first.
        run_benchmark(config, output=path, observer=Recorder(interrupt_after=5))
    partial = read_result(path)
    assert partial.complete is False
    assert [cell.status for cell in partial.cells] == ["measured", "incomplete"]
    assert [run.cell for run in partial.runs] == [partial.cells[0].id] * 4 + [partial.cells[1].id]
    first_cell = [run.latency_s for run in partial.runs[:4]]
    resumed = run_benchmark(config, output=path, resume=True)
    assert [cell.status for cell in resumed.cells] == ["measured"] * 2
    assert len(resumed.runs) == 8 and [run.latency_s for run in resumed.runs[:4]] == first_cell


def test_launcher_follows_the_settings():
    assert launcher_for(BenchConfig(isolation="none")) is InProcess
    assert launcher_for(BenchConfig(isolation="process")) is LocalProcesses
    assert launcher_for(BenchConfig(isolation="none", processes=3)) is LocalProcesses
    assert launcher_for(BenchConfig(launcher="ray")) is RayLauncher


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"processes": 4, "runs": 3}, "every process needs a run"),
        ({"processes": 2, "target_rse": 0.02}, "cannot be combined"),
        ({"cell_timeout": 10, "isolation": "none"}, "add --isolation model"),
        ({"cell_timeout": 0}, "must be positive"),
        ({"ray_address": "auto"}, "only with --launcher ray"),
        ({"isolation": "thread"}, "choose one of model, cell, none"),
    ],
)
def test_launch_settings_that_cannot_work_are_refused(settings, fragment):
    with pytest.raises(KvbenchError, match=fragment):
        build_config(None, settings)
