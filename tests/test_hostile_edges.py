"""Hostile inputs at the edges: a user's files in the gate's folder, a --force or --resume that would lose
data, and failures of the machine rather than the user (a read-only or full disk, an address space too small
for torch, a signal while kvbench is still loading, a loop of links, a name that is not UTF-8, an immutable
file). Each ends in one line and its exit code, and leaves every file that was there byte for byte."""

from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from kvbench.core.errors import KvbenchError
from kvbench.core.limits import out_of_memory
from kvbench.core.version import newer_than_this
from kvbench.hardware import memory
from kvbench.launch.base import cell_jobs
from kvbench.launch.workers import WorkerProcess
from kvbench.model.cells import expand
from kvbench.model.events import Output, UserError
from kvbench.render.plot import plot_result
from kvbench.runner import gate
from kvbench.storage import writer
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result
from tests.conftest import make_result, tiny_config
from tests.test_hostile import (
    GOLDEN,
    QUICK,
    ROOT,
    Untouched,
    assert_one_line,
    copy_model,
    ctrl_c_as_a_shell_leaves_it,
    invoke,
)

FAST = [*QUICK, "--no-device-peaks"]


def kvbench_process(code: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`code` run in a fresh Python with this tree's kvbench first on its path."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300, **kwargs
    )


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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
@pytest.mark.parametrize(
    "arguments",
    [
        ["show", str(GOLDEN)],
        ["compare", str(GOLDEN), str(ROOT / "tests" / "data" / "golden-rerun.json"), "--format", "csv"],
        ["--version"],
        ["run", "-m", "tiny-gpt2", *FAST, "-o", "-"],
    ],
    ids=["show", "compare", "version", "run-json"],
)
def test_standard_output_on_a_full_device_is_one_line(arguments, tmp_path):
    with open("/dev/full", "w") as full:
        completed = subprocess.run(
            [sys.executable, "-m", "kvbench", *arguments],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=tmp_path,
            timeout=300,
        )
    lines = [line for line in completed.stderr.splitlines() if line.startswith(("Error", "Traceback", "Exception"))]
    assert completed.returncode == 2, completed.stderr
    assert lines == ["Error: cannot write to standard output (No space left on device); free space where it goes,"
                     " or send it elsewhere"], completed.stderr  # fmt: skip


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


# --- Tracebacks: the machine's limits ---------------------------------------------------------------


def test_failures_of_memory_are_named_with_the_limit():
    unmappable = ImportError("libtorch_cpu.so: failed to map segment from shared object")
    for error in (unmappable, MemoryError(), OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))):
        assert isinstance(out_of_memory(error), KvbenchError)
    for error in (ImportError("No module named 'torch'"), OSError(errno.ENOENT, "gone"), ValueError("x")):
        assert out_of_memory(error) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits as Linux keeps them")
def test_an_address_space_too_small_for_torch_is_one_line(tmp_path):
    """`ulimit -v` of 256 MiB: kvbench's command line loads (tens of MiB), torch's libraries cannot be mapped
    (hundreds)."""
    import resource

    limit = 256 * 2**20

    def small_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "-m", "tiny-gpt2", *FAST, "-o", "r.json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        timeout=300,
        preexec_fn=small_address_space,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
    assert "(ulimit -v 262144)" in completed.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_a_measuring_process_that_cannot_load_torch_says_why_in_one_line(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A measuring process under `ulimit -v` maps torch no better than its parent: it tells its first job
    why, rather than dying with a traceback its parent prints line by line."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libtorch_cpu.so: failed to map segment from shared object")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    config = tiny_config(tiny_gpt2_dir, isolation="process")
    worker = WorkerProcess()
    try:
        worker.wait_ready()
        events = list(worker.measure(cell_jobs(config, expand(config)[0], sweep=False)[0]))
    finally:
        worker.close()
    printed = [event.line for event in events if isinstance(event, Output)]
    assert "Traceback (most recent call last):" not in printed
    assert isinstance(events[-1], UserError) and "failed to map segment" in events[-1].message


def test_the_memory_sampler_ends_quietly_when_its_measured_process_is_gone(monkeypatch):
    """A --cell-timeout kills the measuring process while its sampler starts: the sampler finds
    /proc/PID/statm gone, and nobody left to tell. It used to die with a traceback the run relayed."""
    monkeypatch.setattr(memory.signal, "signal", lambda *args: None)  # the loop ignores SIGINT: not here
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for opener in (functools.partial(memory.open_rss_sampler, gone.pid), functools.partial(_ended_sampler, gone.pid)):
        ours, theirs = multiprocessing.Pipe()
        ours.close()  # the measuring process is gone
        memory._sampling_loop(theirs, opener, gone.pid, 0.01)


def _ended_sampler(pid: int) -> memory.RssSampler:
    """An RssSampler opened while its process lived, which has ended since."""
    sampler = memory.RssSampler(os.getpid())
    sampler._path = f"/proc/{pid}/statm"
    return sampler


# --- Tracebacks: starting --------------------------------------------------------------------------

# Sends this process `signal` as soon as `module` is first looked for: a signal that lands while kvbench is
# loading, at a known place rather than after a guessed delay.
SIGNAL_WHILE_LOADING = """
import os, signal, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.{signal})
        return None
sys.meta_path.insert(0, Hook())
sys.argv = ["kvbench", "show", {results!r}]
from kvbench.__main__ import main
main()
"""


@pytest.mark.parametrize("sent", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "module, said",
    [
        ("kvbench.cli.app", "Interrupted while kvbench was starting; nothing was done."),
        ("kvbench.render.report", "Interrupted. Nothing more was done."),
    ],
    ids=["loading-the-command-line", "loading-a-command"],
)
def test_a_signal_while_kvbench_is_loading_is_one_line(sent, module, said, tmp_path):
    script = SIGNAL_WHILE_LOADING.format(module=module, signal=sent, results=str(GOLDEN))
    completed = kvbench_process(script, tmp_path, preexec_fn=ctrl_c_as_a_shell_leaves_it)
    # Python may end a process that met a KeyboardInterrupt by the signal itself (a shell reads both as 130).
    assert completed.returncode in (130, -signal.SIGINT), completed.stderr
    assert completed.stderr.strip() == said, completed.stderr


def test_the_command_loads_nothing_before_its_guard(tmp_path):
    """What `kvbench` and `python -m kvbench` import before the guard is all a signal can land in unguarded."""
    completed = kvbench_process(
        "import sys, kvbench.__main__\n"
        "print(sorted(name for name in sys.modules if name.startswith(('kvbench', 'typer', 'rich', 'pandas'))))",
        tmp_path,
    )
    assert completed.stdout.split() == ["['kvbench',", "'kvbench.__main__',", "'kvbench.core',", "'kvbench.core.errors',",
                                        "'kvbench.core.version']"], completed.stderr  # fmt: skip


def test_the_package_still_gives_its_names():
    import kvbench

    assert kvbench.BenchConfig.__name__ == "BenchConfig" and callable(kvbench.run_benchmark)
    assert {"read_result", "BenchmarkResult"} <= set(dir(kvbench))
    with pytest.raises(AttributeError):
        kvbench.no_such_name  # noqa: B018


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
