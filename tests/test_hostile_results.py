"""Hostile results files and edge cases found by attacking compare's serving metrics, the time left, the
stored peaks and costs, and the exponent gap: each test failed before its fix (a traceback, a hang, a
wrong estimate) and pins the behaviour down."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.core.eta import Planned, TimeLeft
from kvbench.model.cells import Cell

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden.json").read_text())
LONG = json.loads((ROOT / "results" / "explain-cpu-long.json").read_text())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(tmp_path: Path, data: dict, name: str = "hostile.json", text: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else json.dumps(data))
    return path


def one_line_error(result) -> None:
    """A hostile file: exit 2 and a one-line error, never a traceback (CliRunner keeps the exception)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output


def set_setting(data: dict, index: int, key: str, value) -> None:
    """Change a cell's setting, keeping its id and its runs' references consistent."""
    cell = data["cells"][index]
    old = cell["id"]
    cell["settings"][key] = value
    cell["id"] = Cell(**cell["settings"]).id
    for run in data["runs"]:
        if run["cell"] == old:
            run["cell"] = cell["id"]


# --- 1. a file kvbench itself writes after --cell-timeout cannot be read --------------------------------


@pytest.mark.parametrize("command", ["show", "plot"])
def test_a_timed_out_cell_is_a_state_kvbench_reads(tmp_path, command):
    data = copy.deepcopy(GOLDEN)
    cell_id = data["cells"][0]["id"]
    data["cells"][0]["status"] = "timeout"
    data["cells"][0]["reason"] = "not finished within --cell-timeout 15 s; its process was stopped"
    data["runs"] = [run for run in data["runs"] if run["cell"] != cell_id]
    path = write(tmp_path, data)
    extra = ["--out-dir", tmp_path / "plots"] if command == "plot" else []
    result = invoke(command, path, *extra)
    assert result.exit_code == 0, result.output


# --- 2. settings the roofline steps through: 0 new tokens is a traceback, a huge count hangs ------------


@pytest.mark.parametrize("new_tokens", [0, -3])
@pytest.mark.parametrize("command", ["show", "plot"])
def test_non_positive_max_new_tokens_with_a_cost_is_one_line(tmp_path, command, new_tokens):
    data = copy.deepcopy(LONG)
    set_setting(data, 0, "max_new_tokens", new_tokens)
    extra = ["--out-dir", tmp_path / "plots"] if command == "plot" else []
    one_line_error(invoke(command, write(tmp_path, data), *extra))


# --- 3. per-token times are not checked: NaN crashes every reader ---------------------------------------


@pytest.mark.parametrize("command", ["show", "compare"])
def test_nan_token_times_are_refused_in_one_line(tmp_path, command):
    data = copy.deepcopy(GOLDEN)
    data["runs"][0]["token_times_s"] = [math.nan] * len(data["runs"][0]["token_times_s"])
    path = write(tmp_path, data)
    args = [command, path] if command == "show" else [command, ROOT / "tests/data/golden.json", path]
    one_line_error(invoke(*args))


# --- 4. "finite positive" numbers at the edge of a float crash the statistics ----------------------------


@pytest.mark.parametrize(
    ("field", "value", "command"),
    [
        ("latency_s", 1e308, "show"),  # OverflowError: intermediate overflow in fsum
        ("time_to_first_token_s", 5e-324, "compare"),  # ZeroDivisionError in compare_means
    ],
)
def test_extreme_times_are_refused_or_handled(tmp_path, field, value, command):
    data = copy.deepcopy(GOLDEN)
    for run in data["runs"]:
        run[field] = value
    path = write(tmp_path, data)
    args = [command, path] if command == "show" else [command, ROOT / "tests/data/golden.json", path]
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# --- 5. energy_j is not checked: NaN leaks into compare's JSON, a zero-token run crashes -----------------


def test_compare_json_stays_json_with_a_nan_energy(tmp_path):
    data = copy.deepcopy(GOLDEN)
    data["runs"][0]["energy_j"] = math.nan
    path = write(tmp_path, data)
    result = invoke("compare", "-f", "json", ROOT / "tests/data/golden.json", path)
    if result.exit_code == 2:
        return  # refused in one line: fine
    assert result.exit_code == 0, result.output

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    json.loads(result.stdout, parse_constant=no_constants)


