"""What a hostile (or unlucky) user does: every case ends in its exit code and one line, runs no code it was
not allowed to, and leaves every file that was there before byte for byte as it was."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.core.errors import KvbenchError
from kvbench.runner.planning import default_output
from kvbench.storage.document import read_result
from kvbench.storage.writer import write_result
from tests.conftest import make_result

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden.json"
# In this process (--isolation none), where the tests' fakes apply.
QUICK = ["-n", "2", "-r", "1", "-w", "0", "-d", "cpu", "--isolation", "none"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under a directory (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def folders(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_dir()}


class Untouched:
    """Snapshot a directory now; `check()` asserts every file is byte-identical, none was added and no
    folder was left behind."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files, self.folders = snapshot(directory), folders(directory)

    def check(self) -> None:
        assert snapshot(self.directory) == self.files
        assert folders(self.directory) == self.folders


# Progress, not messages: the plain lines a log gets ("[3/6] cached 1/2: ...", "cell 2/3: ...") and the
# live display's (done/total elapsed).
PROGRESS = re.compile(r"^\[\d+/\d+\] |^cell .*: |\d+/\d+ +\d+:\d\d:\d\d")


def ctrl_c_as_a_shell_leaves_it() -> None:
    """SIGINT at its default and unblocked, as a shell starts a command. A test process may have inherited it
    ignored (a test worker that started Ray, say), and an ignored SIGINT stays ignored through exec: Python
    then installs no KeyboardInterrupt, and the run would never hear the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for_first_run(process: subprocess.Popen, output: Path) -> None:
    """Until a measuring run has saved its first run to `output`; its stderr's end if it never does."""
    deadline = time.monotonic() + 300  # a safety net for a stuck start, never a speed check
    while process.poll() is None and time.monotonic() < deadline:
        if output.exists() and read_result(output).runs:
            break
        time.sleep(0.1)
    assert output.exists() and read_result(output).runs, process.communicate(timeout=60)[1][-2000:]


