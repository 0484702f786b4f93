"""Hostile launching and loading: a Ray that does not import, a Ray cluster killed mid-run, a model that
prints to stdout, weights of another shape than their config, a config.json that is a link to a device, and
a model folder whose name is not UTF-8. Each is one line naming what happened, and what was measured stays."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kvbench.storage.document import read_result
from tests.faults import HERE as FAULTS
from tests.test_hostile import QUICK, Untouched, assert_one_line, copy_model, invoke, wait_for_first_run

ROOT = Path(__file__).resolve().parent.parent


# --- Ray -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["missing", "broken", "leftover"])
def test_a_dry_run_with_a_ray_that_does_not_import_is_one_line(how, tmp_path, monkeypatch):
    """A dry run says what a run would do: without a Ray that imports, it would refuse, so the plan does too."""
    if how == "missing":
        monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    elif how == "leftover":
        # No Ray installed, but a folder named ray on the path (what `pip uninstall ray` leaves, or the
        # user's own): it imports as an empty namespace package, and the plan was printed, exit 0.
        leftover = types.ModuleType("ray")
        leftover.__path__ = [str(tmp_path / "ray")]
        monkeypatch.setitem(sys.modules, "ray", leftover)
    else:
        # Installed, but its native core does not load (a wheel for another platform, a library missing).
        package = tmp_path / "site" / "ray"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text('raise ImportError("libray.so: cannot open shared object file")\n')
        monkeypatch.syspath_prepend(str(package.parent))
        monkeypatch.delitem(sys.modules, "ray", raising=False)
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", "-n", "2", "-r", "1", "--launcher", "ray", "--dry-run", "-o", tmp_path / "r.json")
    expected = {
        "missing": ["kvbench[ray]"],
        "broken": ["cannot import Ray (ImportError: libray.so"],
        "leftover": ["a folder with no Ray in it", str(tmp_path / "ray"), "kvbench[ray]"],
    }[how]
    assert_one_line(result, 2, *expected)
    untouched.check()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc: a local Ray instance's GCS, raylet, workers and theirs."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        frontier += children
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc")
def test_a_ray_cluster_killed_mid_run_stops_with_one_line_and_the_resume_command(tmp_path):
    """Ray's processes killed (the OOM killer, `ray stop --force`): Ray's client used to wait 60 s, then end the
    run with its own message and exit 1. The run stops with one kvbench line that says what happened and how
    to resume, and keeps the runs it measured."""
    pytest.importorskip("ray")
    output = tmp_path / "r.json"
    struck = tmp_path / "faults-struck"
    struck.mkdir()
    # The measuring process waits after its first measured run, so the cluster dies while the run measures.
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAULTS), str(ROOT)]),
        "KVBENCH_TEST_FAULT": "hang",
        "KVBENCH_TEST_FAULT_STRUCK": str(struck),
        "RAY_worker_niceness": "0",
    }
    arguments = [*QUICK[:-2], "-r", "2", "--launcher", "ray", "--no-device-peaks", "-o", str(output)]
    process = subprocess.Popen(
        [sys.executable, "-m", "kvbench", "run", "-m", "tiny-gpt2", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    ray_processes: list[int] = []
    try:
        wait_for_first_run(process, output)
        measured = len(read_result(output).runs)
        ray_processes = _descendants(process.pid)
        assert ray_processes
        for pid in ray_processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Ray's own client would end the run after 60 s: the safety net is well past it.
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "the Ray cluster stopped answering" in lines[0] and f"saved in {output}" in lines[0]
    assert "to measure the rest: kvbench run" in lines[0] and "--resume" in lines[0]
    kept = read_result(output)
    assert kept.complete is False and len(kept.runs) >= measured


def test_the_cluster_watch_stops_the_run_once_the_cluster_has_refused_for_a_while(monkeypatch):
    """The rule itself, on a scripted clock: a refusal is given CLUSTER_GONE_AFTER_S to pass (a GCS that
    restarts), an answer in between forgives it, and a refusal right after a task died stops the run at once."""
    from kvbench.core.errors import MeasuringStopped
    from kvbench.launch import ray_tasks

    now = [0.0]
    refusing = [False]
    monkeypatch.setattr(ray_tasks, "_cluster_addresses", lambda ray: [("GCS", "10.0.0.1:6379")])
    monkeypatch.setattr(ray_tasks, "_answers", lambda address, timeout_s: "Connection refused" if refusing[0] else None)
    watch = ray_tasks.ClusterWatch(ray=None, clock=lambda: now[0])

    def at(seconds: float) -> None:
        now[0] = seconds
        watch.check()

    at(0.0)
    refusing[0] = True
    at(1.0)
    at(ray_tasks.CLUSTER_GONE_AFTER_S)  # refused for less than the grace
    refusing[0] = False
    at(ray_tasks.CLUSTER_GONE_AFTER_S + 1)  # it answered: the count starts again
    refusing[0] = True
    at(ray_tasks.CLUSTER_GONE_AFTER_S + 2)
    with pytest.raises(MeasuringStopped, match=r"\(for 5 s, its GCS at 10\.0\.0\.1:6379: Connection refused\)"):
        at(2 * ray_tasks.CLUSTER_GONE_AFTER_S + 2)
    fresh = ray_tasks.ClusterWatch(ray=None, clock=lambda: now[0])
    with pytest.raises(MeasuringStopped, match="stopped answering while measuring \\(after a task died"):
        fresh.check(at_once=True)


# --- What a model prints ---------------------------------------------------------------------------


def test_a_model_that_prints_leaves_stdout_to_the_document(tiny_gpt2_dir, tmp_path):
    """`-o -` writes the document to stdout: a model's own code that prints, measured in this process, once
    wrote its lines into the JSON."""
    model = copy_model(tiny_gpt2_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom.Model"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(
        'print("importing the model\'s own code")\n'
        "from transformers import GPT2LMHeadModel\n\n\n"
        "class Model(GPT2LMHeadModel):\n"
        "    def forward(self, *args, **kwargs):\n"
        '        print("a forward pass")\n'
        "        return super().forward(*args, **kwargs)\n"
    )
    result = invoke("run", "-m", model, *QUICK, "--trust-remote-code", "-o", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["complete"] is True and len(document["runs"]) == 2
    assert "a forward pass" in result.stderr


# --- Model files -----------------------------------------------------------------------------------


def test_weights_of_another_shape_than_the_config_are_named(tiny_gpt2_dir, tmp_path):
    """transformers logs which weights differ (kvbench keeps its logs quiet) and raises an error that says
    "look at the above report": the line names the weight and both shapes itself."""
    model = copy_model(tiny_gpt2_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 80  # the weights were saved with 64
    (model / "config.json").write_text(json.dumps(config))
    result = invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json")
    line = assert_one_line(result, 2, "transformer.wte.weight is [64, 32] in the weights, [80, 32] in the model")
    assert "report" not in line and "--weights random" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "nowhere.json"])
def test_a_config_json_that_links_to_no_file_says_so(tiny_gpt2_dir, tmp_path, target):
    model = copy_model(tiny_gpt2_dir, tmp_path)
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(target)
    result = invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json")
    line = assert_one_line(result, 2, f"its config.json is a link to {target}")
    assert "has no config.json" not in line


def test_a_model_folder_whose_name_is_not_utf8_is_named_as_such(tiny_gpt2_dir, tmp_path):
    """A folder named in Latin-1 on a UTF-8 system: safetensors cannot open it and a results file cannot
    name it. It was called "damaged"; the line says what is wrong with it."""
    model = tmp_path / os.fsdecode(b"mod\xe8le")
    shutil.copytree(tiny_gpt2_dir, model)
    untouched = Untouched(tmp_path)
    result = invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json")
    line = assert_one_line(result, 2, "not valid UTF-8", "mod\\xe8le", "rename the folder")
    assert "damaged" not in line
    untouched.check()
