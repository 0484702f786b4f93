import json
import os
from pathlib import Path

import pytest

from kvbench.analysis.derived import derived_sections
from kvbench.core.errors import KvbenchError
from kvbench.model.records import SCHEMA_VERSION
from kvbench.storage.document import read_result, to_dict
from kvbench.storage.writer import ResultsFile, check_writable, write_result
from tests.conftest import make_result


def test_written_file_reads_back_the_same(tmp_path):
    result = make_result()
    path = tmp_path / "r.json"
    ResultsFile(path).save(result, with_csv=True)
    again = read_result(path)
    assert to_dict(again) == to_dict(result)
    assert (tmp_path / "r.csv").read_text().count("\n") == 1 + len(result.runs)


def test_a_stored_summary_is_never_trusted(tmp_path):
    path = tmp_path / "r.json"
    result = make_result({"cached": [1.0, 3.0]})
    write_result(result, path, derived_sections(result))
    data = json.loads(path.read_text())
    data["summary"][0]["mean_s"] = 99.0  # a summary that disagrees with its runs
    path.write_text(json.dumps(data))
    summary = read_result(path).summary[0]
    assert (summary.n, summary.mean_s, summary.min_s, summary.max_s) == (2, 2.0, 1.0, 3.0)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON"),
        ('{"hello": 1}', "is not a kvbench results file"),
        ("[1, 2]", "is not a kvbench results file"),
        ('{"format": "kvbench-results", "schema_version": 99}', "newer than this kvbench reads"),
        ('{"format": "kvbench-results", "schema_version": 1, "environment": {}}', "damaged"),
    ],
)
def test_bad_files_are_user_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KvbenchError) as error:
        read_result(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(KvbenchError, match="does not exist"):
        read_result(tmp_path / "absent.json")


def test_unwritable_output_is_refused_before_measuring(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KvbenchError, match="cannot write results"):
        check_writable(blocker / "sub" / "r.json")
    with pytest.raises(KvbenchError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(KvbenchError, match="must end in .json"):
        check_writable(tmp_path / "r.txt")


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    ResultsFile(path).save(make_result(), with_csv=True)
    before = path.read_text()

    def broken_dumps(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(KeyboardInterrupt):
        write_result(make_result({"cached": [9.0]}), path)
    assert path.read_text() == before
    assert {p.name for p in tmp_path.iterdir()} == {"r.json", "r.csv"}


def test_schema_version_is_written_first(tmp_path):
    write_result(make_result(), tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data)[:2] == ["format", "schema_version"]
    assert data["schema_version"] == SCHEMA_VERSION


COMMITTED = sorted((Path(__file__).resolve().parent.parent / "results").glob("*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_every_committed_results_file_reads_and_shows(path):
    """Files written by earlier versions (before prompt length was an axis, before costs were split) stay
    readable: what a README points to must still open."""
    from rich.console import Console

    from kvbench.render.report import render_result

    result = read_result(path)
    assert result.runs and result.cells
    Console(file=open(os.devnull, "w"), width=200).print(render_result(result))
