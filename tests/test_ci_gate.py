"""The CI gate script (ci/kvbench_gate.py) end to end on a CPU: a temporary git repository made from this
tree, a base commit and a head commit that makes every generation twice as slow, run with tiny-gpt2 and
scripted latencies."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GATE = REPO / "ci" / "kvbench_gate.py"
# Just enough of the tree for `python -m kvbench` to run from a checkout.
NEEDED = ("kvbench/", "pyproject.toml")
BENCH_TOML = 'model = "tiny-gpt2"\nmax_new_tokens = 8\nruns = 3\nwarmup = 0\ndevice = "cpu"\nisolation = "none"\n'
# Appended to each side's kvbench/runner.py: every run is timed by a scripted clock that advances a few
# percent more or less at each reading (the timer's and each token's), so the verdict is the gate's, never
# the machine's noise. The head commit is the change under review: its every step takes twice as long.
SCRIPTED_CLOCK = """
import itertools as _itertools
_FACTORS = _itertools.cycle([1.0, 1.02, 0.98, 1.01, 0.99])
class _ScriptedClock:
    now = 0.0
    def __call__(self):
        _ScriptedClock.now += {seconds} * next(_FACTORS)
        return _ScriptedClock.now
_measured_init = Benchmark.__init__
def _scripted_init(self, *args, **kwargs):
    _measured_init(self, *args, **{{**kwargs, "clock": _ScriptedClock()}})
