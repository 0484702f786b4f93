"""The CI gate (`kvbench gate`, kvbench/gate.py) end to end on a CPU: a temporary git repository made from
this tree, a base commit and a head commit that makes every generation twice as slow, run with tiny-gpt2
and scripted latencies."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvbench.core.errors import KvbenchError
from kvbench.runner import gate, gate_summary
from kvbench.runner.gate import GateError, GateOptions, Side

REPO = Path(__file__).resolve().parent.parent
# Just enough of the tree for `python -m kvbench` to run from a checkout.
NEEDED = ("kvbench/", "pyproject.toml")
BENCH_TOML = 'model = "tiny-gpt2"\nmax_new_tokens = 8\nruns = 3\nwarmup = 0\ndevice = "cpu"\nisolation = "none"\n'
# Appended to each side's kvbench/runner/benchmark.py: every run is timed by a scripted clock that advances a few
# percent more or less at each reading (the timer's and each token's), so the verdict is the gate's, never
# the machine's noise. The head commit is the change under review: its every step takes twice as long.
SCRIPTED_CLOCK = """
import itertools as _itertools
_FACTORS = _itertools.cycle([1.0, 1.02, 0.98, 1.01, 0.99])
# A machine that slows down steadily: with KVBENCH_TEST_DRIFT_FILE set, each benchmark takes the count of
# those before it from the file and runs DRIFT slower per earlier one.
import os as _os
def _earlier_benchmarks():
    path = _os.environ.get("KVBENCH_TEST_DRIFT_FILE")
    if not path:
        return 0
    earlier = int(open(path).read()) if _os.path.exists(path) else 0
    open(path, "w").write(str(earlier + 1))
    return earlier
class _ScriptedClock:
    now = 0.0
    def __init__(self):
        self.scale = 1 + {drift} * _earlier_benchmarks()
        # Head's code, when the test asks, rewrites a file it should not (base's results).
        if {tamper} and _os.environ.get("KVBENCH_TEST_TAMPER"):
            open(_os.environ["KVBENCH_TEST_TAMPER"], "a").write(" ")
    def __call__(self):
        _ScriptedClock.now += {seconds} * self.scale * next(_FACTORS)
        return _ScriptedClock.now
_measured_init = Benchmark.__init__
def _scripted_init(self, *args, **kwargs):
    _measured_init(self, *args, **{{**kwargs, "clock": _ScriptedClock()}})
Benchmark.__init__ = _scripted_init
"""
BASE_SECONDS, HEAD_SECONDS = 0.01, 0.02
DRIFT = 0.3


GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def run_gate(
    tmp: Path, *args: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, dict[str, str], str]:
    """Run `kvbench gate` as CI does, with GitHub's output and summary files; returns them parsed."""
    github_output, step_summary = tmp / "github-output", tmp / "step-summary"
    env = {**os.environ, "GITHUB_OUTPUT": str(github_output), "GITHUB_STEP_SUMMARY": str(step_summary), **(extra_env or {})}
    # The gate is this tree's kvbench; each side runs from its own checkout, which comes first on its path.
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "kvbench", "gate", "--install", "pythonpath", "--config", "bench.toml"]
    command += ["--out", str(tmp / "out")]
    completed = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=900)
    lines = github_output.read_text().splitlines() if github_output.exists() else []
    outputs = dict(line.split("=", 1) for line in lines)
    summary = step_summary.read_text() if step_summary.exists() else ""
    return completed, outputs, summary


