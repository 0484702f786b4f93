"""What a GPU machine meets before its quantized cells: quanto's CUDA kernels built in a timed, reported phase of
their own, a build lock left by a killed build cleared with a message, --warmup 0 refused for a backend that
builds or loads kernels in its first generation, and a MIG instance not read as its full GPU."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from kvbench.core.errors import KvbenchError
from kvbench.measure import kernel_build
from kvbench.model.costs import datasheet_peaks
from kvbench.model.settings import BenchConfig
from kvbench.model.validation import validate, validate_timing
from kvbench.runner.benchmark import Benchmark, run_benchmark
from tests.conftest import tiny_config


@pytest.mark.parametrize("backend", ["quanto", "hqq"])
def test_warmup_0_is_refused_for_a_backend_that_builds_or_loads_kernels_first(backend, tiny_gpt2_dir):
    quantized = BenchConfig(cache_implementation=["dynamic", "quantized"], quantized_backend=backend, warmup=0)
    with pytest.raises(KvbenchError, match=f"a {backend} quantized cache needs 'warmup' of at least 1"):
        validate_timing(quantized)
    # Before any model is loaded, as `kvbench run` checks it.
    with pytest.raises(KvbenchError, match="needs 'warmup' of at least 1"):
        Benchmark(tiny_config(tiny_gpt2_dir, cache_implementation=["quantized"], quantized_backend=backend))
    validate(quantized)  # kvbench capacity times nothing: its probes need no warmup
    validate_timing(BenchConfig(cache_implementation=["quantized"], quantized_backend=backend, warmup=1))
    # fp8 is torch alone, and the other caches build nothing.
    validate_timing(BenchConfig(cache_implementation=["quantized"], quantized_backend="fp8", warmup=0))
    validate_timing(BenchConfig(cache_implementation=["dynamic", "static"], quantized_backend=backend, warmup=0))


def test_only_quanto_on_a_gpu_has_kernels_to_build():
    assert kernel_build.kernels_to_build(["dynamic", "quantized"], "quanto", "cuda:0") == ["quanto"]
    assert kernel_build.kernels_to_build(["dynamic", "quantized"], "quanto", "cpu") == []
    assert kernel_build.kernels_to_build(["quantized"], "hqq", "cuda") == []
    assert kernel_build.kernels_to_build(["dynamic"], "quanto", "cuda") == []


_KILLED_MIDWAY = """
import fcntl, os, signal, sys
from pathlib import Path
folder = Path(sys.argv[1])
guard = open(folder / "kvbench-build.flock", "w")
fcntl.flock(guard, fcntl.LOCK_EX)
(folder / "lock").write_text("")  # torch's FileBaton, taken as a build starts
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lock_left_by_a_killed_build_is_cleared_with_a_message(tmp_path):
    completed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path)], check=False)
    assert completed.returncode == -signal.SIGKILL
    assert (tmp_path / "lock").exists()
    with kernel_build.build_guard(tmp_path) as cleared:
        assert not (tmp_path / "lock").exists()
    assert cleared is not None and cleared.startswith(f"removed a stale build lock, {tmp_path / 'lock'}, left by a build")
    with kernel_build.build_guard(tmp_path) as cleared:
        pass
    assert cleared is None


def test_the_build_is_timed_and_reported_or_its_failure_named():
    ticks = iter([10.0, 93.5])

    def built(*args, **kwargs):
        return SimpleNamespace(returncode=0, stdout='{"built": true, "cleared": "removed a stale build lock"}\n', stderr="")

    build = kernel_build.build_in_fresh_process("quanto", run=built, clock=lambda: next(ticks))
    assert build == kernel_build.KernelBuild(
        83.5,
        [
            "quanto: removed a stale build lock",
            "quanto's CUDA kernels built (or loaded, if built before) in 83.5 s, before the cells",
        ],
        None,
    )

    def failed(*args, **kwargs):
        return SimpleNamespace(returncode=1, stdout="", stderr="...\nRuntimeError: Error building extension 'quanto_cuda'\n")

    build = kernel_build.build_in_fresh_process("quanto", run=failed, clock=lambda: 0.0)
    assert build.problem == (
        "quanto's kernels could not be built before the cells (RuntimeError: Error building extension 'quanto_cuda')"
    )


def test_a_sweep_builds_before_its_cells_and_counts_the_build_in_the_first_quantized_cell(tiny_gpt2_dir, monkeypatch, tmp_path):
    pytest.importorskip("optimum.quanto", reason="the quanto backend needs pip install 'kvbench[quantized]'")
    # The GPU is what this machine lacks: its build is played, seconds chosen.
    monkeypatch.setattr(kernel_build, "kernels_to_build", lambda *args: ["quanto"])
    line = "quanto's CUDA kernels built (or loaded, if built before) in 83.5 s, before the cells"
    monkeypatch.setattr(kernel_build, "build_in_fresh_process", lambda backend: kernel_build.KernelBuild(83.5, [line], None))
    config = tiny_config(
        tiny_gpt2_dir,
        runs=1,
        warmup=1,
        modes=["cached"],
        cache_implementation=["dynamic", "quantized"],
        quantized_nbits=[4],
        quantized_group_size=16,
        quantized_residual_length=2,
    )
    result = run_benchmark(config, output=tmp_path / "r.json")
    dynamic, quantized = result.cells
    assert quantized.status == "measured", quantized.reason
    assert quantized.phases_s["kernel_build"] == 83.5
    assert "kernel_build" not in (dynamic.phases_s or {})
    assert line in result.notes


@pytest.mark.parametrize(
    "name", ["NVIDIA A100-SXM4-40GB MIG 3g.20gb", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA H200 MIG 7g.141gb"]
)
def test_a_mig_instance_is_not_read_as_its_full_gpu(name):
    assert datasheet_peaks(name) is None
    assert datasheet_peaks(name.split(" MIG ")[0]) is not None


def test_the_guard_is_an_flock_the_system_releases(tmp_path):
    # Held by this process, a second holder would wait: the flock is taken, not merely a file made.
    import fcntl

    with kernel_build.build_guard(tmp_path):
        with open(tmp_path / kernel_build.GUARD) as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert os.path.exists(tmp_path / kernel_build.GUARD)