def assert_one_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1, result.stderr
    if code == 2:
        assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A real, complete results file of a one-cell tiny-gpt2 run (with its CSV)."""
    path = tmp_path_factory.mktemp("measured") / "run.json"
    result = invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", path)
    assert result.exit_code == 0, result.output
    return path


def copy_results(source: Path, directory: Path) -> Path:
    for suffix in (".json", ".csv"):
        shutil.copy(source.with_suffix(suffix), directory / f"run{suffix}")
    return directory / "run.json"


def copy_model(source: Path, directory: Path) -> Path:
    target = directory / "model"
    shutil.copytree(source, target)
    return target


# --- Data loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["foreign", "results", "model-config", "csv-only"])
def test_output_holding_something_else_is_never_replaced(content, tmp_path, tiny_gpt2_dir):
    if content == "foreign":
        output = tmp_path / "data.json"
        output.write_text('{"my": "data"}')
    elif content == "results":
        output = tmp_path / "earlier.json"
        write_result(make_result(), output)
    elif content == "model-config":
        output = copy_model(tiny_gpt2_dir, tmp_path) / "config.json"
    else:
        output = tmp_path / "data.json"
        (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    untouched = Untouched(tmp_path)
    shown = "data.csv" if content == "csv-only" else output.name
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output), 2, shown, "already exists", "--force")
    untouched.check()


def test_force_replaces_the_output(tmp_path):
    output = tmp_path / "data.json"
    output.write_text('{"my": "data"}')
    assert invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output, "--force").exit_code == 0
    assert read_result(output).complete


def test_nothing_is_written_until_every_check_passed(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    untouched = Untouched(tmp_path)
    too_long = ["-m", tiny_gpt2_dir, "-n", "100", "-d", "cpu"]
    assert_one_line(invoke("run", *too_long, "-o", "out/deeper/r.json"), 2, "exceeds its context")
    assert_one_line(invoke("run", *too_long), 2, "exceeds its context")  # the default results/ folder
    untouched.check()


@pytest.mark.parametrize(
    "change, fragment",
    [
        (["-m", "tiny-llama"], "model=['tiny-gpt2']"),
        (["-n", "3"], "max_new_tokens=[2]"),
        (["--dtype", "float16"], "dtype=['auto']"),
        (["--trust-remote-code"], "trust_remote_code=False"),
    ],
)
def test_resume_refuses_another_experiment_naming_what_differs(measured, tmp_path, change, fragment):
    output = copy_results(measured, tmp_path)
    untouched = Untouched(tmp_path)
    args = {"-m": "tiny-gpt2", "-n": "2"}
    for flag, value in zip(change[::2], change[1::2]):
        args[flag] = value
    base = [word for pair in args.items() for word in pair] + ["-r", "1", "-w", "0", "-d", "cpu"]
    extra = [c for c in change if c.startswith("--trust")]
    assert_one_line(invoke("run", *base, *extra, "-o", output, "--resume"), 2, "--resume", fragment)
    untouched.check()


def test_resume_refuses_a_file_measured_on_other_hardware(measured, tmp_path):
    output = copy_results(measured, tmp_path)
    data = json.loads(output.read_text())
    data["environment"]["device_name"] = "Another CPU"  # made with device = "auto" on another machine
    output.write_text(json.dumps(data))
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output, "--resume"), 2, "device_name", "'Another CPU'")
    untouched.check()


def test_resume_without_output_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "--resume"), 2, "--resume needs --output")
    untouched.check()


@pytest.mark.parametrize("how", ["live-pid", "flock"])
def test_a_second_run_on_the_same_output_is_refused(tmp_path, how):
    from kvbench.storage.lock import OutputLock

    output = tmp_path / "r.json"
    lock = OutputLock(output)
    if how == "live-pid":
        lock.acquire()  # this process: alive
    else:
        # The lock held by a process whose pid the file does not name: only flock can tell.
        import fcntl

        lock.path.write_text(f"{_dead_pid()}\n")
        fd = os.open(lock.path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        untouched = Untouched(tmp_path)
        assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output, "--force"), 2, "being written by another")
        untouched.check()
    finally:
        if how == "live-pid":
            lock.release()
        else:
            os.close(fd)


def test_default_output_names_are_unique_and_never_hidden(tmp_path, tiny_gpt2_dir, monkeypatch):
    assert default_output(["gpt2"]) != default_output(["gpt2"])
    model = copy_model(tiny_gpt2_dir, tmp_path)
    monkeypatch.chdir(model)
    assert default_output(["."]).name.startswith("model-")
    assert default_output([""]).name.startswith("model-")  # nothing to name it by: never ".json"


def _dead_pid() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


def test_a_killed_runs_temporary_files_are_cleared(tmp_path):
    output = tmp_path / "r.json"
    stale = [tmp_path / f".r.json.{_dead_pid()}.tmp", tmp_path / f".r.csv.{_dead_pid()}.tmp"]
    live = tmp_path / f".r.json.{os.getppid()}.tmp"  # a process that still exists: not ours to remove
    for path in [*stale, live]:
        path.write_text("half a file")
    assert invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output).exit_code == 0
    assert not any(path.exists() for path in stale) and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "r.csv", "r.json"])  # no lock left


# --- Foreign code and files --------------------------------------------------------------------------


def test_custom_model_code_never_runs_or_prompts_without_the_flag(tiny_gpt2_dir, tmp_path):
    model = copy_model(tiny_gpt2_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    untouched = Untouched(tmp_path)
    # Empty stdin: a prompt would read it and fail differently.
    result = CliRunner().invoke(app, ["run", "-m", str(model), *QUICK, "-o", str(tmp_path / "r.json")], input="")
    assert_one_line(result, 2, "ships its own Python code", "--trust-remote-code")
    assert not marker.exists()
    untouched.check()


def test_trust_remote_code_is_off_and_recorded(measured):
    assert json.loads(measured.read_text())["config"]["trust_remote_code"] is False


def test_revision_and_trust_are_passed_to_the_hub(monkeypatch):
    import transformers

    from kvbench.measure import models

    seen = {}

    def from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KvbenchError, match="not found"):
        models.prepare_model("someone/model", "pretrained", revision="v1.0")
    assert seen["revision"] == "v1.0" and seen["trust_remote_code"] is False


class _RunsCode:
    """Unpickling this would run a shell command: a stand-in for a malicious checkpoint."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tiny_gpt2_dir, tmp_path):
    import torch

    model = copy_model(tiny_gpt2_dir, tmp_path)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _RunsCode.marker = str(marker)
    torch.save({"transformer.wte.weight": _RunsCode()}, model / "pytorch_model.bin")  # saving runs nothing
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json"), 2, "cannot be loaded safely", "safetensors")
    assert not marker.exists()
    untouched.check()


# --- Crashes that are one line, and keep the file valid ----------------------------------------------