def make_repo(root: Path, head_seconds: float, head_message: str, tamper: bool = False) -> Path:
    """Base: this tree, a tiny config and a 25% gate. Head: `head_seconds` a step, and loosening its own
    gate to 100000%."""
    for name in git(REPO, "ls-files", "-co", "--exclude-standard").splitlines():
        if name.startswith(NEEDED) and (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "bench.toml").write_text(BENCH_TOML)
    runner = root / "kvbench" / "runner" / "benchmark.py"
    original = runner.read_text()
    runner.write_text(original + SCRIPTED_CLOCK.format(seconds=BASE_SECONDS, drift=DRIFT, tamper=False))
    (root / ".github").mkdir()
    (root / ".github" / "kvbench-gate.env").write_text("KVBENCH_REGRESSION_PCT=25\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base commit")
    runner.write_text(original + SCRIPTED_CLOCK.format(seconds=head_seconds, drift=DRIFT, tamper=tamper))
    (root / ".github" / "kvbench-gate.env").write_text("KVBENCH_REGRESSION_PCT=100000\n")
    git(root, "commit", "-q", "-am", head_message)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("gate") / "repo", HEAD_SECONDS, "head commit: slower generate, looser gate")


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
    run = {"GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "7"}
    completed, outputs, summary = run_gate(
        tmp_path, "--repo", str(repo), "--base", "no-such-ref", "--head", str(repo), extra_env=run
    )
    assert completed.returncode == 2
    assert outputs["verdict"] == "error"
    assert summary.startswith("### kvbench gate: could not judge")
    assert "no-such-ref is neither a directory nor a commit" in summary
    # The pull-request comment a workflow may post is the same summary, with a link to the run.
    link = "[The run](https://github.example/o/r/actions/runs/7): its job summary and the `kvbench-results` artifact."
    assert Path(outputs["comment"]).read_text() == f"{summary}\n{link}\n"


def test_the_pull_request_comment_fits_githubs_limit():
    """A sweep's summary can pass GitHub's 65,536 characters: the comment keeps the header and as many whole
    lines as fit, says how many it left out and where they are, and ends with the run's link."""
    head = gate.header("regression", 10.0, [("base", "abc base", {}), ("head", "def head", {})], ["Threshold 10%."])
    rows = "".join(f"| tiny-gpt2 · {n} tok · cached | +{n % 50}.0% [+1.0%, +99.0%] REGRESSION (> 10%) |\n" for n in range(4000))
    summary = head + "\n" + rows
    assert len(summary) > gate_summary.COMMENT_LIMIT
    comment = gate_summary.comment_markdown(summary, "https://github.example/o/r/actions/runs/7")
    assert len(comment) <= gate_summary.COMMENT_LIMIT - gate_summary.COMMENT_ROOM
    assert comment.startswith(head) and comment.endswith("artifact.\n")
    body = comment[len(head) :].split("\n*")[0]
    left_out = 4001 - body.count("\n")
    assert f"*{left_out} more lines of the summary are left out here, as a comment holds at most 65,536" in comment
    assert all(line in rows for line in body.strip().splitlines())  # whole lines only
    # A short summary is the comment as it is; outside GitHub Actions, without a link.
    assert gate_summary.comment_markdown(head) == head


def test_gate_exits_as_compare_says_when_a_measurement_cannot_be_judged(tmp_path):
    """compare's summary says the gate fails closed with exit 3: the gate's own exit code and verdict say the
    same, not the 2 of a gate that could not run. A baseline with one run per mode cannot be judged."""
    golden = REPO / "tests" / "data" / "golden.json"
    one_run = json.loads(golden.read_text())
    one_run["runs"] = [run for run in one_run["runs"] if run["run"] == 0]
    baseline = tmp_path / "one-run.json"
    baseline.write_text(json.dumps(one_run))
    side = Side("base", REPO, "this tree", [sys.executable, "-m", "kvbench"], {"PYTHONPATH": str(REPO)})
    verdict, code, summary = gate.judge(side, side, baseline, golden, 10.0, [])
    assert (verdict, code) == ("unjudged", 3)
    assert "fails closed (exit 3)" in summary
    assert gate.header(verdict, 10.0, [], []).startswith("### kvbench gate: could not judge every measurement")


def test_the_gate_files_describe_the_rule_the_gate_applies():
    """The threshold file's comment states compare's rule (three verdicts from the interval against PCT), not
    the older "slower by more than PCT and significant"; the tree this module copies names only paths that exist."""
    comment = (REPO / ".github" / "kvbench-gate.env").read_text()
    assert "95% confidence interval" in comment and "inconclusive" in comment and "t-test" not in comment
    assert all((REPO / name).exists() for name in NEEDED)


@pytest.fixture(scope="module")
def same_speed_repo(tmp_path_factory) -> Path:
    """Base and head equally fast; head's code rewrites base's results when KVBENCH_TEST_TAMPER says where."""
    root = tmp_path_factory.mktemp("drift") / "repo"
    return make_repo(root, BASE_SECONDS, "head commit: the same speed, a hand on base's results", tamper=True)


def test_gate_alternates_the_sides_so_a_steady_drift_favours_neither(same_speed_repo, tmp_path):
    """On a machine that slows by 30% with each `kvbench run`, base then head would call an unchanged head
    30% slower. Base, head, head, base puts each side's mean at the same point of the drift."""
    drift_file = tmp_path / "runs-so-far"
    completed, outputs, summary = run_gate(
        tmp_path,
        "--repo",
        str(same_speed_repo),
        "--base",
        "HEAD~1",
        "--head",
        str(same_speed_repo),
        extra_env={"KVBENCH_TEST_DRIFT_FILE": str(drift_file)},
    )
    assert drift_file.read_text() == "4", completed.stderr
    order = [line.split(":")[1].strip() for line in completed.stderr.splitlines() if " kvbench run --config" in line]
    assert order == ["base", "head", "head", "base"]
    assert outputs["verdict"] != "regression" and completed.returncode != 1, summary
    assert "Measured base, head, head, base" in summary
    base, head = (json.loads(Path(outputs[f"{side}-results"]).read_text()) for side in ("base", "head"))
    # Each side's file holds both halves, numbered on: 3 runs a mode each time.
    assert sorted(run["run"] for run in base["runs"] if run["mode"] == "cached") == list(range(6))
    means = [statistics.mean(run["latency_s"] for run in side["runs"]) for side in (base, head)]
    assert means[1] / means[0] == pytest.approx(1.0, rel=0.02)


def test_a_second_gate_run_in_the_same_folder_replaces_the_first(same_speed_repo, tmp_path):
    """The gate's folder is its own: the next run replaces every file the last one wrote there, the runs'
    CSVs beside its results included (kvbench run refuses an output whose CSV is already there)."""
    runs = [run_gate(tmp_path, "--repo", str(same_speed_repo), "--head", str(same_speed_repo)) for _ in range(2)]
    for completed, outputs, _ in runs:
        assert completed.returncode == 0 and outputs["verdict"] == "no-baseline", completed.stderr
    assert (tmp_path / "out" / gate.OUT_MARK).is_file()


def test_gate_refuses_base_results_that_head_rewrote(same_speed_repo, tmp_path):
    """Head's code runs after base's first half, as the same user: a base results file changed since base
    wrote it is not judged against."""
    base_half = tmp_path / "out" / "base-1.json"
    completed, outputs, summary = run_gate(
        tmp_path,
        "--repo",
        str(same_speed_repo),
        "--base",
        "HEAD~1",
        "--head",
        str(same_speed_repo),
        extra_env={"KVBENCH_TEST_TAMPER": str(base_half)},
    )
    assert completed.returncode == 2 and outputs["verdict"] == "error", summary
    assert f"{base_half} changed after base wrote it" in summary


def test_gate_refuses_out_inside_the_head_checkout(same_speed_repo, tmp_path):
    """Refused before anything is made or removed there: a results file the user keeps in it survives."""
    inside = same_speed_repo / "o"
    inside.mkdir()
    (inside / "head.json").write_text("{}")
    completed, outputs, summary = run_gate(
        tmp_path, "--repo", str(same_speed_repo), "--head", str(same_speed_repo), "--out", str(inside)
    )
    assert completed.returncode == 2 and "is inside the head checkout" in completed.stderr
    assert sorted(path.name for path in inside.iterdir()) == ["head.json"]


def test_gate_that_cannot_make_its_out_folder_is_one_line(tmp_path):
    completed, _, _ = run_gate(tmp_path, "--head", str(tmp_path), "--out", "/proc/kvbench-gate-out")
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "--out /proc/kvbench-gate-out cannot be made" in completed.stderr


def test_a_threshold_in_the_gate_file_must_be_a_percentage(tmp_path):
    for raw in ("nan", "-5", "inf", "ten"):
        (tmp_path / ".github").mkdir(exist_ok=True)
        (tmp_path / ".github" / "kvbench-gate.env").write_text(f"KVBENCH_REGRESSION_PCT={raw}\n")
        with pytest.raises(gate.GateError, match="not a non-negative percentage"):
            gate.read_threshold(Side("base", tmp_path, "this tree"), ".github/kvbench-gate.env")


def test_the_summary_writes_what_head_wrote_as_one_cell(tmp_path):
    evil = {"torch": "2.13|evil\x1b[31m\nnext line"}
    text = gate.header("pass", 10.0, [("head", "abc | subject\x1b]0;title\x07", evil)], [])
    table = [line for line in text.splitlines() if line.startswith("| torch")]
    assert len(table) == 1 and "\x1b" not in text and "\\|evil" in table[0]


def test_gate_maps_an_inconclusive_compare_to_its_own_verdict(tmp_path):
    """compare's exit 4 (inconclusive: the interval reaches past the threshold) fails the gate with its own
    verdict and code, not the 2 of a gate that could not run. The judging kvbench here only exits 4."""
    inconclusive = [sys.executable, "-c", "import sys; print('| measurement |'); sys.exit(4)"]
    side = Side("base", REPO, "this tree", inconclusive)
    verdict, code, summary = gate.judge(side, side, tmp_path / "a.json", tmp_path / "b.json", 10.0, [])
    assert (verdict, code, summary) == ("inconclusive", 4, "| measurement |\n")
    assert gate.header(verdict, 10.0, [], []).startswith("### kvbench gate: INCONCLUSIVE")


def test_gate_passes_inconclusive_ones_when_asked(tmp_path):
    """compare's --pass-inconclusive, given to `kvbench gate` (and the action's pass-inconclusive input),
    reaches the compare call that decides; without it the call is as before. The judging kvbench here
    prints the arguments it was given."""
    echo = [sys.executable, "-c", "import sys; print(' '.join(sys.argv[1:]))"]
    side = Side("base", REPO, "this tree", echo)
    notes: list[str] = []
    _, code, summary = gate.judge(side, side, tmp_path / "a.json", tmp_path / "b.json", 10.0, notes, pass_inconclusive=True)
    assert code == 0 and summary.strip().endswith("--fail-on-regression 10 --pass-inconclusive")
    assert "`kvbench compare --fail-on-regression 10 --pass-inconclusive` exited 0" in notes[0]
    _, _, summary = gate.judge(side, side, tmp_path / "a.json", tmp_path / "b.json", 10.0, [])
    assert summary.strip().endswith("--fail-on-regression 10")
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["inputs"]["pass-inconclusive"]["default"] == "false"
    script = action["runs"]["steps"][1]["run"]
    assert "true) args+=(--pass-inconclusive) ;;" in script
    assert action["runs"]["steps"][1]["env"]["GATE_PASS_INCONCLUSIVE"] == "${{ inputs.pass-inconclusive }}"


def test_gate_refuses_a_threshold_of_zero_unless_inconclusive_ones_pass(tmp_path):
    """As compare does: at 0% unchanged code can never pass. From the command line, one line before
    anything is made; from the base's gate file, the gate's error with the reason."""
    with pytest.raises(KvbenchError, match="--threshold-pct 0 can never pass unchanged code"):
        GateOptions(threshold_pct=0).check()
    GateOptions(threshold_pct=0, pass_inconclusive=True).check()
    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "gate", "--threshold-pct", "0", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert completed.returncode == 2 and "Error: --threshold-pct 0 can never pass unchanged code" in completed.stderr
    assert not (tmp_path / "out").exists()
    # The flag reaches the gate's options: 0 is taken, and the gate goes on (to a config it lacks here).
    bare = tmp_path / "bare"
    bare.mkdir()
    completed, _, summary = run_gate(tmp_path, "--head", str(bare), "--threshold-pct", "0", "--pass-inconclusive")
    assert completed.returncode == 2 and "Inconclusive measurements pass (--pass-inconclusive)" in summary
    assert "can never pass" not in summary and "bench.toml is not in the head checkout" in summary
    head = tmp_path / "head"
    (head / ".github").mkdir(parents=True)
    (head / ".github" / "kvbench-gate.env").write_text("KVBENCH_REGRESSION_PCT=0\n")
    (head / "bench.toml").write_text(BENCH_TOML)
    completed, outputs, summary = run_gate(tmp_path, "--head", str(head))
    assert completed.returncode == 2 and outputs["verdict"] == "error"
    assert "KVBENCH_REGRESSION_PCT=0 (KVBENCH_REGRESSION_PCT in head's" in summary and "can never pass" in summary


def test_gate_venv_refuses_to_download_a_torch(tmp_path):
    """A venv that cannot see a torch would have pip fetch the newest CUDA torch into each side (gigabytes):
    the gate stops first and names the two fixes, before any pip install. The interpreter given is a venv's
    without torch."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    side = Side("base", tmp_path, "a checkout")
    options = GateOptions(install="venv", python=str(bare / "bin" / "python"), pip_install="-e .")
    with pytest.raises(GateError, match=r"no torch the venvs can reuse.*--torch"):
        gate.prepare(side, options, tmp_path)


def test_gate_venvs_reuse_the_torch_of_a_venvs_python(tmp_path):
    """The README installs torch into a venv, and `kvbench gate` from it takes that venv's python: the
    side's venv sees that torch (pinned to its version), though `--system-site-packages` alone shows it the
    base interpreter's packages, which here have none."""
    import torch

    assert sys.prefix != sys.base_prefix, "the tests run from a venv (the README's install)"
    side = Side("base", tmp_path, "a checkout")
    options = GateOptions(install="venv", python=sys.executable, pip_install="")
    # Nothing to install, so it gets past torch and stops where kvbench would be installed.
    with pytest.raises(GateError, match="no kvbench in"):
        gate.prepare(side, options, tmp_path)
    assert (tmp_path / "base-torch-constraint.txt").read_text() == f"torch=={torch.__version__}\n"


def test_the_gate_takes_heads_config_only_where_the_base_has_none(tmp_path):
    """The pull request that adds the gate has a base without its config: both sides run head's, and the
    summary says so. Where the base has one, its own is run, whatever head's says."""
    base, head = Side("base", tmp_path / "base", "b"), Side("head", tmp_path / "head", "h")
    for side in (base, head):
        (side.checkout / "bench").mkdir(parents=True)
    (head.checkout / "bench" / "kvbench.toml").write_text(BENCH_TOML)
    config, note = gate.choose_config(base, head, "bench/kvbench.toml")
    assert config == head.checkout / "bench" / "kvbench.toml"
    assert note.startswith("Config `bench/kvbench.toml` from head, for both sides: base has none")
    (base.checkout / "bench" / "kvbench.toml").write_text(BENCH_TOML)
    assert gate.choose_config(base, head, "bench/kvbench.toml")[0] == base.checkout / "bench" / "kvbench.toml"
    with pytest.raises(GateError, match="other.toml is not in the base checkout .* nor in head's"):
        gate.choose_config(base, head, "other.toml")


def test_gate_command_names_a_bad_threshold_in_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "kvbench", "gate", "--threshold-pct", "-1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert completed.returncode == 2 and "Error: --threshold-pct takes a non-negative percentage" in completed.stderr


def test_the_docs_local_example_is_the_command_these_tests_run():
    """docs/gpu-ci.md's laptop example is `kvbench gate` with options the command takes, in the
    `--install pythonpath` mode run_gate drives above."""
    import typer.main

    from kvbench.cli import app

    text = (REPO / "docs" / "gpu-ci.md").read_text()
    start = text.index("\nkvbench gate ") + 1
    lines = []
    for line in text[start:].splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    words = shlex.split(" ".join(lines))
    assert words[:2] == ["kvbench", "gate"] and "pythonpath" in words
    gate_command = typer.main.get_command(app).commands["gate"]  # type: ignore[attr-defined]
    context = gate_command.make_context("gate", words[2:])  # an unknown option or a missing value raises
    assert context.params["install"] == "pythonpath" and context.params["base"] == "origin/main"


def test_gate_help_shows_each_options_real_default(tmp_path):
    """Each option's `[default: …]` in `kvbench gate --help` is what GateOptions holds: its value, or for a
    value that stands for something (none, this interpreter, the gate file's threshold), words for it."""
    import re
    import tempfile

    import typer.main

    from kvbench.cli import app

    command = typer.main.get_command(app).commands["gate"]  # type: ignore[attr-defined]
    shown = {
        param.name: re.fullmatch(r".*\\\[default: (.*)\]", param.help, re.DOTALL).group(1)
        for param in command.params
        if param.name != "help"
    }
    real = GateOptions()
    assert set(shown) == set(GateOptions.__dataclass_fields__)
    stands_for = {
        # None: read from the base's gate file, with the same fallback read_threshold uses.
        "threshold_pct": f"{gate.THRESHOLD_KEY} in the base's --gate-file,"
        f" else {gate.read_threshold(Side('base', tmp_path, 'no gate file'), real.gate_file)[0]:g}",
        "python": "this one",
        "out": f"<temp>/{real.out.relative_to(tempfile.gettempdir()).as_posix()}",
        "pass_inconclusive": "off",  # a switch: off unless given
    }
    assert real.python == sys.executable and real.threshold_pct is None
    for name, text in shown.items():
        value = getattr(real, name)
        if name in stands_for:
            assert text == stands_for[name], name
        elif value == "":  # nothing given: the help says what happens instead
            assert text and text != '""', name
        else:
            assert text == str(value), name
