"""A fresh Python process that imports this very kvbench: a checkout that is not installed included."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# The directory `import kvbench` found this package in.
KVBENCH_ROOT = str(Path(__file__).resolve().parents[2])


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (this process's by default) with KVBENCH_ROOT first on PYTHONPATH, once, and Python's output
    unbuffered, so what a child prints arrives in order and is not lost if it dies."""
    environ = os.environ if environ is None else environ
    path = [KVBENCH_ROOT] + [
        entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != KVBENCH_ROOT
    ]
    return {**environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
