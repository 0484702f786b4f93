"""Every command in the README's and the docs pages' shell blocks, and every Python block, runs here as
written, on this machine's CPU: for real where it takes seconds to a minute, with `--dry-run` (every check
a run makes before its first generation) where the real run takes minutes to hours, and not at all where
it cannot run here, each with the reason. A command added to a page and not listed below fails
test_every_documented_command_is_listed, so none goes unchecked."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Way:
    """How a documented command runs here: "run" (as written), "dry-run" (with --dry-run) or "not run";
    `why` says why it is not run as written, `exit_codes` what it may end with."""

    kind: str
    why: str = ""
    exit_codes: tuple[int, ...] = (0,)


RUN = Way("run")


def dry(why: str) -> Way:
    return Way("dry-run", why)


def not_run(why: str) -> Way:
    return Way("not run", why)


INSTALLS = "installs packages from PyPI; the tests run offline, in the environment they were installed in"
GPU_ONLY = "needs a CUDA device (the GPU tests, pytest -m gpu, run their own)"
CAPACITY = "probes for minutes (450MiB took 2:31 on the 2-core VM); tests/test_capacity.py runs the search on small budgets"
RAY = "starts or joins a Ray cluster; tests/test_ray.py runs cells on a local Ray instance with a tiny model"

# Each documented command, as written (comments cut, whitespace collapsed), and how it runs here.
DOCUMENTED: dict[str, Way] = {
    # README.md
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/kvbench run --model gpt2"
    " --max-new-tokens 200 --runs 3": not_run(INSTALLS + "; its run is the next README command's, sized for a CPU"),
    "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[test]' && .venv/bin/python -m pytest"
    " -q -n auto --dist loadfile": not_run(INSTALLS + "; it runs this suite (.ci/run, word for word)"),
    ".venv/bin/kvbench run --model tiny-gpt2 --max-new-tokens 64 --runs 3": RUN,
    "kvbench run --model gpt2": dry("the reference experiment: 1000 tokens, 10 runs a mode, hours on a CPU"),
    "kvbench run --model gpt2 --max-new-tokens 200 --runs 3 --device cpu": dry("about 4 minutes on a 2-core CPU"),
    "kvbench run --config configs/cpu-quick.toml": dry("2:41 on the 2-core VM; CI runs it (.ci/run)"),
    "kvbench run -m tinyllama-1.1b --dtype bfloat16 --max-new-tokens 128 --max-new-tokens 512 --batch-size 1"
    " --batch-size 8": dry("a 1.1B model at batch 8: hours on a CPU"),
    "kvbench show results/run.json": RUN,
    "kvbench compare results/a.json results/b.json": RUN,
    "kvbench compare results/ --format markdown": RUN,
    "kvbench compare base.json new.json --fail-on-regression 5": Way("run", exit_codes=(0, 1, 4)),
    "kvbench plot results/run.json": RUN,
    "kvbench run --config configs/cache-implementations-cpu.toml": dry("11.5 minutes on the 2-core VM"),
    "kvbench run --config configs/which-cache-cpu.toml": dry("24 s on the quiet 2-core VM, minutes beside other jobs"),
    # docs/capacity.md
    "kvbench capacity -m tiny-gqa-32k --memory-budget 2GiB": not_run(CAPACITY),
    "kvbench capacity -m llama-3.1-8b -d cuda --cache-implementation dynamic --cache-implementation quantized": not_run(
        GPU_ONLY
    ),
    "kvbench capacity -m Qwen/Qwen2.5-0.5B -d cpu --memory-budget 4GiB --find batch --context 4096": not_run(
        "loads Qwen2.5-0.5B from the hub; the tests run offline"
    ),
    "kvbench capacity -m tiny-gqa-32k --memory-budget 450MiB": not_run(CAPACITY),
    # docs/gpu-ci.md
    "kvbench gate --base origin/main --head . --install pythonpath --config configs/cpu-quick.toml --run-args"
    ' "--max-new-tokens 8 --runs 3"': not_run(
        "needs a git checkout with origin/main; tests/test_ci_gate.py runs the gate on scratch repositories"
    ),
    # docs/running.md (sweep.toml: the page's TOML block)
    "kvbench run --config sweep.toml --isolation none": dry("the page's sweep: 24 cells of gpt2 and tinyllama-1.1b"),
    "kvbench run --config sweep.toml": dry("the page's sweep: 24 cells of gpt2 and tinyllama-1.1b"),
    "kvbench run --config sweep.toml --isolation cell": dry("the page's sweep: 24 cells of gpt2 and tinyllama-1.1b"),
    "kvbench run --config sweep.toml --processes 3 --runs 9": dry("the page's sweep, 3 processes a cell"),
    "kvbench run --config sweep.toml --cell-timeout 1800": dry("the page's sweep: 24 cells of gpt2 and tinyllama-1.1b"),
    "pip install 'kvbench[ray]'": not_run(INSTALLS),
    "kvbench run --config sweep.toml --launcher ray": not_run(RAY),
    "ray start --head": not_run(RAY),
    "ray start --address HEAD:6379": not_run(RAY),
    "kvbench run --config sweep.toml --launcher ray --ray-address auto": not_run(RAY),
    "kvbench run --config sweep.toml --launcher ray --ray-address auto --accelerator-type H100 -o h100.json": not_run(RAY),
    "kvbench compare a100.json h100.json": not_run("needs results from two GPU types; compare runs above on two results files"),
}


def shell_commands(text: str) -> list[str]:
    """Each command line of a page's shell blocks: continuations joined, comments cut, blank lines dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
            if line.strip():
                found.append(" ".join(line.split()))
    return found


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


