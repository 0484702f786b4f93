"""Hostile inputs at the edges: a user's files in the gate's folder, a --force or --resume that would lose
data, and failures of the machine rather than the user (a read-only or full disk, an address space too small
for torch, a signal while kvbench is still loading, a loop of links, a name that is not UTF-8, an immutable
file). Each ends in one line and its exit code, and leaves every file that was there byte for byte."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from kvbench.core.errors import KvbenchError
from kvbench.core.version import newer_than_this
from kvbench.render.plot import plot_result
from kvbench.runner import gate
from kvbench.storage import writer
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result
from tests.conftest import make_result
from tests.test_hostile import GOLDEN, QUICK, ROOT, Untouched, assert_one_line, copy_model, invoke

FAST = [*QUICK, "--no-device-peaks"]


# --- Data loss -------------------------------------------------------------------------------------


def test_the_gate_refuses_an_out_folder_holding_the_users_own_files(tmp_path):
    """The issue's command: the config is missing, and the gate used to delete DIR/head.json and
    DIR/base.json and overwrite DIR/summary.md on its way to saying so."""
    head, out = tmp_path / "checkout", tmp_path / "DIR"
    head.mkdir()
    out.mkdir()
    for name, text in (("head.json", '{"mine": 1}'), ("base.json", '{"mine": 2}'), ("summary.md", "my notes\n")):
        (out / name).write_text(text)
    untouched = Untouched(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "gate", "--head", str(head), "--config", "nosuch.toml"]
        + ["--install", "pythonpath", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
    assert "holds files the gate would replace (base.json, head.json, summary.md)" in completed.stderr
    untouched.check()


def test_the_gate_marks_its_folder_and_takes_back_one_it_wrote_before(tmp_path):
    new, empty, earlier, others = (tmp_path / name for name in ("new/deeper", "empty", "earlier", "others"))
    empty.mkdir()
    earlier.mkdir()
    # A folder a gate wrote before folders were marked: its summary is the gate's.
    (earlier / "summary.md").write_text("### kvbench gate: passed\n")
    (earlier / "head.json").write_text("{}")
    others.mkdir()
    (others / "notes.txt").write_text("not the gate's, and not a name it writes")
    for folder in (new, empty, earlier, others):
        gate.claim_out_folder(folder)
        assert (folder / gate.OUT_MARK).is_file()
        gate.claim_out_folder(folder)  # marked: the gate's from now on
    assert (others / "notes.txt").read_text().startswith("not the gate's")


def test_force_onto_a_results_file_keeps_it_when_the_model_fails_to_load(tiny_gpt2_dir, tmp_path):
    """Nothing measured, nothing replaced: the run that was to replace x.json failed before its first
    generation, and x.json and x.csv stay as they were (they used to be deleted, with nothing in their place)."""
    model = copy_model(tiny_gpt2_dir, tmp_path / "models")
    config = json.loads((model / "config.json").read_text())
    config["n_embd"] = 16  # weights that do not fit: readable files, a failure only loading shows
    (model / "config.json").write_text(json.dumps(config))
    results = tmp_path / "results"
    results.mkdir()
    write_result(make_result(), results / "x.json")
    (results / "x.csv").write_text("cell,mode,run,latency_s\n")
    untouched = Untouched(results)
    assert_one_line(invoke("run", "-m", model, *FAST, "-o", results / "x.json", "--force"), 2, "cannot load the model")
    untouched.check()


def test_resume_refuses_a_file_a_newer_kvbench_wrote(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result(), path)
    document = json.loads(path.read_text())
    document["kvbench_version"] = "99.1.0"
    document["runs"][0]["a_later_figure"] = 1.5
    path.write_text(json.dumps(document))
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", path, "--resume")
    assert_one_line(result, 2, "written by kvbench 99.1.0, newer than this one", "use a new --output")
    untouched.check()


def test_resume_refuses_a_file_holding_fields_it_would_drop(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result(), path)
    document = json.loads(path.read_text())
    document["provenance"] = {"lab": "b"}
    document["cells"][0]["settings"]["a_later_axis"] = 3
    path.write_text(json.dumps(document))
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", path, "--resume")
    assert_one_line(result, 2, "fields this kvbench does not know (provenance, cells[].settings.a_later_axis)")
    untouched.check()


def test_which_versions_are_newer():
    assert newer_than_this("99.0") and newer_than_this("0.1.1.dev3") and newer_than_this("1")
    for version in ("0.1.0", "0.1", "0.0.9", "", None, 7, "unknown", "0.1.0rc1"):
        assert not newer_than_this(version), version


# --- Tracebacks: writing -------------------------------------------------------------------------


def test_plotting_onto_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    """On a read-only file system even removing the temporary that was never made fails (EROFS, not
    ENOENT): the error that matters is the one the figure met."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Figure, "savefig", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(KvbenchError, match="cannot write .*per-token.png \\(Read-only file system\\)"):
        plot_result(read_result(GOLDEN), tmp_path)


def test_an_output_name_that_is_not_utf8_is_refused_before_measuring(tmp_path):
    untouched = Untouched(tmp_path)
    name = os.fsdecode(b"run-\xff.json")
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *FAST, "-o", tmp_path / name), 2, "is not a UTF-8 name")
    untouched.check()


def _immutable(path: Path) -> bool:
    """chattr +i on `path`, where this user and file system allow it."""
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


class _ImmutableFile:
    """The os module as an immutable file at `path` meets it: opening it for writing and replacing it
    are refused with EPERM (for a test that cannot chattr +i)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _refuse(self, name: object) -> None:
        if Path(os.fsdecode(name)) == self.path:  # type: ignore[arg-type]
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(name))

    def open(self, name, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            self._refuse(name)
        return os.open(name, flags, *args, **kwargs)

    def replace(self, source, target):
        self._refuse(target)
        return os.replace(source, target)

    def __getattr__(self, name):
        return getattr(os, name)


def test_force_onto_an_immutable_file_is_refused_before_measuring(tmp_path, monkeypatch):
    path = tmp_path / "kept.json"
    write_result(make_result(), path)
    untouched = Untouched(tmp_path)
    made_immutable = _immutable(path)
    if not made_immutable:  # simulated: not root, or a file system without the attribute
        monkeypatch.setattr(writer, "os", _ImmutableFile(path))
    try:
        result = invoke("run", "-m", "tiny-gpt2", *FAST, "-o", path, "--force")
    finally:
        if made_immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    assert_one_line(result, 2, f"output {path} cannot be replaced", "immutable")
    untouched.check()


# --- Tracebacks: links ------------------------------------------------------------------------------


def test_a_loop_of_links_among_compares_inputs_is_one_line(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "real.json").write_bytes(GOLDEN.read_bytes())
    (folder / "loop.json").symlink_to("loop.json")
    other = tmp_path / "other.json"
    other.write_bytes(GOLDEN.read_bytes())
    untouched = Untouched(tmp_path)
    for arguments in ([other, folder / "loop.json"], [folder], [other, folder / "loop.json" / "inside.json"]):
        assert_one_line(invoke("compare", *arguments), 2, "a loop of symbolic links")
    named = invoke("compare", other, folder / "real.json", "--baseline", folder / "loop.json")
    assert_one_line(named, 2, "is not among the files compared")
    untouched.check()
