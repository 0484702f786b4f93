"""Every JSON document kvbench prints or writes comes from one writer (kvbench.core.jsontext): the same key
order, indentation and text, and strict JSON, a number that is not finite written as null."""

import json
import math

import pytest
from typer.testing import CliRunner

import kvbench.storage.document
from kvbench.cli import app
from kvbench.core.jsontext import json_text
from kvbench.runner.gate import merge_halves
from kvbench.storage.writer import write_result
from tests.conftest import make_result

runner = CliRunner()
# Text a plain json.dumps would write otherwise: escaped to ASCII.
PROMPT = "Qu'est-ce qu'un cache ± naïf ?"
TINY_RUN = ("run", "-m", "tiny-gpt2", "--weights", "random", "-n", "4", "-r", "1", "-w", "0", "--device", "cpu")
HERE = ("--isolation", "none", "--prompt", PROMPT)


def strict(text: str):
    """The document, read as strict JSON: NaN and Infinity refused."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_written_by_the_one_writer(text: str) -> None:
    assert text == json_text(strict(text))


def test_numbers_that_are_not_finite_become_null_anywhere_in_a_document():
    document = {"z": math.nan, "a": [1.5, math.inf, {"b": -math.inf}], "t": (2, math.nan), "ok": 0.25}
    text = json_text(document)
    assert strict(text) == {"z": None, "a": [1.5, None, {"b": None}], "t": [2, None], "ok": 0.25}
    assert list(strict(text)) == ["z", "a", "t", "ok"]  # the order it was built in, not sorted
    assert text.startswith('{\n  "z": null,') and text.endswith("}\n")


def test_text_is_kept_and_controls_a_terminal_acts_on_are_escaped():
    text = json_text({"name": "± naïf \x9b31m"})
    assert "± naïf" in text and "\x9b" not in text and strict(text)["name"] == "± naïf \x9b31m"


def test_run_json_is_the_one_writers_even_with_a_figure_that_is_not_a_number(monkeypatch):
    to_dict = kvbench.storage.document.to_dict

    def with_a_nan(result, *args, **kwargs):
        document = to_dict(result, *args, **kwargs)
        document["runs"][0]["energy_j"] = math.nan  # as a broken energy counter could give
        return document

    monkeypatch.setattr(kvbench.storage.document, "to_dict", with_a_nan)
    result = runner.invoke(app, [*TINY_RUN, *HERE, "--json", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert_written_by_the_one_writer(result.stdout)
    document = strict(result.stdout)
    assert document["runs"][0]["energy_j"] is None and document["config"]["prompt"] == PROMPT


def test_the_dry_runs_plan_is_the_one_writers():
    result = runner.invoke(app, [*TINY_RUN, *HERE, "--dry-run", "--json", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert_written_by_the_one_writer(result.stdout)


@pytest.mark.parametrize("fmt", ["json", "benchmark-action"])
def test_compare_json_is_the_one_writers(tmp_path, fmt):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        write_result(make_result(prompt=PROMPT), path)
    result = runner.invoke(app, ["compare", *map(str, paths), "-f", fmt])
    assert result.exit_code == 0, result.output
    assert_written_by_the_one_writer(result.stdout)


def test_results_files_and_the_gates_joined_file_are_the_one_writers(tmp_path):
    first, second, joined = tmp_path / "first.json", tmp_path / "second.json", tmp_path / "joined.json"
    result = make_result(prompt=PROMPT)
    result.config["cell_timeout"] = math.inf
    write_result(result, first)
    write_result(make_result(prompt=PROMPT), second)
    assert_written_by_the_one_writer(first.read_text(encoding="utf-8"))
    assert strict(first.read_text(encoding="utf-8"))["config"]["cell_timeout"] is None
    merge_halves(first, second, joined)
    assert_written_by_the_one_writer(joined.read_text(encoding="utf-8"))
