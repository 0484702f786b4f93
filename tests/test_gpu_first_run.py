"""benchmarks/gpu_first_run.sh, the first run on a GPU machine, run here in its quick CPU mode: every step
that needs no GPU passes, and every one that does is named as skipped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_first_run.sh"

ON_THE_CPU = [
    "gpt2-run",
    "gpt2-cache-bytes-equal-theory",
    "gpt2-energy-measured-or-explained",
    "oom-sweep",
    "oom-then-measured",
    "overhead",
    "sweep-run",
    "sweep-between-cells",
]
GPU_ONLY = [
    "identify",
    "identify-by-uuid",
    "gpu-tests",
    "gpt2-cached-minus-uncached-is-the-cache",
    "gpt2-vram-peaks-above-baselines",
    "static-compile-run",
    "static-compile-measured",
]


def test_the_script_parses():
    completed = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_the_quick_cpu_run_passes_what_needs_no_gpu_and_names_what_it_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the script would run its GPU steps, which the gpu tests cover")
    out = tmp_path / "first-run"
    environ = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines == completed.stdout.splitlines()
    statuses = {line.split()[1].rstrip(":"): line.split()[0] for line in lines if line.split()[0] in ("PASS", "SKIP")}
    assert statuses == {**dict.fromkeys(ON_THE_CPU, "PASS"), **dict.fromkeys(GPU_ONLY, "SKIP")}
    assert lines[-1] == f"{len(ON_THE_CPU)} passed, 0 failed, {len(GPU_ONLY)} skipped; files in {out}"
    assert (out / "gpt2.json").is_file() and (out / "oom.json").is_file()
    # The overhead step's verdicts reach the summary, one per way and mode, for a person to read.
    assert sum(line.startswith("    overhead: kvbench") for line in lines) == 6
    # The sweep's seconds between cells too, read and not judged on a CPU.
    assert sum(line.startswith("    seconds between cells:") for line in lines) == 1