def test_energy_with_a_run_of_no_tokens_is_no_traceback(tmp_path):
    data = copy.deepcopy(GOLDEN)
    for run in data["runs"]:
        run["energy_j"] = 1.0
    data["runs"][0]["new_tokens"] = 0
    result = invoke("show", write(tmp_path, data))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# --- 6. JSON that parses to a traceback -----------------------------------------------------------------


def test_deeply_nested_json_is_one_line(tmp_path):
    text = json.dumps({**GOLDEN, "environment": {**GOLDEN["environment"], "x": "@@"}})
    one_line_error(invoke("show", write(tmp_path, {}, text=text.replace('"@@"', "[" * 5000 + "]" * 5000))))


def test_an_integer_of_thousands_of_digits_is_one_line(tmp_path):
    text = json.dumps(GOLDEN).replace('"cpu_count": 2', '"cpu_count": ' + "9" * 5000)
    one_line_error(invoke("show", write(tmp_path, {}, text=text)))


# --- 7. plot needs config.model, which the reader does not require --------------------------------------


def test_plot_without_config_model_is_one_line_or_works(tmp_path):
    data = copy.deepcopy(GOLDEN)
    del data["config"]["model"]
    result = invoke("plot", write(tmp_path, data), "--out-dir", tmp_path / "plots")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# --- 8. the time left with --processes N forgets the start-up of a cell's later processes ----------------


def test_time_left_counts_the_start_up_still_to_come_in_a_running_cell():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    gen = {c: Planned("cached", 10, 8, "m", c) for c in ("c1", "c2")}
    left = TimeLeft([gen["c1"]] * 4 + [gen["c2"]] * 4, clock=clock)

    def process(cell):  # a measuring process: 10 s to start, then 2 generations of 1 s
        now[0] += 10
        for _ in range(2):
            now[0] += 1
            left.finished(gen[cell], 1.0)

    left.cell_started("c1")
    process("c1")
    process("c1")
    left.cell_finished("c1")  # the cell cost 20 s beyond its generations: two start-ups
    left.cell_started("c2")
    process("c2")
    # Still to come: the second process's start-up (10 s) and its 2 generations (2 s).
    assert left.seconds_left() >= 10


# --- 9. a flat mode's exponent is reported as known exactly ----------------------------------------------


def test_an_unidentifiable_exponent_has_no_zero_standard_error():
    from kvbench.analysis.fit import fit_latency

    # Latency does not depend on length: b ~ 0, and k could be anything.
    points = [(n, 1.0 + 0.001 * i) for n in (16, 32, 64, 128, 256) for i in range(3)]
    fit = fit_latency(points, "cached")
    assert fit.scale_s < 1e-6
    assert fit.exponent_stderr is None or fit.exponent_stderr > 0.1, (fit.exponent, fit.exponent_stderr)


# --- 10. the warmups-only estimate still counts generations of cells that ended -------------------------


def test_time_left_from_warmups_forgets_a_failed_cells_generations():
    now = [0.0]
    gen = {c: Planned("cached", 10, 8, "m", c) for c in ("c1", "c2")}
    left = TimeLeft([gen["c1"], gen["c1"], gen["c2"], gen["c2"]], clock=lambda: now[0])
    left.cell_started("c1")
    now[0] = 10
    left.finished(gen["c1"], None)  # its warmup
    left.cell_finished("c1")  # then it failed: its measured generation will not run
    left.cell_started("c2")
    now[0] = 20
    left.finished(gen["c2"], None)
    # One generation is left, at 10 s a generation so far; not two.
    assert left.seconds_left() <= 15


# --- a run recorded twice would count twice: the standard error shrinks on nothing measured --------------


@pytest.mark.parametrize("command", ["show", "compare"])
def test_a_run_recorded_twice_is_refused_in_one_line(tmp_path, command):
    data = copy.deepcopy(GOLDEN)
    data["runs"] = data["runs"] + [data["runs"][0]]
    path = write(tmp_path, data)
    args = [command, path] if command == "show" else [command, ROOT / "tests/data/golden.json", path]
    result = invoke(*args)
    one_line_error(result)
    assert "recorded twice" in result.output
