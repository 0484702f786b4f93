"""Faults for the measuring processes a test starts, from outside kvbench: a test puts this folder on the
PYTHONPATH (tests.faults.inject) and names the faults in KVBENCH_TEST_FAULT, e.g. "kill@new=4 ,hang".

A fault strikes a measuring process (`python -m kvbench.launch.worker`) whose cell id contains the text after "@"
(every cell when there is none), right after its first measured run has been saved and sent: "kill"
(SIGKILL, as the out-of-memory killer), "abort" (a crash), "hang", "exit" (what a native library does when
it gives up: a line on each stream, then exit 3), "error" (a CUDA-like error), "oom". It strikes once per
cell: with several processes measuring a cell, the first to get there. KVBENCH_TEST_CUDA_OOM_ABOVE=N
(tests.faults.fake_cuda_out_of_memory) fakes a small GPU instead: every generation of more than N prompt tokens x
batch raises torch's CUDA out-of-memory error. Python imports this file at start-up in every process; it does
nothing until kvbench.measure.measurer is imported in a measuring process.
"""

import hashlib
import importlib.abc
import importlib.util
import os
import signal
import sys
import time

SPEC = os.environ.get("KVBENCH_TEST_FAULT", "")
STRUCK = os.environ.get("KVBENCH_TEST_FAULT_STRUCK", "")  # a folder: one file per cell struck
# A faked GPU: every generation whose prompt tokens x batch exceed this raises torch's CUDA out-of-memory error
# from inside the measured run, as a GPU too small for it would; the rest run as they are.
CUDA_OOM_ABOVE = os.environ.get("KVBENCH_TEST_CUDA_OOM_ABOVE", "")


def _fault_for(cell_id):
    for spec in filter(None, SPEC.split(",")):
        fault, _, where = spec.partition("@")
        if where in cell_id:
            return fault.strip()
    return None


def _first_to_strike(cell_id):
    marker = os.path.join(STRUCK, hashlib.sha256(cell_id.encode()).hexdigest()[:16])
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _strike(fault):
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "abort":
        os.abort()
    elif fault == "hang":
        time.sleep(3600)
    elif fault == "exit":
        print("simulated output on stdout")  # buffered, unless the parent asked for unbuffered output
        os.write(2, b"simulated native failure: unrecoverable state\n")
        os._exit(3)
    elif fault == "error":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
    elif fault == "oom":
        raise MemoryError("simulated")


def _patch_cuda_oom(measurer):
    original = measurer.measure_generation
    above = int(CUDA_OOM_ABOVE)

    def measure_generation(generate, *args, **kwargs):
        if generate.prompt_tokens * generate.cell.batch_size > above:
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(generate, *args, **kwargs)

    measurer.measure_generation = measure_generation


def _patch(measurer):
    if CUDA_OOM_ABOVE:
        _patch_cuda_oom(measurer)
    if not (SPEC and STRUCK):
        return
    original = measurer.Measurer.measure

    def measure(self, job, emit):
        if not sys.argv[0].endswith(os.path.join("kvbench", "launch", "worker.py")):
            return original(self, job, emit)
        fault = _fault_for(job.cell.id)

        def emit_then_strike(event):
            emit(event)
            # Right after the first measured run has been sent.
            if fault is not None and type(event).__name__ == "RunsMeasured" and _first_to_strike(job.cell.id):
                _strike(fault)

        return original(self, job, emit_then_strike)

    measurer.Measurer.measure = measure


class _PatchMeasureOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "kvbench.measure.measurer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if SPEC and STRUCK or CUDA_OOM_ABOVE:
    sys.meta_path.insert(0, _PatchMeasureOnImport())
