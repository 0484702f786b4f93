"""benchmarks/gpu_first_run.sh, the 15-minute plan for a fresh GPU machine: its dry run lists the GPU steps in
order of value within 900 s, and its quick CPU mode passes every step that needs no GPU and names every one that
does as skipped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_first_run.sh"

ON_THE_CPU = [
    "prefix-run",
    "prefix-measured",
    "batch-run",
    "batch-measured",
    "sweep-run",
    "sweep-between-cells",
    "cache-bytes-equal-theory",
    "energy-measured-or-explained",
    "overhead",
    "oom-sweep",
    "oom-then-measured",
]
GPU_ONLY = [
    "identify",
    "quantized-quanto-run",
    "quantized-quanto-measured",
    "quantized-hqq-run",
    "quantized-hqq-measured",
    "caches-512-run",
    "caches-512-measured",
    "capacity",
    "cached-minus-uncached-is-the-cache",
    "vram-peaks-above-baselines",
    "gate",
    "gpu-tests",
]
# What has never run on a GPU comes first, so a machine lent for less still measures it.
NEVER_RAN_ON_A_GPU = [
    "quantized-quanto-run",
    "quantized-hqq-run",
    "caches-512-run",
    "prefix-run",
    "batch-run",
    "capacity",
    "sweep-run",
    "overhead",
    "gate",
]
PLAN_BUDGET_S = 15 * 60


def test_the_script_parses():
    completed = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_the_gpu_plan_fits_15_minutes_by_its_own_budget_with_what_never_ran_first():
    completed = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    plan = [(line.split()[1], int(line.split()[2])) for line in lines if line.startswith("PLAN ")]
    names = [name for name, _ in plan]
    assert sorted(names) == sorted(ON_THE_CPU + GPU_ONLY)
    assert all(seconds > 0 for _, seconds in plan)
    total = sum(seconds for _, seconds in plan)
    assert total <= PLAN_BUDGET_S
    assert lines[-1] == f"budget {total} s of {PLAN_BUDGET_S} s"
    order = [names.index(name) for name in NEVER_RAN_ON_A_GPU]
    assert order == sorted(order) and names[0] == "identify"
    assert max(order) < names.index("gpu-tests") < names.index("oom-sweep")


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
    assert all((out / name).is_file() for name in ("prefix.json", "batch.json", "sweep.json", "oom.json"))
    # The overhead step's verdicts reach the summary, one per way and mode, for a person to read.
    assert sum(line.startswith("    overhead: kvbench") for line in lines) == 6
    # The sweep's seconds between cells too, read and not judged on a CPU.
    assert sum(line.startswith("    seconds between cells:") for line in lines) == 1
