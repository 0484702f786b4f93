"""A sweep through a local Ray instance with CPUs only: the same file, an interruption, a resume."""

import os

import pytest

from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config
from tests.test_runner import Recorder

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'kvbench[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    # One instance for the module: starting Ray takes seconds. Ray starts its workers at nice 15, which
    # beside a busy neighbour starves the measuring processes for many minutes: here they run at 0.
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if niceness is None:
        os.environ.pop("RAY_worker_niceness")
    else:
        os.environ["RAY_worker_niceness"] = niceness


def ray_sweep(model_dir):
    return tiny_config(model_dir, max_new_tokens=[4, 6], runs=2, launcher="ray")


def test_a_sweep_through_ray_gives_the_sequential_file(local_ray, tiny_gpt2_dir, tmp_path):
    here = run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=2))
    result = run_benchmark(ray_sweep(tiny_gpt2_dir), output=tmp_path / "ray.json")
    stored = read_result(tmp_path / "ray.json")
    assert stored.complete

    def cells(result):
        return [(c.id, c.status, c.outputs_match) for c in result.cells]

    assert cells(stored) == cells(here)
    assert [(r.cell, r.mode, r.run) for r in stored.runs] == [(r.cell, r.mode, r.run) for r in here.runs]
    for cell in result.cells:
        assert cell.ran_on["launcher"] == "ray" and cell.ran_on["ray_node_id"]
        assert os.getpid() not in cell.ran_on["pids"] and cell.ran_on["host"]


def test_an_interrupted_ray_sweep_resumes(local_ray, tiny_gpt2_dir, tmp_path):
    path = tmp_path / "ray.json"
    config = ray_sweep(tiny_gpt2_dir)
    with pytest.raises(KeyboardInterrupt):
        # 4 generations per cell, and a CPU cell takes the node's 2 CPUs: stop inside the second cell.
        run_benchmark(config, output=path, observer=Recorder(interrupt_after=5))
    partial = read_result(path)
    assert partial.complete is False
    assert [cell.status for cell in partial.cells] == ["measured", "incomplete"]
    first_cell = [run.latency_s for run in partial.runs if run.cell == partial.cells[0].id]
    resumed = run_benchmark(config, output=path, resume=True)
    assert [cell.status for cell in resumed.cells] == ["measured"] * 2
    assert [run.latency_s for run in resumed.runs if run.cell == resumed.cells[0].id] == first_cell
    assert len(resumed.runs) == 8
