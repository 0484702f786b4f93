"""A results file says which code made it: the commit, and whether the working tree differed from it."""

from __future__ import annotations

import subprocess

from kvbench.hardware.environment import git_state


def _git(root, *arguments):
    subprocess.run(["git", "-C", str(root), *arguments], check=True, capture_output=True)


def _repository(root):
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    (root / "module.py").write_text("x = 1\n")
    _git(root, "add", "module.py")
    _git(root, "commit", "-q", "-m", "first")
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_a_clean_checkout_is_recorded_clean(tmp_path):
    commit = _repository(tmp_path)
    assert git_state(tmp_path) == {"kvbench_git_commit": commit, "kvbench_git_dirty": False}


def test_a_changed_or_new_file_marks_the_run_dirty(tmp_path):
    commit = _repository(tmp_path)
    (tmp_path / "module.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"kvbench_git_commit": commit, "kvbench_git_dirty": True}
    _git(tmp_path, "checkout", "-q", "module.py")
    (tmp_path / "new_module.py").write_text("y = 1\n")  # new code the commit does not hold
    assert git_state(tmp_path)["kvbench_git_dirty"] is True


def test_outside_a_checkout_both_are_unknown(tmp_path):
    assert git_state(tmp_path) == {"kvbench_git_commit": None, "kvbench_git_dirty": None}


def test_the_environment_record_carries_the_dirty_flag():
    from kvbench.core.devices import Devices
    from kvbench.hardware.environment import collect

    environment = collect(Devices(("cpu",)))
    assert {"kvbench_git_commit", "kvbench_git_dirty"} <= environment.keys()
    assert environment["kvbench_git_dirty"] in (True, False, None)
