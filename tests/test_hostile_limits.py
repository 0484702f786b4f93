"""Text in a results file is held to limits far beyond any real value, when the file is read: a model name
of megabytes or notes of a hundred megabytes once kept `show`, `compare` and `plot` drawing for minutes.
The command line holds what a run writes to the same limits, and a key given twice is refused, not read as
whichever came last."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.model.cells import Cell
from kvbench.model.settings import MOST_NAME_CHARACTERS
from kvbench.runner.assembly import MOST_REASON_CHARACTERS
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result
from kvbench.storage.validation import MOST_TEXT_CHARACTERS
from tests.conftest import tiny_config
from tests.test_hostile import assert_one_line

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_PATH = ROOT / "tests" / "data" / "golden.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(tmp_path: Path, data: dict, name: str = "hostile.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def with_model_name(name: str) -> dict:
    """The golden file with its model renamed everywhere it is named, its cells' ids and runs to match."""
    data = copy.deepcopy(GOLDEN)
    data["config"]["model"] = [name]
    renamed = {}
    for cell in data["cells"]:
        cell["settings"]["model"] = name
        renamed[cell["id"]] = cell["id"] = Cell(**cell["settings"]).id
    for run in data["runs"]:
        run["cell"] = renamed[run["cell"]]
    return data


def read_by(command: str, path: Path, tmp_path: Path):
    if command == "show":
        return invoke("show", path)
    if command == "compare":
        return invoke("compare", GOLDEN_PATH, path)
    return invoke("plot", path, "--out-dir", tmp_path / "plots")


# --- Fields shown to people ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "compare", "plot"])
def test_a_model_name_longer_than_any_name_is_refused_when_read(tmp_path, command):
    path = write(tmp_path, with_model_name("m" * (MOST_NAME_CHARACTERS + 1)))
    line = assert_one_line(read_by(command, path, tmp_path), 2, "config.model[0]", f"{MOST_NAME_CHARACTERS:,}")
    assert len(line) < 400


def test_a_model_name_as_long_as_a_name_may_be_is_shown(tmp_path):
    result = invoke("show", write(tmp_path, with_model_name("m" * MOST_NAME_CHARACTERS)))
    assert result.exit_code == 0, result.output


def test_a_cells_model_name_is_held_to_the_same_limit(tmp_path):
    data = with_model_name("m" * (MOST_NAME_CHARACTERS + 1))
    data["config"]["model"] = ["tiny-gpt2"]
    assert_one_line(invoke("show", write(tmp_path, data)), 2, "cells[0].settings.model")


@pytest.mark.parametrize("command", ["show", "compare", "plot"])
def test_notes_longer_than_text_may_be_are_refused_when_read(tmp_path, command):
    data = copy.deepcopy(GOLDEN)
    data["notes"] = ["x " * (MOST_TEXT_CHARACTERS // 2) + "!"]
    result = read_by(command, write(tmp_path, data), tmp_path)
    assert_one_line(result, 2, "notes[0]", f"{MOST_TEXT_CHARACTERS + 1:,} characters long")


@pytest.mark.parametrize(
    "place",
    ["reason", "environment", "unmeasured-key", "ran_on"],
)
def test_any_text_shown_is_held_to_the_limit(tmp_path, place):
    data = copy.deepcopy(GOLDEN)
    text = "y" * (MOST_TEXT_CHARACTERS + 1)
    if place == "reason":
        data["cells"][0]["reason"] = text
        where = "cells[0].reason"
    elif place == "environment":
        data["environment"]["device_name"] = text
        where = "environment.device_name"
    elif place == "unmeasured-key":
        data["unmeasured"][text] = "why"
        where = "a key of unmeasured"
    else:
        data["cells"][1]["ran_on"] = {"host": text}
        where = "cells[1].ran_on.host"
    assert_one_line(invoke("show", write(tmp_path, data)), 2, where)


def test_the_prompt_and_generated_text_are_as_long_as_they_were(tmp_path):
    """A prompt may be a book (an experiment file takes 16 MiB) and a generation a million tokens: read whole,
    and compare shows enough of a differing prompt to tell, not all of it."""
    data = copy.deepcopy(GOLDEN)
    prompt = "p" * (MOST_TEXT_CHARACTERS * 2)
    data["config"]["prompt"] = prompt
    data["command"] = f"kvbench run --prompt {prompt}"
    data["cells"][0]["generated_text"] = {"cached": "g" * (MOST_TEXT_CHARACTERS * 2)}
    path = write(tmp_path, data)
    assert read_result(path).config["prompt"] == prompt
    assert invoke("show", path).exit_code == 0
    result = invoke("compare", GOLDEN_PATH, path)
    assert result.exit_code == 0, result.output
    assert "'prompt' differs" in result.output and "more characters" in result.output
    assert len(result.output) < MOST_TEXT_CHARACTERS // 4  # the prompts whole would be 200,000 characters


def test_the_command_line_refuses_a_name_no_file_could_hold(tmp_path):
    result = invoke("run", "-m", "m" * (MOST_NAME_CHARACTERS + 1), "-n", "2", "-r", "1", "--dry-run")
    assert_one_line(result, 2, "'model'", f"{MOST_NAME_CHARACTERS:,}")


def test_an_error_of_megabytes_is_recorded_cut_short(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A failure's reason is its error's message: one of megabytes once made every save after it fail (the
    file would not read back); it is recorded cut short, and the sweep goes on."""
    from kvbench.measure import measurer

    prepare = measurer.prepare_generation

    def failing_at_four_tokens(loaded, cell, *args, **kwargs):
        if cell.max_new_tokens == 4:
            raise RuntimeError("an error of megabytes: " + "e" * 2_000_000)
        return prepare(loaded, cell, *args, **kwargs)

    monkeypatch.setattr(measurer, "prepare_generation", failing_at_four_tokens)
    path = tmp_path / "r.json"
    run_benchmark(tiny_config(tiny_gpt2_dir, max_new_tokens=[4, 6], runs=1), output=path)
    stored = read_result(path)
    assert [cell.status for cell in stored.cells] == ["error", "measured"]
    reason = stored.cells[0].reason
    assert reason.startswith("RuntimeError: an error of megabytes: eee") and "more characters" in reason
    assert MOST_REASON_CHARACTERS < len(reason) < MOST_REASON_CHARACTERS + 100


# --- Keys given twice ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "compare"])
def test_a_key_given_twice_is_refused(tmp_path, command):
    # Python's JSON reader keeps the last: this file would read as incomplete, and its first value vanish.
    text = GOLDEN_PATH.read_text().replace('"complete": true', '"complete": true, "complete": false', 1)
    assert '"complete": false' in text
    path = tmp_path / "twice.json"
    path.write_text(text)
    args = ["show", path] if command == "show" else ["compare", GOLDEN_PATH, path]
    assert_one_line(invoke(*args), 2, "'complete' appears twice")


def test_a_key_given_twice_deep_inside_is_refused(tmp_path):
    data = copy.deepcopy(GOLDEN)
    text = json.dumps(data).replace('"latency_s": ', '"latency_s": 9.0, "latency_s": ', 1)
    path = tmp_path / "twice.json"
    path.write_text(text)
    assert_one_line(invoke("show", path), 2, "'latency_s' appears twice")
