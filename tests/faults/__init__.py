"""Faults injected into measuring processes from outside kvbench (see sitecustomize.py here)."""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inject(monkeypatch, tmp_path, faults: str) -> None:
    """Measuring processes started from now on in this test strike `faults` (sitecustomize.py's syntax)."""
    struck = tmp_path / "faults-struck"
    struck.mkdir(exist_ok=True)
    monkeypatch.setenv("KVBENCH_TEST_FAULT", faults)
    monkeypatch.setenv("KVBENCH_TEST_FAULT_STRUCK", str(struck))
    path = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