COMMANDS = [(page.relative_to(REPO).as_posix(), command) for page in PAGES for command in shell_commands(page.read_text())]
PYTHON = [(page.relative_to(REPO).as_posix(), code) for page in PAGES for code in python_blocks(page.read_text())]


def test_every_documented_command_is_listed():
    documented = {command for _, command in COMMANDS}
    assert documented - set(DOCUMENTED) == set(), "a documented command to run here, or to mark with why not"
    assert set(DOCUMENTED) - documented == set(), "a listed command no page documents any more"
    assert all(way.why for way in DOCUMENTED.values() if way.kind != "run")


@pytest.fixture
def workplace(tmp_path, monkeypatch):
    """A folder holding what the documented commands name: the configs, results files (the golden
    pair), the page's sweep.toml; kvbench's processes started there import this checkout."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "results").mkdir()
    for name, source in {"run": "golden", "a": "golden", "b": "golden-rerun"}.items():
        shutil.copy(DATA / f"{source}.json", tmp_path / "results" / f"{name}.json")
    shutil.copy(DATA / "golden.json", tmp_path / "base.json")
    shutil.copy(DATA / "golden-rerun.json", tmp_path / "new.json")
    (sweep,) = re.findall(r"```toml\n(.*?)```", (REPO / "docs" / "running.md").read_text(), re.S)
    (tmp_path / "sweep.toml").write_text(sweep)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def kvbench_arguments(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "kvbench" or words[0].endswith("/kvbench"), command
    return words[1:]


RUNNABLE = [(page, command) for page, command in COMMANDS if DOCUMENTED.get(command, RUN).kind != "not run"]


@pytest.mark.parametrize(("page", "command"), RUNNABLE, ids=[f"{page}: {command[:70]}" for page, command in RUNNABLE])
def test_documented_command_runs(page, command, workplace):
    way = DOCUMENTED[command]
    arguments = kvbench_arguments(command) + (["--dry-run"] if way.kind == "dry-run" else [])
    if way.kind == "dry-run" and "--device" not in arguments and "-d" not in arguments:
        arguments += ["--device", "cpu"]  # the page's GPU settings, checked as on this machine's CPU
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code in way.exit_codes, f"{page}: {command}\n{result.output[-3000:]}"
    assert "Traceback" not in result.output
    if arguments[0] == "run" and way.kind == "run":
        (written,) = (workplace / "results").glob("tiny-gpt2-*.json")
        assert json.loads(written.read_text())["complete"] is True
    if arguments[0] == "plot":
        assert list((workplace / "results" / "run-plots").glob("*.png"))


@pytest.mark.parametrize(("page", "code"), PYTHON, ids=[page for page, _ in PYTHON])
def test_documented_python_runs(page, code, workplace):
    """As a user runs it: a fresh interpreter, this checkout first on its path; progress on stderr."""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(r"^\[1/\d+\] ", completed.stderr, re.M), "progress shown, a line per generation in a log"
    if "r.json" in code:
        assert json.loads((workplace / "r.json").read_text())["complete"] is True
