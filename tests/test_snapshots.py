"""Every rendering of the stored results files in tests/data, snapshotted: a change in what kvbench
prints or exports shows up in review as a change to tests/__snapshots__ (update with
`pytest --snapshot-update` when the change is meant)."""

from pathlib import Path

import pytest
from rich.console import Console

from kvbench.analysis.derived import derived_sections
from kvbench.compare.formats import FORMATS
from kvbench.compare.judging import compare_results
from kvbench.render.report import render_result
from kvbench.storage.document import read_result, to_dict

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden.json"
RERUN = DATA / "golden-rerun.json"


def plain(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def in_repo(monkeypatch):
    """Paths relative to the repository, so exports that name files do not depend on the checkout."""
    monkeypatch.chdir(DATA.parent.parent)
    return Path("tests") / "data"


def test_golden_file_reads_back_unchanged():
    """The stored file, read and written again by this version, is the same document."""
    import json

    stored = json.loads(GOLDEN.read_text())
    result = read_result(GOLDEN)
    assert to_dict(result, derived_sections(result)) == stored


def test_show_snapshot(snapshot):
    assert plain(render_result(read_result(GOLDEN))) == snapshot


def test_show_snapshot_at_80_columns(snapshot):
    """A narrow terminal gets fewer columns, not columns cut to "…"."""
    assert plain(render_result(read_result(GOLDEN)), width=80) == snapshot


@pytest.mark.parametrize("name", sorted(path.name for path in (DATA.parent.parent / "results").glob("*.json")))
def test_every_committed_result_fits_80_columns_without_cutting_a_cell(name):
    shown = plain(render_result(read_result(DATA.parent.parent / "results" / name)), width=80)
    assert "…" not in shown
    assert max(map(len, shown.splitlines())) <= 80
    # The per-token column under its long or its compact heading, whichever the table had room for.
    assert "mean ± std (s)" in shown and ("ms/tok early→late" in shown or "ms/token early → late" in shown)


@pytest.mark.parametrize("fmt", [fmt for fmt in FORMATS if fmt != "table"])
def test_compare_export_snapshots(fmt, snapshot, in_repo):
    comparison = compare_results([in_repo / GOLDEN.name, in_repo / RERUN.name], threshold_pct=10)
    assert FORMATS[fmt].render(comparison) == snapshot


def test_compare_table_snapshot(snapshot, in_repo):
    comparison = compare_results([in_repo / GOLDEN.name, in_repo / RERUN.name], threshold_pct=10)
    assert plain(FORMATS["table"].render(comparison)) == snapshot


def test_compare_table_snapshot_at_80_columns(snapshot, in_repo):
    """Too narrow for the table without cutting a label: one measurement at a time, each value named."""
    comparison = compare_results([in_repo / GOLDEN.name, in_repo / RERUN.name], threshold_pct=10)
    assert plain(FORMATS["table"].render(comparison), width=80) == snapshot


@pytest.mark.parametrize("width", [80, 120, 200])
def test_comparing_the_committed_results_cuts_no_label(width):
    results = DATA.parent.parent / "results"
    for files in (
        [results / "gpt2-cpu-200tok-epyc-2core.json", results / "gpt2-cpu-200tok-epyc-2core-r2.json"],
        sorted(results.glob("*.json")),
    ):
        shown = plain(FORMATS["table"].render(compare_results(files, threshold_pct=5)), width=width)
        assert "…" not in shown
        assert "gpt2-cpu-200tok-epyc-2core-r2" in shown


def test_show_markdown_snapshot(snapshot):
    """`kvbench show --format markdown`: one run to paste into a pull request, every column of each cell."""
    from kvbench.render.markdown import result_markdown

    assert result_markdown(read_result(GOLDEN)) == snapshot


@pytest.mark.parametrize("width", [50, 80])
def test_a_cells_title_breaks_between_its_phrases(width):
    """ "+ 8 new tokens" was cut to "+ 8" and "new tokens" at 80 columns: a title breaks between phrases."""
    shown = plain(render_result(read_result(GOLDEN)), width=width)
    for phrase in ("tiny-gpt2", "RANDOM weights", "float32", "batch 1", "6 prompt (synthetic) + 8 new tokens"):
        assert any(phrase in line for line in shown.splitlines()), phrase
    assert max(map(len, shown.splitlines())) <= width