def test_disk_full_is_one_line_and_the_file_stays_whole(measured, tmp_path, monkeypatch):
    import kvbench.storage.writer as writer

    output = copy_results(measured, tmp_path)
    untouched = Untouched(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.os, "fsync", full)
    result = invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output, "--resume")
    assert_one_line(result, 2, "No space left on device", "--resume")
    untouched.check()  # the earlier save, whole; no temporary file left


def test_disk_full_midway_leaves_the_last_save_valid(tmp_path, monkeypatch):
    """A run that measured something keeps it, whatever stopped it: the file is never removed then."""
    import kvbench.storage.writer as writer

    real, calls = os.fsync, []

    def fills_up(fd):
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(writer.os, "fsync", fills_up)
    output = tmp_path / "r.json"
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "-r", "3", "-o", output), 2, "No space left")
    assert read_result(output).complete is False and read_result(output).runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize(
    "toml, fragment",
    [
        (b'model = "tiny-gpt2"\nprompt = "caf\xe9"\n', "not UTF-8"),
        (b"max-new-tokens = 2\nmax_new_tokens = 3\n", "'max-new-tokens' and 'max_new_tokens' set the same"),
    ],
)
def test_bad_experiment_files_are_one_line(tmp_path, toml, fragment):
    config = tmp_path / "exp.toml"
    config.write_bytes(toml)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("run", "--config", config, "-o", tmp_path / "r.json"), 2, fragment)
    untouched.check()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", str(2**64)], "'seed' must be at most"),
        (["-m", ""], "'model' name is empty"),
    ],
)
def test_impossible_values_are_one_line(tmp_path, args, fragment):
    untouched = Untouched(tmp_path)
    base = ["-m", "tiny-gpt2"] if "-m" not in args else []
    assert_one_line(invoke("run", *base, *QUICK, *args, "-o", tmp_path / "r.json"), 2, fragment)
    untouched.check()


def test_prompt_too_long_even_for_one_new_token(tiny_gpt2_dir, tmp_path):
    untouched = Untouched(tmp_path)
    line = assert_one_line(
        invoke("run", "-m", tiny_gpt2_dir, "--prompt-tokens", "64", "-n", "1", "-d", "cpu", "-o", tmp_path / "r.json"),
        2,
        "prompt is too long",
        "--prompt-tokens",
    )
    assert "--max-new-tokens" not in line
    untouched.check()


def test_output_that_cannot_encode_the_table_degrades_to_ascii(tmp_path):
    environment = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "show", str(GOLDEN)],
        capture_output=True,
        text=True,
        encoding="ascii",
        errors="strict",
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert "with KV caching:" in completed.stdout and "+--" in completed.stdout  # an ASCII table


def test_sigterm_while_loading_exits_130_with_a_message(tmp_path):
    work, loading = tmp_path / "work", tmp_path / "loading"
    work.mkdir()
    # Loading is held open until the signal comes: the test waits for the run to be inside it, not a guess
    # at how long loading takes on this machine.
    code = (
        "import pathlib, sys, time\n"
        "import kvbench.measure.models\n"
        "def held_loading(*args, **kwargs):\n"
        f"    pathlib.Path({str(loading)!r}).touch()\n"
        "    time.sleep(600)\n"
        "kvbench.measure.models.prepare_model = held_loading\n"
        "from kvbench.cli import main\n"
        f"sys.argv = ['kvbench', 'run', '-m', 'tiny-gpt2', *{QUICK!r}, '-o', 'r.json']\n"
        "main()\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=work,
    )
    deadline = time.monotonic() + 300  # a safety net for a stuck start, never a speed check
    while not loading.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loading.exists(), process.stderr.read() if process.poll() is not None else "loading never began"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted" in stderr and "while loading" in stderr and "Traceback" not in stderr
    assert list(work.iterdir()) == []


def test_the_interrupt_message_gives_the_command_that_resumes(tmp_path, monkeypatch):
    import kvbench.measure.measurer as measurer

    def interrupted(self, job, emit):
        raise KeyboardInterrupt

    monkeypatch.setattr(measurer.Measurer, "measure", interrupted)
    output = tmp_path / "r.json"
    result = invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output)
    assert result.exit_code == 130
    assert (
        "kvbench run --model tiny-gpt2 --max-new-tokens 2 --runs 1 --warmup 0 --device cpu --isolation none"
        f" --output {output} --resume" in result.stderr
    )


