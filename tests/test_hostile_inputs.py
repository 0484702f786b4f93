"""Hostile input that crashed, hung or reached the terminal: rich markup and control characters in names,
paths, results files and worker output; formulas in CSV cells; impossible model configs and results
fields; files that never end or never open; sweeps too large to run; a BOM; `--dry-run --json`. Each test
failed before its fix."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.config import Cell, build_config, load_toml
from kvbench.eta import Planned
from kvbench.progress import LineProgress, LiveProgress
from kvbench.records import CellResult
from kvbench.results import read_result, write_result, write_runs_csv
from tests.conftest import make_result

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden.json").read_text())
SHIPPED_TINY_GPT2 = json.loads((ROOT / "kvbench" / "shipped_models" / "tiny-gpt2.json").read_text())
ESC = "\x1b"
CSI = "\x9b"  # the one-character C1 form of ESC [
# Markup that rich would parse: a closing tag with nothing to close raises, a known style is eaten.
MARKUP_NAMES = ["foo[/]bar", "llama[v2]", "[bold]x[/bold]", "kvbench[ray]"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    """Exit 2 and one "Error:" line holding each fragment, never a traceback (CliRunner keeps it)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_control_characters(text: str) -> bool:
    return not any(ord(c) < 32 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in text)


def strings_in(document) -> list[str]:
    if isinstance(document, str):
        return [document]
    items = document.values() if isinstance(document, dict) else document if isinstance(document, list) else []
    return [text for item in items for text in strings_in(item)]


def with_model_name(name: str) -> dict:
    """The golden results file with its first cell's model renamed (its id and runs kept consistent)."""
    data = copy.deepcopy(GOLDEN)
    cell = data["cells"][0]
    old = cell["id"]
    cell["settings"]["model"] = name
    cell["id"] = Cell(**cell["settings"]).id
    for run in data["runs"]:
        if run["cell"] == old:
            run["cell"] = cell["id"]
    return data


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- 3. CSV cells that a spreadsheet would run ------------------------------------------------------------


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)"])
def test_the_runs_csv_writes_formulas_as_text_and_keeps_numbers(tmp_path, name):
    path = tmp_path / "r.json"
    write_runs_csv(make_result(model=name), path)
    rows = list(csv.DictReader(path.with_suffix(".csv").open()))
    assert rows and all(row["cell"] == f"'{name} new=100 batch=1 float32 cache=dynamic attn=auto" for row in rows)
    assert float(rows[0]["latency_s"]) == 1.0


# --- 4. model configs with impossible sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"vocab_size": 0}, "vocab_size to 0"),
        ({"vocab_size": "big"}, "'vocab_size'"),
        ({"n_layer": -1}, "n_layer to -1"),
        ({"n_head": 0}, "n_head to 0"),
    ],
)
@pytest.mark.parametrize("as_directory", [False, True])
def test_a_model_config_with_an_impossible_size_is_one_line(tmp_path, change, fragment, as_directory):
    config = {**SHIPPED_TINY_GPT2, **change}
    if as_directory:
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(config))
    else:
        model = tmp_path / "model.json"
        model.write_text(json.dumps(config))
    result = invoke("run", "-m", model, "-n", "2", "-r", "1", "-w", "0", "-d", "cpu", "--dry-run")
    one_line_error(result, fragment)


# --- 5. results fields of the wrong shape -----------------------------------------------------------------


def _damaged(change) -> dict:
    data = copy.deepcopy(GOLDEN)
    change(data)
    return data


def _dtype_seven(data):
    data["cells"][0]["model"]["dtype"] = 7


def _one_number_timeline(data):
    for run in data["runs"]:
        run["memory_timeline"] = [[0.1]]


def _negative_timeline(data):
    for run in data["runs"]:
        run["memory_timeline"] = [[0.0, -5]]


@pytest.mark.parametrize("change, fragment", [
    (_dtype_seven, "cells[0].model.dtype must be a string, got 7"),
    (_one_number_timeline, "memory_timeline"),
    (_negative_timeline, "memory_timeline"),
])
@pytest.mark.parametrize("command", ["show", "compare", "plot"])
def test_results_fields_of_the_wrong_shape_are_one_line(tmp_path, change, fragment, command):
    path = write(tmp_path / "hostile.json", _damaged(change))
    args = [path, ROOT / "tests" / "data" / "golden.json"] if command == "compare" else [path]
    one_line_error(invoke(command, *args), fragment)


# --- 6. files that never end, never open, or are far too large --------------------------------------------


def _kvbench(*args: str) -> subprocess.CompletedProcess:
    """In a fresh process, so a read that blocks fails the test by its timeout instead of hanging it."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kvbench", *args], capture_output=True, text=True, timeout=120, env=environment
    )


@pytest.mark.parametrize("command", [["show"], ["run", "--dry-run", "--config"]])
def test_a_fifo_is_refused_before_it_is_opened(tmp_path, command):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    completed = _kvbench(*command, str(fifo))
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert "is not a regular file" in completed.stderr


@pytest.mark.parametrize("command", [["show"], ["run", "--dry-run", "--config"]])
def test_a_device_that_never_ends_is_refused(command):
    completed = _kvbench(*command, "/dev/zero")
    assert completed.returncode == 2, completed.stderr
    assert "Error: " in completed.stderr and "/dev/zero is not a regular file" in completed.stderr


def test_a_results_file_beyond_its_size_limit_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(256 * 2**20 + 1)  # sparse: no disk used
    one_line_error(invoke("show", path), "larger than the 256 MiB a results file may be")


def test_a_config_file_beyond_its_size_limit_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "huge.toml"
    with path.open("wb") as handle:
        handle.truncate(16 * 2**20 + 1)
    one_line_error(invoke("run", "--config", path, "--dry-run"), "larger than the 16 MiB a config file may be")


# --- 7. a sweep too large to run --------------------------------------------------------------------------


def test_a_million_cell_sweep_is_refused_with_its_size_and_the_cap(tmp_path):
    path = tmp_path / "sweep.toml"
    lengths = ", ".join(str(n) for n in range(1, 1001))
    path.write_text(f"max_new_tokens = [{lengths}]\nbatch_size = [{lengths}]\n")
    with pytest.raises(Exception) as error:
        build_config(path, {})
    assert "1,000,000 cells" in str(error.value) and "10,000" in str(error.value)
    one_line_error(invoke("run", "--config", path, "--dry-run"), "1,000,000 cells", "10,000")


def test_a_sweep_at_the_cap_is_accepted(tmp_path):
    path = tmp_path / "sweep.toml"
    lengths = ", ".join(str(n) for n in range(1, 101))
    path.write_text(f"max_new_tokens = [{lengths}]\nbatch_size = [{lengths}]\n")
    assert len(build_config(path, {}).max_new_tokens) == 100


# --- 8. a byte order mark ---------------------------------------------------------------------------------


def test_an_experiment_file_with_a_utf8_bom_is_read(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_bytes(b'\xef\xbb\xbfmodel = "tiny-gpt2"\nmax-new-tokens = 4\n')
    assert load_toml(path) == {"model": "tiny-gpt2", "max_new_tokens": 4}


def test_a_results_file_with_a_utf8_bom_is_read(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOLDEN).encode())
    assert read_result(path).cells
