"""The CI workflows and the composite action must lint clean, so a broken workflow cannot land, and the
GPU workflow must keep fork pull requests off the self-hosted runner."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"


def actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: install the test extras (pip install -e '.[test]')"
    return found


def lint(paths: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), *map(str, paths)], cwd=cwd, capture_output=True, text=True)


def test_workflows_lint_clean():
    # actionlint also checks each `uses: ./` step's inputs against action.yml.
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert workflows, "no workflow found"
    completed = lint(workflows, REPO)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_action_steps_lint_clean(tmp_path):
    """actionlint reads only workflows, so the composite action's steps are linted as a job of a reusable
    workflow whose inputs are the action's."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    inputs = {name: {"type": "string", "required": False, "default": ""} for name in action["inputs"]}
    workflow = {
        "on": {"workflow_call": {"inputs": inputs}},
        "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    path = tmp_path / ".github" / "workflows" / "action.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    completed = lint([path], tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # Every output the action declares comes from its one step.
    step_ids = {step.get("id") for step in action["runs"]["steps"]}
    for name, output in action["outputs"].items():
        assert output["value"] == f"${{{{ steps.gate.outputs.{name} }}}}" and "gate" in step_ids


def test_gpu_workflow_keeps_fork_pull_requests_off_the_runner():
    workflow = yaml.safe_load((WORKFLOWS / "gpu-benchmark.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "pull_request_target" not in triggers, "pull_request_target would run fork code with write rights"
    for job in workflow["jobs"].values():
        if "self-hosted" in job["runs-on"]:
            assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    completed = lint([broken], tmp_path)
    assert completed.returncode != 0
    assert "matrix" in completed.stdout


def test_gpu_runner_jobs_keep_no_token_and_no_write_rights():
    """The self-hosted runner runs the code under review: no checkout leaves the token in .git/config, and
    no job there may write to the repository (the history's push is a separate, GitHub-hosted job)."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        for name, job in workflow["jobs"].items():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, f"{path.name}: {name}"
            if "self-hosted" in job["runs-on"]:
                rights = job.get("permissions", workflow.get("permissions"))
                assert isinstance(rights, dict) and "write" not in rights.values(), f"{path.name}: {name}"
