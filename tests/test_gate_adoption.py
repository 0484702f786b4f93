"""The gate as a team adopts it from the docs: every workflow snippet in the README and docs/ lints clean
with the actionlint setting the docs name, and the README's snippet, committed with a config in a
repository whose base commit has neither, runs as the action runs it (action.yml's own step scripts, on a
CPU, with tiny-gpt2) and ends in a verdict, not an error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# What `pip install` of the action's directory needs of this tree (as a published action has it).
ACTION_FILES = ("kvbench/", "pyproject.toml", "README.md", "LICENSE", "action.yml")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
# A user's package, as the base commit has it before the gate is added: `pip-install: -e .` installs it.
USER_PACKAGE = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
    '[project]\nname = "demo"\nversion = "0.1"\n\n[tool.setuptools]\npackages = ["demo"]\n',
    "demo/__init__.py": '"""A package whose pull requests the gate measures."""\n',
}


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def workflow_snippets() -> dict[str, str]:
    """Every fenced YAML block of the README and docs/ that is a workflow (it has jobs), by where it is."""
    found = {}
    for path in DOCUMENTS:
        for number, block in enumerate(fenced_blocks(path.read_text(), "yaml")):
            if isinstance(yaml.safe_load(block), dict) and "jobs" in yaml.safe_load(block):
                found[f"{path.relative_to(REPO)}#{number}"] = block
    return found


def documented_actionlint_setting() -> str:
    blocks = fenced_blocks((REPO / "docs" / "gpu-ci.md").read_text(), "yaml")
    (setting,) = [block for block in blocks if "self-hosted-runner" in yaml.safe_load(block)]
    return setting


def actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: install the test extras (pip install -e '.[test]')"
    return found


def lint(snippets: dict[str, str], root: Path, setting: str | None) -> subprocess.CompletedProcess:
    workflows = root / ".github" / "workflows"
    workflows.mkdir(parents=True)
    git(root, "init", "-q")  # actionlint reads .github/actionlint.yaml at the root of the repository
    if setting is not None:
        (root / ".github" / "actionlint.yaml").write_text(setting)
    paths = []
    for number, text in enumerate(snippets.values()):
        paths.append(workflows / f"snippet-{number}.yml")
        paths[-1].write_text(text)
    return subprocess.run([actionlint(), *map(str, paths)], cwd=root, capture_output=True, text=True)


def test_the_documented_workflows_lint_clean_with_the_documented_setting(tmp_path):
    snippets = workflow_snippets()
    assert "README.md#0" in snippets and len(snippets) >= 4, sorted(snippets)
    completed = lint(snippets, tmp_path / "with", documented_actionlint_setting())
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # The setting is what makes them lint: without it the `gpu` label is an error.
    completed = lint(snippets, tmp_path / "without", None)
    assert completed.returncode != 0 and 'label "gpu" is unknown' in completed.stdout


@pytest.mark.parametrize("where", sorted(workflow_snippets()))
def test_each_documented_workflow_is_a_whole_one(where):
    """What the repository's own workflow has: read-only rights, a time limit, the results uploaded
    whatever the verdict, and the user's package installed in each checkout, so the pull request is
    what is measured. A job that writes (the opt-in comment) runs on a GitHub-hosted runner, none of the
    code under review, and posts the comment the gate wrote."""
    workflow = yaml.safe_load(workflow_snippets()[where])
    assert workflow["permissions"] == {"contents": "read"}, where
    gates = 0
    for job in workflow["jobs"].values():
        assert isinstance(job.get("timeout-minutes"), int), where
        steps = job["steps"]
        if "write" in job.get("permissions", {}).values():
            assert job["runs-on"] == "ubuntu-latest" and not any("OWNER/kvbench@" in s.get("uses", "") for s in steps)
            (post,) = [step for step in steps if step.get("uses", "").startswith("marocchino/sticky-pull-request")]
            assert post["with"]["path"] == "comment.md", where
            assert "comment.md" in workflow["jobs"][job["needs"]]["steps"][-1]["with"]["path"], where
            continue
        (gate_step,) = [step for step in steps if step.get("uses", "").startswith("OWNER/kvbench@")]
        assert gate_step["with"].get("pip-install") == "-e .", where
        (upload,) = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
        assert upload["if"] == "always()" and "kvbench-gate/summary.md" in upload["with"]["path"], where
        gates += 1
    assert gates == 1, where


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def copy_action(destination: Path) -> Path:
    for name in git(REPO, "ls-files", "-co", "--exclude-standard").splitlines():
        if name.startswith(ACTION_FILES) and (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def expression_value(value: str, inputs: dict[str, str], outputs: dict[str, dict[str, str]]) -> str:
    """An action step's env value: `${{ inputs.X }}` or `${{ steps.S.outputs.X }}`, as the runner fills them."""
    match = re.fullmatch(r"\$\{\{ (?:inputs\.([\w-]+)|steps\.([\w-]+)\.outputs\.([\w-]+)) \}\}", value)
    assert match, f"an expression the test does not evaluate: {value}"
    return inputs[match[1]] if match[1] else outputs[match[2]][match[3]]


