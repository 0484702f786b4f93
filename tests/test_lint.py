"""ruff and mypy pass as pyproject.toml configures them: a lint, format or type error fails the test command."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every Python file the repository holds.
CHECKED = ("kvbench", "tests", "benchmarks", "tools")


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing_anywhere():
    completed = tool("ruff", "check", *CHECKED)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_every_file_is_formatted_as_ruff_formats_it():
    completed = tool("ruff", "format", "--check", *CHECKED)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_mypy_passes_on_the_whole_package():
    completed = tool("mypy")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_no_module_is_exempt_from_type_checking():
    """mypy's settings check every module: an `ignore_errors` override would let a module's errors pass."""
    pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")
    import tomllib

    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert not any(override.get("ignore_errors") for override in settings.get("overrides", []))
    assert settings["files"] == ["kvbench"]
