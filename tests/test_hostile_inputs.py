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
from kvbench.core.eta import Planned
from kvbench.model.cells import Cell
from kvbench.model.experiment import build_config, load_toml
from kvbench.model.records import CellResult
from kvbench.render.progress import LineProgress, LiveProgress
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result, write_runs_csv
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


# --- 1. rich markup in user text is printed as written ----------------------------------------------------


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_markup_in_an_error_line_is_printed_as_written(tmp_path, name):
    one_line_error(invoke("show", tmp_path / f"{name}.json"), f"{name}.json does not exist")
    one_line_error(invoke("run", "--launcher", name), f"'launcher' cannot be '{name}'")


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_markup_in_a_results_file_is_shown_as_written(tmp_path, name):
    data = with_model_name(name)
    data["notes"] = [f"a note on {name}"]
    result = invoke("show", write(tmp_path / "r.json", data))
    assert result.exit_code == 0, result.output
    # The table's title, the summary line and the note each show the name whole.
    assert result.stdout.count(name) >= 3, result.stdout


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_markup_in_compared_file_names_and_warnings_is_shown_as_written(tmp_path, fmt):
    first = write(tmp_path / "[red]x.json", GOLDEN)
    other = copy.deepcopy(GOLDEN)
    other["config"]["prompt"] = "[/]"  # differs from the baseline's: a warning quotes both values
    second = write(tmp_path / "[bold]y.json", other)
    result = invoke("compare", first, second, "-f", fmt)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    if fmt == "table":  # the headers name the files
        assert "[red]x mean ± std (s)" in result.stdout and "[bold]y vs [red]x" in result.stdout
        assert "'[/]'" in result.stdout
    else:
        assert {row["label"] for row in csv.DictReader(io.StringIO(result.stdout))} == {"[red]x", "[bold]y"}
        assert "'[/]'" in result.stderr


def test_markup_in_a_model_name_does_not_break_the_live_progress():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    cell = CellResult(settings=Cell("m[/]x", 2, 1, "float32", "dynamic", "auto"), status="pending")
    with LiveProgress(console, clock=lambda: 0.0) as display:
        display.planned({Planned("cached", 2, model="m[/]x", cell=cell.id): 1})
        display.cell_started(cell, 0, 2)
        display.generation_started("m[/]x cached 1/1", Planned("cached", 2, model="m[/]x", cell=cell.id))
        display.generation_finished(0.5, Planned("cached", 2, model="m[/]x", cell=cell.id))
    shown = console.file.getvalue()
    assert "cell 1/2:" in shown and "m[/]x new=2" in shown and "m[/]x cached 1/1" in shown


# --- 2. control characters from files and workers never reach the terminal --------------------------------


def test_escape_sequences_in_a_results_file_are_written_out(tmp_path):
    data = with_model_name(f"evil{ESC}]0;pwned{ESC}\\{CSI}2J")
    data["notes"] = [f"clear{ESC}[2Jscreen"]
    data["unmeasured"] = {"vram": f"no GPU{ESC}[8m hidden"}
    result = invoke("show", write(tmp_path / "r.json", data), "--show-output")
    assert result.exit_code == 0, result.output
    assert no_control_characters(result.stdout), repr(result.stdout)
    assert "\\x1b[2Jscreen" in result.stdout and "evil\\x1b]0;pwned" in result.stdout and "\\x9b2J" in result.stdout


def test_escape_sequences_in_a_path_are_written_out_in_the_error_line(tmp_path):
    line = one_line_error(invoke("show", tmp_path / f"a{ESC}[2J\nb.json"))
    assert no_control_characters(line) and "a\\x1b[2J\\nb.json" in line


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "benchmark-action"])
def test_escape_sequences_in_compared_files_are_written_out(tmp_path, fmt):
    data = with_model_name(f"m{ESC}[31m{CSI}31m")
    first, second = write(tmp_path / "a.json", data), write(tmp_path / "b.json", data)
    result = invoke("compare", first, second, "-f", fmt)
    assert result.exit_code == 0, result.output
    assert no_control_characters(result.stdout.replace("\r\n", "\n")), repr(result.stdout)
    if fmt in ("json", "benchmark-action"):  # written out as JSON escapes: the same text to a JSON reader
        assert f"m{ESC}[31m{CSI}31m" in "".join(strings_in(json.loads(result.stdout)))


def test_what_a_worker_prints_reaches_the_log_with_its_controls_written_out():
    console = Console(file=io.StringIO(), width=200)
    display = LineProgress(console, clock=lambda: 0.0)
    display.output(f"{ESC}]0;new window title{ESC}\\ loading{CSI}2K")
    shown = console.file.getvalue()
    assert no_control_characters(shown.replace("\n", "")) and "\\x1b]0;new window title" in shown


# --- 3. CSV cells that a spreadsheet would run ------------------------------------------------------------


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)"])
def test_the_runs_csv_writes_formulas_as_text_and_keeps_numbers(tmp_path, name):
    path = tmp_path / "r.json"
    write_runs_csv(make_result(model=name), path)
    rows = list(csv.DictReader(path.with_suffix(".csv").open()))
    assert rows and all(row["cell"] == f"'{name} new=100 batch=1 float32 cache=dynamic attn=auto" for row in rows)
    assert float(rows[0]["latency_s"]) == 1.0


@pytest.mark.parametrize("name", ["=1+1", "-2+3", "@SUM(A1)", "+cmd"])
def test_compare_csv_writes_formulas_as_text_and_keeps_negative_numbers(tmp_path, name):
    first, second = make_result(model=name), make_result(model=name)
    for run in second.runs:
        run.peak_rss_bytes = 500  # half the baseline's: a change of -50%
    write_result(first, tmp_path / "a.json")
    write_result(second, tmp_path / "b.json")
    result = invoke("compare", tmp_path / "a.json", tmp_path / "b.json", "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["model"] for row in rows} == {f"'{name}"}
    assert all(row["compared_with"].startswith(f"'{name}") for row in rows)
    assert [row["peak_memory_change_pct"] for row in rows if row["file"].endswith("b.json")] == ["-50.0", "-50.0"]


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


@pytest.mark.parametrize(
    "change, fragment",
    [
        (_dtype_seven, "cells[0].model.dtype must be a string, got 7"),
        (_one_number_timeline, "memory_timeline"),
        (_negative_timeline, "memory_timeline"),
    ],
)
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


# --- 9. --dry-run --json ----------------------------------------------------------------------------------


def test_dry_run_with_json_prints_the_plan_as_json(tmp_path):
    output = tmp_path / "r.json"
    result = invoke(
        "run", "-m", "tiny-gpt2", "-n", "2", "-n", "3", "-r", "2", "-w", "1", "-d", "cpu", "--dry-run", "--json", "-o", output
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["output"] == str(output) and plan["generations"] == 2 * (2 + 1) * 2
    assert [cell["settings"]["max_new_tokens"] for cell in plan["cells"]] == [2, 3]
    assert {cell["what_happens"] for cell in plan["cells"]} == {"measure"}
    assert not output.exists()
