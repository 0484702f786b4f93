"""The GPU workflow's own install and test lines, on this machine: `pytest -m gpu` imports every test
module, so the packages the workflow installs must be enough to collect them all (the GPU tests then skip
here). A fresh venv would download torch; instead the tests run with only the distributions that install
would bring importable: every other installed distribution's modules are hidden from the process."""

import json
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kvbench.model.experiment import tomllib  # tomli before Python 3.11

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "gpu-benchmark.yml"
# What a venv holds before anything is installed into it.
VENV_BASE = {"pip", "setuptools"}

# The start of a `python -c` script whose first argument lists, as JSON, the distributions an install would
# bring: every module of any other installed distribution is hidden from the process.
ONLY_INSTALLED = """
import importlib.metadata as metadata, json, sys
allowed = set(json.loads(sys.argv[1]))
def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")
# None in sys.modules: an import raises ModuleNotFoundError and importlib.util.find_spec answers None, as
# for a module that is not installed.
for module, dists in metadata.packages_distributions().items():
    if not any(canonical(dist) in allowed for dist in dists):
        sys.modules.setdefault(module, None)
"""
# Started as the workflow's python: loads only the pytest plugins the workflow would install, then runs
# pytest with the workflow's arguments.
RESTRICTED_PYTHON = (
    ONLY_INSTALLED
    + """
plugins = []
for dist in metadata.distributions():
    if canonical(dist.metadata["Name"]) in allowed:
        plugins += [arg for point in dist.entry_points if point.group == "pytest11" for arg in ("-p", point.value)]
import pytest
sys.exit(pytest.main([*plugins, *sys.argv[2:]]))
"""
)


def workflow_lines() -> tuple[list[str], list[str]]:
    """The arguments of the GPU job's `pip install` and of its `python -m pytest`."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["benchmark"]["steps"]
    install = pytest_args = None
    for step in steps:
        for line in step.get("run", "").splitlines():
            words = shlex.split(line)
            if words[:1] == [".venv/bin/pip"] and words[1:2] == ["install"]:
                install = words[2:]
            if words[:1] == [".venv/bin/python"] and words[1:3] == ["-m", "pytest"]:
                pytest_args = words[3:]
    assert install is not None and pytest_args is not None, "the GPU job no longer installs and runs pytest"
    return install, pytest_args


def kvbench_requirements(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


def closure(requirements: list[Requirement]) -> set[str]:
    """The distributions pip would install for `requirements`, found among those installed here."""
    found: set[str] = set(VENV_BASE)
    pending = [(requirement, frozenset(requirement.extras)) for requirement in requirements]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if name in found and not extras:
            continue
        found.add(name)
        for text in metadata.requires(name) or []:
            needed = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                pending.append((needed, frozenset(needed.extras)))
    return found


def installed_by(install: list[str]) -> set[str]:
    requirements: list[Requirement] = []
    words = iter(install)
    for word in words:
        if word in ("-c", "--constraint"):  # pins what is installed anyway; installs nothing itself
            next(words)
            continue
        if word == "-e":
            continue
        if word.startswith("."):
            extras = word.partition("[")[2].rstrip("]")
            requirements += kvbench_requirements({extra for extra in extras.split(",") if extra})
            requirements.append(Requirement("kvbench"))
        else:
            requirements.append(Requirement(word))
    return closure(requirements)


def test_the_gpu_job_collects_every_test_with_only_what_it_installs(tmp_path):
    install, pytest_args = workflow_lines()
    allowed = installed_by(install)

    completed = subprocess.run(
        [sys.executable, "-c", RESTRICTED_PYTHON, json.dumps(sorted(allowed)), *pytest_args, "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "HOME": str(tmp_path),
        },
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    # The GPU tests skip here; an error at collection, or no GPU test selected (exit code 5), fails.
    assert completed.returncode == 0, output
    assert " skipped" in output and "error" not in output.lower(), output
