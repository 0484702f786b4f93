"""Hostile cases about files: nothing kvbench writes is one it cannot read back, nothing the user made is
replaced or written through, a run that fails before measuring leaves nothing behind, and every failure to
write is one line."""

from __future__ import annotations

import errno
import fcntl
import math
import os
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from kvbench.core.errors import KvbenchError
from kvbench.launch.processes import LocalProcesses
from kvbench.model.settings import LARGEST_INTEGER, BenchConfig
from kvbench.model.validation import validate
from kvbench.runner.benchmark import Benchmark
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result
from tests.conftest import make_result, tiny_config
from tests.test_hostile import QUICK, Untouched, _mismatched, assert_one_line, copy_results, invoke

# QUICK without device peaks: seconds each run does not need here.
FAST = [*QUICK, "--no-device-peaks"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A real, complete results file of a one-cell tiny-gpt2 run (with its CSV)."""
    path = tmp_path_factory.mktemp("measured") / "run.json"
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def results_file(tmp_path) -> Path:
    path = tmp_path / "run.json"
    write_result(make_result(), path)
    return path


# --- plot: existing figures, links, full disks ---------------------------------------------------------


def test_plot_refuses_to_replace_figures_without_force(results_file):
    first = invoke("plot", results_file)
    assert first.exit_code == 0, first.output
    untouched = Untouched(results_file.parent)
    assert_one_line(invoke("plot", results_file), 2, "per-token.png already exists", "--force")
    untouched.check()
    assert invoke("plot", results_file, "--force").exit_code == 0


def test_plot_force_replaces_a_link_and_never_writes_through_it(results_file, tmp_path):
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"the user's own picture")
    figures = tmp_path / "run-plots"
    figures.mkdir()
    (figures / "per-token.png").symlink_to(outside)
    assert_one_line(invoke("plot", results_file), 2, "already exists")
    assert invoke("plot", results_file, "--force").exit_code == 0
    assert outside.read_bytes() == b"the user's own picture"
    assert not (figures / "per-token.png").is_symlink()
    assert (figures / "per-token.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_plot_that_cannot_write_is_one_line_and_leaves_no_temporary(results_file, tmp_path, monkeypatch, code):
    def cannot(self, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Figure, "savefig", cannot)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("plot", results_file), 2, os.strerror(code), "--out-dir")
    untouched.check()


# --- settings a results file could not hold -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--cell-timeout", "inf"], "'cell_timeout' must be a finite number"),
        (["--sample-interval-ms", "inf"], "'sample_interval_ms' must be a finite number"),
        (["--target-rse", "nan"], "'target_rse'"),
        (["--runs", str(2**64)], "'runs' must be at most"),
        (["--warmup", str(2**64)], "'warmup' must be at most"),
    ],
)
def test_settings_no_results_file_could_hold_are_refused_before_writing(tmp_path, args, fragment):
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *FAST, *args, "-o", tmp_path / "r.json"), 2, fragment)
    untouched.check()


def test_an_infinite_setting_in_an_experiment_file_is_refused(tmp_path):
    experiment = tmp_path / "exp.toml"
    experiment.write_text("model = 'tiny-gpt2'\ncell_timeout = inf\n")
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-c", experiment, *FAST, "-o", tmp_path / "r.json"), 2, "finite number")
    untouched.check()


def test_the_command_line_and_the_reader_share_the_largest_integer(tmp_path):
    validate(BenchConfig(runs=LARGEST_INTEGER))
    with pytest.raises(KvbenchError, match="at most"):
        validate(BenchConfig(runs=LARGEST_INTEGER + 1))
    result = make_result()
    result.config["runs"] = LARGEST_INTEGER
    write_result(result, tmp_path / "edge.json")
    assert read_result(tmp_path / "edge.json").config["runs"] == LARGEST_INTEGER


def test_a_non_json_number_is_never_written(tmp_path):
    result = make_result()
    result.config["cell_timeout"] = math.inf
    write_result(result, tmp_path / "r.json")
    # JSON has no Infinity: written as null, and the file reads back.
    assert read_result(tmp_path / "r.json").config["cell_timeout"] is None


# --- a run that fails before measuring leaves nothing behind ---------------------------------------------


def test_ray_launcher_without_ray_is_refused_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    untouched = Untouched(tmp_path)
    output = tmp_path / "r.json"
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *FAST, "--launcher", "ray", "-o", output), 2, "kvbench[ray]")
    untouched.check()


def test_an_unreachable_ray_cluster_leaves_no_file_or_lock(tmp_path, monkeypatch):
    import ray

    def unreachable(*args, **kwargs):
        raise ConnectionError("Could not connect to the cluster at nowhere:10001")

    monkeypatch.setattr(ray, "init", unreachable)
    untouched = Untouched(tmp_path)
    args = ["run", "-m", "tiny-gpt2", *FAST, "--launcher", "ray", "--ray-address", "ray://nowhere:10001"]
    result = invoke(*args, "-o", tmp_path / "sub" / "r.json")
    assert_one_line(result, 2, "ray://nowhere:10001", "--ray-address")
    untouched.check()


def test_a_single_model_failing_to_load_leaves_nothing_in_the_way_of_the_retry(tiny_gpt2_dir, tmp_path):
    model = _mismatched(tiny_gpt2_dir, tmp_path)
    output = tmp_path / "out" / "r.json"
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-m", model, *FAST, "-o", output), 2, "cannot load the model")
    untouched.check()
    # The same command, the model fixed: no --force, no --resume needed.
    (model / "config.json").write_text((tiny_gpt2_dir / "config.json").read_text())
    assert invoke("run", "-m", model, *FAST, "-o", output).exit_code == 0
    assert read_result(output).complete


# --- --resume and files kvbench did not write -------------------------------------------------------------


@pytest.mark.parametrize("csv", ["foreign", "link"])
def test_resume_never_replaces_a_csv_kvbench_did_not_write(measured, tmp_path, csv):
    output = copy_results(measured, tmp_path)
    beside = output.with_suffix(".csv")
    beside.unlink()
    if csv == "foreign":
        beside.write_text("name,score\nalice,3\n")
    else:
        (tmp_path / "elsewhere.csv").write_text("cell,mode,run,latency_s\n")
        beside.symlink_to(tmp_path / "elsewhere.csv")
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", output, "--resume")
    assert_one_line(result, 2, f"{beside} is not the runs' CSV kvbench writes")
    untouched.check()
    assert beside.is_symlink() == (csv == "link")


def test_resume_still_rewrites_its_own_csv(measured, tmp_path):
    output = copy_results(measured, tmp_path)
    assert invoke("run", "-m", "tiny-gpt2", *FAST, "-o", output, "--resume").exit_code == 0


# --- --processes: a killed process keeps what the others measured -------------------------------------------


def test_a_killed_process_keeps_the_runs_of_the_processes_that_finished(tiny_gpt2_dir, tmp_path, monkeypatch):
    from kvbench.launch import workers

    class SecondIsKilled(workers.WorkerProcess):
        def measure(self, job, *args):
            if job.first_run == 1:
                self.process.kill()  # as the out-of-memory killer would
            return super().measure(job, *args)

    monkeypatch.setattr(workers, "WorkerProcess", SecondIsKilled)
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4], runs=3, processes=3, memory_sampling=False)
    benchmark = Benchmark(config, output=tmp_path / "r.json")
    benchmark.launcher = LocalProcesses(config, "cpu", slots=["cpu"])
    benchmark.run()
    stored = read_result(tmp_path / "r.json")
    (cell,) = stored.cells
    assert cell.status == "error" and "SIGKILL" in cell.reason and "kept" in cell.reason
    assert sorted((run.mode, run.run) for run in stored.runs) == [("cached", 0), ("uncached", 0)]


# --- tracebacks at the edges: the lock, long names --------------------------------------------------------


def test_a_full_disk_while_taking_the_lock_is_one_line(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if data == f"{os.getpid()}\n".encode("ascii"):  # the lock's pid, nothing else
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", tmp_path / "r.json")
    assert_one_line(result, 2, "cannot take the lock", "No space left on device")
    untouched.check()


def test_a_lock_path_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / ".r.json.lock").mkdir()
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", tmp_path / "r.json")
    assert_one_line(result, 2, f"cannot take the lock {tmp_path / '.r.json.lock'}", "Is a directory")
    untouched.check()


@pytest.mark.parametrize("length", [244, 250, 255, 300])
def test_output_names_too_long_for_the_files_beside_them_are_one_line(tmp_path, length):
    untouched = Untouched(tmp_path)
    output = tmp_path / ("a" * (length - len(".json")) + ".json")
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *FAST, "-o", output), 2, "cannot write results", "--output")
    untouched.check()


def test_the_longest_name_that_fits_is_written(tmp_path):
    output = tmp_path / ("a" * (242 - len(".json")) + ".json")
    assert invoke("run", "-m", "tiny-gpt2", *FAST, "-o", output).exit_code == 0
    assert read_result(output).complete


# --- a stale lock ----------------------------------------------------------------------------------------


def test_a_stale_lock_naming_a_live_pid_does_not_block(tmp_path):
    lock = tmp_path / ".r.json.lock"
    lock.write_text("1\n")  # init: alive, but it holds no flock
    output = tmp_path / "r.json"
    assert invoke("run", "-m", "tiny-gpt2", *FAST, "-o", output).exit_code == 0
    assert read_result(output).complete and not lock.exists()


def test_a_held_lock_is_refused_naming_the_lock_file(tmp_path):
    lock = tmp_path / ".r.json.lock"
    lock.write_text("1\n")
    with open(lock) as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        untouched = Untouched(tmp_path)
        result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", tmp_path / "r.json")
    assert_one_line(result, 2, "being written by another kvbench run", "pid 1", str(lock))
    untouched.check()


# --- ~ in paths --------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_tilde_in_output_and_config_means_home(home, tmp_path):
    (home / "exp.toml").write_text("model = 'tiny-gpt2'\n")
    result = invoke("run", "-c", "~/exp.toml", *FAST, "-o", "~/r.json")
    assert result.exit_code == 0, result.output
    assert read_result(home / "r.json").complete
    assert list((tmp_path / "work").iterdir()) == []


def test_tilde_in_plot_out_dir_means_home(home, tmp_path):
    write_result(make_result(), home / "r.json")
    assert invoke("plot", "~/r.json", "--out-dir", "~/figures").exit_code == 0
    assert (home / "figures" / "per-token.png").exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_tilde_in_an_experiment_files_output_means_home(home, tmp_path):
    (home / "exp.toml").write_text("output = '~/t.json'\nmodel = 'tiny-gpt2'\n")
    assert invoke("run", "-c", home / "exp.toml", *FAST).exit_code == 0
    assert read_result(home / "t.json").complete
    assert list((tmp_path / "work").iterdir()) == []


def test_a_figure_that_must_be_a_number_but_is_not_finite_never_replaces_a_good_file(tmp_path):
    path = tmp_path / "r.json"
    result = make_result()
    write_result(result, path)
    before = path.read_bytes()
    result.runs[0].tokens_per_s = math.inf  # JSON would hold null, which the reader refuses
    with pytest.raises(KvbenchError, match="was not rewritten"):
        write_result(result, path)
    assert path.read_bytes() == before
    assert read_result(path).runs[0].tokens_per_s is not None


def test_a_cell_named_twice_once_its_bits_are_filled_in_is_refused(tmp_path):
    """A quantized cell without bits (a file from before bits were an axis) is given the file's bits; beside a
    cell that already has them, two cells would claim the same runs."""
    from dataclasses import replace

    result = make_result(cache_implementation="quantized")
    (cell,) = result.cells
    result.cells.append(replace(cell, settings=replace(cell.settings, quantized_nbits=4)))
    path = tmp_path / "twice.json"
    write_result(result, path)
    with pytest.raises(KvbenchError, match="appears twice"):
        read_result(path)
