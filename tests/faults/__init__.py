"""Faults injected into measuring processes from outside kvbench (see sitecustomize.py here)."""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fake_cuda_out_of_memory(monkeypatch, above: int) -> None:
    """Measuring processes started from now on in this test run out of (faked) CUDA memory in every generation
    whose prompt tokens x batch exceed `above` (sitecustomize.py), the error raised inside the measured run."""
    monkeypatch.setenv("KVBENCH_TEST_CUDA_OOM_ABOVE", str(above))
    path = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def inject(monkeypatch, tmp_path, faults: str) -> None:
    """Measuring processes started from now on in this test strike `faults` (sitecustomize.py's syntax)."""
    struck = tmp_path / "faults-struck"
    struck.mkdir(exist_ok=True)
    monkeypatch.setenv("KVBENCH_TEST_FAULT", faults)
    monkeypatch.setenv("KVBENCH_TEST_FAULT_STRUCK", str(struck))
    path = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