Benchmark.__init__ = _scripted_init
"""
BASE_SECONDS, HEAD_SECONDS = 0.01, 0.02


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def run_gate(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str], str]:
    """Run the script as CI does, with GitHub's output and summary files; returns them parsed."""
    github_output, step_summary = tmp / "github-output", tmp / "step-summary"
    env = {**os.environ, "GITHUB_OUTPUT": str(github_output), "GITHUB_STEP_SUMMARY": str(step_summary)}
    env.pop("PYTHONPATH", None)  # each side's checkout alone provides kvbench
    command = [sys.executable, str(GATE), "--install", "pythonpath", "--config", "bench.toml", "--out", str(tmp / "out")]
    completed = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)
    lines = github_output.read_text().splitlines() if github_output.exists() else []
    outputs = dict(line.split("=", 1) for line in lines)
    summary = step_summary.read_text() if step_summary.exists() else ""
    return completed, outputs, summary


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Base: this tree, a tiny config and a 25% gate. Head: slower, and loosening its own gate to 100000%."""
    root = tmp_path_factory.mktemp("gate") / "repo"
    for name in git(REPO, "ls-files", "-co", "--exclude-standard").splitlines():
        if name.startswith(NEEDED) and (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "bench.toml").write_text(BENCH_TOML)
    runner = root / "kvbench" / "runner.py"
    original = runner.read_text()
    runner.write_text(original + SCRIPTED_CLOCK.format(seconds=BASE_SECONDS))
    (root / ".github").mkdir()
    (root / ".github" / "kvbench-gate.env").write_text("KVBENCH_REGRESSION_PCT=25\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base commit")
    runner.write_text(original + SCRIPTED_CLOCK.format(seconds=HEAD_SECONDS))
    (root / ".github" / "kvbench-gate.env").write_text("KVBENCH_REGRESSION_PCT=100000\n")
    git(root, "commit", "-q", "-am", "head commit: slower generate, looser gate")
    return root


@pytest.fixture(scope="module")
def slower_head(repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slower-head")
    return (tmp, *run_gate(tmp, "--repo", str(repo), "--base", "HEAD~1", "--head", str(repo)))


def test_gate_fails_a_slower_head_on_the_base_threshold(repo, slower_head):
    tmp, completed, outputs, summary = slower_head
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert outputs["verdict"] == "regression" and outputs["exit-code"] == "1"
    # One verdict: the summary on the job's page is the file the gate wrote, and what it printed.
    assert summary == Path(outputs["summary"]).read_text() == completed.stdout.rstrip("\n") + "\n"
    assert summary.startswith("### kvbench gate: REGRESSION")
    # Headed by the two commits, the device and the versions each side ran with.
    assert git(repo, "log", "-1", "--format=%h base commit", "HEAD~1") in summary
    assert git(repo, "log", "-1", "--format=%h head commit", "HEAD") in summary
    head, base = (json.loads(Path(outputs[f"{side}-results"]).read_text()) for side in ("head", "base"))
    # Each side ran its own commit's clock: the scripted latencies, twice as long on head, not this machine's.
    means = [statistics.mean(run["latency_s"] for run in side["runs"]) for side in (base, head)]
    assert means[1] / means[0] == pytest.approx(HEAD_SECONDS / BASE_SECONDS, rel=0.02)
    environment = head["environment"]
    # Each side ran its own checkout's kvbench.
    assert environment["kvbench_git_commit"] == git(repo, "rev-parse", "HEAD")
    base_environment = base["environment"]
    assert base_environment["kvbench_git_commit"] == git(repo, "rev-parse", "HEAD~1")
    for key in ("device_name", "torch", "transformers"):
        assert f"| {environment[key]} | {environment[key]} |" in summary
    # The threshold is the base's 25%, not the 100000% the head commit wrote for itself.
    assert "Threshold 25%: KVBENCH_REGRESSION_PCT in base's" in summary
    assert "| measurement |" in summary and "REGRESSION (> 25%)" in summary
    # The base's worktree is gone; the history export holds head's measurements.
    assert git(repo, "worktree", "list").count("\n") == 0
    exported = json.loads(Path(outputs["benchmark-action"]).read_text())
    assert {entry["unit"] for entry in exported} == {"s"} and len(exported) == 2


def test_gate_passes_head_against_a_committed_baseline(repo, slower_head, tmp_path):
    _, _, first, _ = slower_head
    completed, outputs, summary = run_gate(
        tmp_path, "--repo", str(repo), "--head", str(repo), "--baseline-file", first["head-results"]
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert outputs["verdict"] == "pass" and outputs["base-results"] == ""
    assert summary.startswith("### kvbench gate: passed")
    assert "compared with the committed" in summary and "| measurement |" in summary
    # Without a base, the head's own gate file is the one read (a push to main, already reviewed).
    assert "Threshold 100000%: KVBENCH_REGRESSION_PCT in head's" in summary


def test_gate_says_why_it_cannot_judge(repo, tmp_path):
    completed, outputs, summary = run_gate(tmp_path, "--repo", str(repo), "--base", "no-such-ref", "--head", str(repo))
    assert completed.returncode == 2
    assert outputs["verdict"] == "error"
    assert summary.startswith("### kvbench gate: could not judge")
    assert "no-such-ref is neither a directory nor a commit" in summary


def test_gate_exits_as_compare_says_when_a_measurement_cannot_be_judged(tmp_path, monkeypatch):
    """compare's summary says the gate fails closed with exit 3: the gate's own exit code and verdict say the
    same, not the 2 of a gate that could not run. A baseline with one run per mode cannot be judged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kvbench_gate", GATE)
    assert spec is not None and spec.loader is not None
    gate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kvbench_gate", gate)  # its dataclasses look their module up there
    spec.loader.exec_module(gate)
    golden = REPO / "tests" / "data" / "golden.json"
    one_run = json.loads(golden.read_text())
    one_run["runs"] = [run for run in one_run["runs"] if run["run"] == 0]
    baseline = tmp_path / "one-run.json"
    baseline.write_text(json.dumps(one_run))
    side = gate.Side("base", REPO, "this tree", [sys.executable, "-m", "kvbench"], {"PYTHONPATH": str(REPO)})
    verdict, code, summary = gate.judge(side, side, baseline, golden, 10.0, [])
    assert (verdict, code) == ("unjudged", 3)
    assert "fails closed (exit 3)" in summary
    assert gate.header(verdict, 10.0, [], []).startswith("### kvbench gate: could not judge every measurement")


def test_the_gate_files_describe_the_rule_the_gate_applies():
    """The threshold file's comment states compare's rule (the whole interval above PCT), not the older
    "slower by more than PCT and significant"; the tree this module copies names only paths that exist."""
    comment = (REPO / ".github" / "kvbench-gate.env").read_text()
    assert "whole 95% confidence interval" in comment and "t-test" not in comment
    assert all((REPO / name).exists() for name in NEEDED)
