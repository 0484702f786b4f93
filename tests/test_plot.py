from kvbench.render.plot import plot_result, sweep_axis
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import make_result, tiny_config


def test_plots_of_a_real_sweep(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "sweep.json"
    run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 8, 16], runs=2), output=path)
    result = read_result(path)
    assert sweep_axis(result) == "max_new_tokens"
    written = plot_result(result, tmp_path / "plots")
    assert [p.name for p in written] == [
        "per-token.png",
        "latency-vs-max_new_tokens.png",
        "cache-size-vs-max_new_tokens.png",
        "memory-over-time.png",
    ]
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000


def test_a_single_cell_gets_only_the_per_token_figure(tmp_path):
    result = make_result()
    for run in result.runs:
        run.token_times_s = [0.01 * (i + 1) for i in range(5)]
    assert sweep_axis(result) is None
    assert [p.name for p in plot_result(result, tmp_path)] == ["per-token.png"]


def test_a_title_names_the_models_with_random_weights_when_others_are_trained():
    from dataclasses import replace

    from kvbench.render.plot import _title

    result = make_result()
    (cell,) = result.cells
    trained = replace(cell, settings=replace(cell.settings, model="tiny-milton"), model={"weights": "pretrained"})
    cell.model = {"weights": "random"}
    result.cells.append(trained)
    assert _title(result, "x").endswith("· RANDOM weights (gpt2)")
    cell.model = {"weights": "pretrained"}
    assert "RANDOM" not in _title(result, "x")
    result.cells.remove(trained)
    cell.model = {"weights": "random"}
    assert _title(result, "x").endswith("· RANDOM weights")