PEAKS = {
    "device": "cpu",
    "copy_bandwidth_bytes_per_s": 1.6e10,
    "copy_buffer_bytes": 2**26,
    "matmul_flops_per_s": 7.7e10,
    "matmul_dtype": "float32",
    "matmul_size": 1024,
    "seconds_spent_s": 2.3,
}


def test_a_newer_files_extra_cost_fields_are_left_aside(tmp_path):
    data = json.loads(GOLDEN.read_text())
    data["environment"]["device_peaks"] = PEAKS
    for cell in data["cells"]:
        cell["model"]["cost"]["sparsity"] = 0.5  # a field some later kvbench might add
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(data))
    result = invoke("show", path)
    assert result.exit_code == 0, result.output
    assert "roofline (float32 peaks): cached at" in result.stdout


@pytest.mark.parametrize(
    "damage, field",
    [
        (lambda d: d["cells"][0].pop("settings"), "cells[0].settings is missing"),
        (lambda d: d["runs"][0].update(latency_s="1.2"), "runs[0].latency_s must be a number"),
        (lambda d: d.update(unmeasured=["vram"]), "unmeasured must be an object"),
        (lambda d: d["config"].update(modes="cached"), "config.modes must be a list"),
        (lambda d: d["cells"][0].update(status="done"), "cells[0].status"),
        (lambda d: d["runs"][1].update(mode="warm"), "runs[1].mode"),
        (lambda d: d["runs"][2].update(cell="elsewhere"), "runs[2].cell"),
        (lambda d: d["runs"][0].update(token_times_s=[0.1, "x"]), "runs[0].token_times_s[1] must be a number"),
        (lambda d: d["cells"][0]["settings"].update(batch_size=True), "cells[0].settings.batch_size must be an integer"),
        (lambda d: d.update(environment=[]), "environment must be an object"),
        (lambda d: d.pop("runs"), "runs is missing"),
        # What show computes the roofline from: a zero would divide, text would not multiply.
        (
            lambda d: d["environment"].update(device_peaks={**PEAKS, "matmul_flops_per_s": 0}),
            "environment.device_peaks.matmul_flops_per_s must be a finite positive number",
        ),
        (
            lambda d: d["environment"].update(datasheet_peaks={"name": "T4", "memory_bandwidth_bytes_per_s": 3e11}),
            "environment.datasheet_peaks.fp16_tensor_flops_per_s is missing",
        ),
        (lambda d: d["cells"][0]["model"]["cost"].update(layers="12"), "cells[0].model.cost.layers must be an integer"),
        (lambda d: d["cells"][0]["model"]["cost"].update(hidden=-64), "cells[0].model.cost.hidden must be a finite positive"),
        (lambda d: d["cells"][0]["model"]["cost"].update(head_parameters=10**9), "add up to more than parameters"),
        (lambda d: d["runs"][0].update(peak_rss_bytes=10**400), "runs[0].peak_rss_bytes is an integer too large"),
        (lambda d: d["runs"][0].update(latency_s=10**400), "runs[0].latency_s is an integer too large"),
    ],
)
def test_results_files_with_wrong_types_name_the_first_bad_field(tmp_path, damage, field):
    data = json.loads(GOLDEN.read_text())
    damage(data)
    path, other = tmp_path / "bad.json", tmp_path / "good.json"
    path.write_text(json.dumps(data))
    shutil.copy(GOLDEN, other)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("show", path), 2, "damaged", field)
    assert_one_line(invoke("compare", other, path), 2, "damaged", field)
    untouched.check()


def _cpu_out_of_memory(self, mode):
    import torch

    torch.empty(1 << 60, dtype=torch.uint8)  # torch's own CPU allocator error, as a real OOM gives


def test_cpu_out_of_memory_is_one_line_for_a_single_cell(tmp_path, monkeypatch):
    import kvbench.measure.generation as measure

    monkeypatch.setattr(measure.Generation, "__call__", _cpu_out_of_memory)
    output = tmp_path / "r.json"
    assert_one_line(invoke("run", "-m", "tiny-gpt2", *QUICK, "-o", output), 2, "out of memory", "--batch-size")
    assert read_result(output).cells[0].status == "oom"