def run_action(action_dir: Path, workspace: Path, given: dict, base_sha: str, runner: Path) -> dict[str, str]:
    """action.yml's steps, each its `run` script in bash as GitHub runs a composite step, with the inputs
    the workflow gave and the action's defaults; returns the gate step's outputs and summary."""
    action = yaml.safe_load((action_dir / "action.yml").read_text())
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    # The one default the runner fills from the event: the pull request's base commit.
    assert inputs["baseline-ref"] == "${{ github.event.pull_request.base.sha }}"
    inputs["baseline-ref"] = base_sha
    inputs.update({name: str(value) for name, value in given.items()})
    outputs: dict[str, dict[str, str]] = {}
    # The runner's python3 is one with torch: here, the venv the tests run from (the README's install).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    for step in action["runs"]["steps"]:
        files = {"GITHUB_OUTPUT": runner / f"{step['id']}.output", "GITHUB_STEP_SUMMARY": runner / "step-summary.md"}
        env = {name: expression_value(value, inputs, outputs) for name, value in step.get("env", {}).items()}
        env = {**os.environ, "PATH": path, "RUNNER_TEMP": str(runner), "GITHUB_ACTION_PATH": str(action_dir), **env}
        env.update({name: str(file) for name, file in files.items()})
        env.pop("PYTHONPATH", None)
        completed = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        lines = files["GITHUB_OUTPUT"].read_text().splitlines() if files["GITHUB_OUTPUT"].exists() else []
        outputs[step["id"]] = dict(line.split("=", 1) for line in lines)
        outputs[step["id"]]["(exit)"] = str(completed.returncode)
        outputs[step["id"]]["(log)"] = completed.stdout + completed.stderr
        if step["id"] == "install":
            assert completed.returncode == 0, completed.stdout + completed.stderr
    return outputs["gate"]


def test_the_readme_workflow_on_the_pull_request_that_adds_it_ends_in_a_verdict(tmp_path):
    """A user's repository whose base commit has no kvbench config; the head commit adds the README's
    workflow and a config (the docs' CPU one, tiny-gpt2). The action's steps, given the inputs that
    workflow gives, measure both sides with head's config, the user's package installed in each, and
    judge: pass, regression or inconclusive, whichever this machine's timings give, never an error."""
    workspace = tmp_path / "workspace"
    for name, text in USER_PACKAGE.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    git(workspace, "init", "-q")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "the package, before the gate")
    base_sha = git(workspace, "rev-parse", "HEAD")

    readme_workflow = workflow_snippets()["README.md#0"]
    (workspace / ".github" / "workflows").mkdir(parents=True)
    (workspace / ".github" / "workflows" / "kvbench.yml").write_text(readme_workflow)
    (cpu_config,) = fenced_blocks((REPO / "docs" / "gpu-ci.md").read_text(), "toml")
    (workspace / "bench").mkdir()
    (workspace / "bench" / "kvbench.toml").write_text(cpu_config)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "add the kvbench gate")

    (gate_step,) = [
        step for step in yaml.safe_load(readme_workflow)["jobs"]["kvbench"]["steps"] if "OWNER/kvbench@" in step.get("uses", "")
    ]
    action_dir = copy_action(tmp_path / "action")
    runner = tmp_path / "runner-temp"
    runner.mkdir()
    outputs = run_action(action_dir, workspace, gate_step["with"], base_sha, runner)

    log = outputs["(log)"]
    assert outputs["verdict"] in ("pass", "regression", "inconclusive"), log
    assert outputs["(exit)"] == outputs["exit-code"] and outputs["exit-code"] in ("0", "1", "4"), log
    summary = Path(outputs["summary"]).read_text()
    assert summary == (runner / "step-summary.md").read_text()
    assert "Config `bench/kvbench.toml` from head, for both sides: base has none" in summary
    assert "| measurement |" in summary
    # The opt-in comment job's file: the summary, within GitHub's limit.
    comment = Path(outputs["comment"]).read_text()
    assert comment.startswith(summary) and len(comment) <= 65_536
    # Where the upload step looks: the workflow's artifact holds both sides' results and the summary.
    out = runner / "kvbench-gate"
    assert {Path(outputs[key]) for key in ("base-results", "head-results", "summary")} == {
        out / "base.json",
        out / "head.json",
        out / "summary.md",
    }
    # The pull request's package is what each side measured with: installed from its own checkout (base's
    # worktree is removed once measured, so its install record says where it came from).
    probe = "import importlib.metadata as m; print(m.distribution('demo').read_text('direct_url.json'))"
    for side, checkout in (("base", out / "base-src"), ("head", workspace)):
        found = subprocess.run([str(out / f"{side}-venv" / "bin" / "python"), "-c", probe], capture_output=True, text=True)
        assert f'"file://{checkout.resolve()}"' in found.stdout, found.stdout + found.stderr
