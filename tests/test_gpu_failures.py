"""GPU failures that arrive as a plain RuntimeError: cuBLAS failing to allocate is out of memory, and a sticky
CUDA error in `kvbench run`'s own process (--isolation none) stops the sweep in one line instead of failing
every cell after it."""

import pytest

from kvbench.core.errors import KvbenchError
from kvbench.measure.generation import is_out_of_memory, is_sticky_cuda_error
from kvbench.measure.measurer import Measurer
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from tests.conftest import tiny_config

ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be"
    " incorrect."
)


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasLtMatmul( ltHandle, computeDesc.descriptor(), ...)`",
        "CUDA error: out of memory\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
    ],
)
def test_cublas_and_raw_cuda_allocation_failures_are_out_of_memory(message):
    assert is_out_of_memory(RuntimeError(message))
    assert not is_sticky_cuda_error(RuntimeError(message))


def test_other_runtime_errors_are_neither():
    assert not is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"))
    assert is_sticky_cuda_error(RuntimeError(ILLEGAL_ACCESS))
    assert not is_sticky_cuda_error(RuntimeError("shape mismatch"))


def test_a_sticky_cuda_error_in_this_process_stops_the_sweep_in_one_line(tiny_gpt2_dir, tmp_path, monkeypatch):
    measure = Measurer._measure
    calls = []

    def strikes_the_second_cell(self, job, *args, **kwargs):
        calls.append(job.cell.max_new_tokens)
        if job.cell.max_new_tokens == 6:
            raise RuntimeError(ILLEGAL_ACCESS)
        return measure(self, job, *args, **kwargs)

    monkeypatch.setattr(Measurer, "_measure", strikes_the_second_cell)
    config = tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6, 8], runs=1, modes=["cached"])
    with pytest.raises(KvbenchError) as raised:
        run_benchmark(config, output=tmp_path / "r.json")
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith(
        "CUDA error: an illegal memory access was encountered: this process's CUDA context cannot be used after"
        " that error, so the cells after it cannot run here (those measured are saved); rerun with --resume and"
        " --isolation model, which measures each model in a fresh process"
    )
    assert calls == [4, 6]
    stored = read_result(tmp_path / "r.json")
    assert [cell.status for cell in stored.cells] == ["measured", "error", "pending"]
    assert stored.cells[1].reason == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_in_a_measuring_process_a_sticky_error_is_the_cell_s_and_the_sweep_goes_on(tiny_gpt2_dir, monkeypatch):
    # A launcher replaces a measuring process that failed; in this process a sweep records the cell and goes on
    # only where the error is not sticky.
    measure = Measurer._measure

    def fails_the_first_cell(self, job, *args, **kwargs):
        if job.cell.max_new_tokens == 4:
            raise RuntimeError("shape mismatch")
        return measure(self, job, *args, **kwargs)

    monkeypatch.setattr(Measurer, "_measure", fails_the_first_cell)
    result = run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=1, modes=["cached"]))
    assert [cell.status for cell in result.cells] == ["error", "measured"]