def test_cpu_out_of_memory_is_recorded_as_oom_in_a_sweep(tiny_llama_dir, monkeypatch):
    import kvbench.measure.generation as measure
    import kvbench.runner.benchmark as runner
    from tests.conftest import tiny_config

    real = measure.Generation.__call__

    def big_batch_fails(self, mode):
        return _cpu_out_of_memory(self, mode) if self.cell.batch_size == 2 else real(self, mode)

    monkeypatch.setattr(measure.Generation, "__call__", big_batch_fails)
    result = runner.run_benchmark(tiny_config(tiny_llama_dir, batch_size=[1, 2], runs=1))
    assert [cell.status for cell in result.cells] == ["measured", "oom"]


def test_damaged_weights_are_found_before_anything_is_measured(tiny_gpt2_dir, tmp_path):
    model = copy_model(tiny_gpt2_dir, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download cut short
    untouched = Untouched(tmp_path)
    output = tmp_path / "r.json"
    # The damaged model is the sweep's second: found before the first is measured.
    assert_one_line(invoke("run", "-m", "tiny-gpt2", "-m", model, *QUICK, "-o", output), 2, "model.safetensors", "damaged")
    untouched.check()


def _mismatched(tiny_gpt2_dir: Path, tmp_path: Path) -> Path:
    """Weights whose shapes do not fit the config: readable files, a failure only loading can show."""
    model = copy_model(tiny_gpt2_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["n_embd"] = 16
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("failure", ["shapes", "download"])
def test_a_model_failing_at_load_time_is_that_cells_error_and_the_sweep_goes_on(tiny_gpt2_dir, tmp_path, monkeypatch, failure):
    if failure == "shapes":
        model, expected = _mismatched(tiny_gpt2_dir, tmp_path), "its weights do not fit the architecture its config gives"
    else:
        # The files were fine when checked; reading them fails only now (a network drive that went away).
        import transformers

        model, expected = copy_model(tiny_gpt2_dir, tmp_path), "cannot load weights"

        def unreadable(*args, **kwargs):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", unreadable)
    output = tmp_path / "r.json"
    result = invoke("run", "-m", model, "-m", "tiny-gpt2", *QUICK, "-o", output)
    assert result.exit_code == 1 and "Traceback" not in result.output
    cells = read_result(output).cells
    assert [cell.status for cell in cells] == ["error", "measured"]
    assert expected in cells[0].reason


def test_a_single_model_failing_at_load_time_is_one_line(tiny_gpt2_dir, tmp_path):
    model = _mismatched(tiny_gpt2_dir, tmp_path)
    assert_one_line(invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json"), 2, "cannot load the model")


# --- Smaller -----------------------------------------------------------------------------------------


def test_model_dot_names_its_results_by_the_directory(tiny_gpt2_dir, tmp_path, monkeypatch):
    model = copy_model(tiny_gpt2_dir, tmp_path)
    monkeypatch.chdir(model)
    assert invoke("run", "-m", ".", *QUICK).exit_code == 0
    (written,) = (model / "results").glob("*.json")
    assert written.name.startswith("model-")


def test_a_failed_plot_leaves_no_folder(tmp_path):
    path = tmp_path / "empty.json"
    result = make_result()
    result.runs = []
    write_result(result, path)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("plot", path), 2, "no measured runs")
    assert_one_line(invoke("plot", path, "--out-dir", tmp_path / "out" / "figures"), 2, "no measured runs")
    untouched.check()


def test_comparing_a_file_with_itself_is_refused(tmp_path):
    path = tmp_path / "a.json"
    write_result(make_result(), path)
    untouched = Untouched(tmp_path)
    assert_one_line(invoke("compare", path, path), 2, "given twice")
    assert_one_line(invoke("compare", tmp_path, path), 2, "given twice")
    untouched.check()


# --- Packaging ---------------------------------------------------------------------------------------


def test_the_wheel_runs_a_shipped_model_from_another_directory(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "kvbench", source / "kvbench", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True, timeout=300
    )
    (wheel,) = (tmp_path / "dist").glob("kvbench-*.whl")
    # The trained model travels whole: weights, tokenizer and the record of its training.
    shipped = set(zipfile.ZipFile(wheel).namelist())
    trained = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json")
    assert {f"kvbench/shipped_models/tiny-milton/{name}" for name in trained} <= shipped
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "-m", "tiny-gpt2", *QUICK, "--no-device-peaks", "-o", "r.json"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=elsewhere,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    data = json.loads((elsewhere / "r.json").read_text())
    assert str(tmp_path / "site") in data["cells"][0]["model"]["source"]  # the wheel's own shipped config
