"""ruff and mypy pass as pyproject.toml configures them: a lint or type error fails the test command."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing_in_the_package_benchmarks_and_tools():
    completed = tool("ruff", "check", "kvbench", "benchmarks", "tools")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_mypy_passes_on_the_package():
    completed = tool("mypy")  # the files and the modules not yet clean are listed in pyproject.toml
    assert completed.returncode == 0, completed.stdout + completed.stderr
