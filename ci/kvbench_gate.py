#!/usr/bin/env python3
"""The CI gate: measure a base and a head checkout with one config, back to back, and judge head against base.

It only drives the kvbench command line, so it runs the same on a laptop as in the GitHub action
(`action.yml`):

    python3 ci/kvbench_gate.py --base origin/main --head . --config configs/ci-gpu.toml

Each side is a directory or a git revision (checked out as a detached worktree). The config and the
regression threshold are read from the base checkout, so a change cannot edit its own gate. The verdict is
one `kvbench compare base.json head.json --format markdown --fail-on-regression PCT` call, run with base's
kvbench: its markdown is the summary, its exit code is the gate's.

Exit codes: 0 no significant regression (or nothing to compare with yet), 1 a significant regression of
more than the threshold, 2 the gate could not run (a build, run or compare failed, or a bad argument), 3
kvbench compare could not judge a measurement (it fails closed; its summary names each one).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

GATE_FILE = ".github/kvbench-gate.env"
THRESHOLD_KEY = "KVBENCH_REGRESSION_PCT"
DEFAULT_THRESHOLD_PCT = 10.0
# A push that creates a branch reports this as its "before" commit: there is nothing to compare with.
NULL_SHA = "0" * 40
EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR, EXIT_UNJUDGED = 0, 1, 2, 3
# What the summary's header shows from each results file's environment block.
ENVIRONMENT_ROWS = (
    ("device", "device_name"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("CUDA", "cuda_version"),
    ("driver", "gpu_driver"),
    ("kvbench", "kvbench"),
)


class GateError(Exception):
    """Something that keeps the gate from judging; its message names the problem and, where it can, the fix."""


@dataclass
class Side:
    """One checkout being measured, and how to run the kvbench that belongs to it."""

    name: str  # "base" or "head"
    checkout: Path
    commit: str  # short sha and subject, or a note when the checkout is not a git repository
    kvbench: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def run(self, args: list[str], capture: bool = False) -> subprocess.CompletedProcess:
        # kvbench's own output goes to the log on stderr; stdout is kept for the summary.
        return subprocess.run(
            [*self.kvbench, *args],
            cwd=self.checkout,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.PIPE if capture else None,
            text=True,
        )


def log(message: str) -> None:
    print(f"kvbench-gate: {message}", file=sys.stderr, flush=True)


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and completed.returncode != 0:
        raise GateError(f"git {' '.join(args)} failed in {repo}: {completed.stderr.strip()}")
    return completed


def describe_commit(checkout: Path) -> str:
    completed = git(checkout, "log", "-1", "--format=%h %s", check=False)
    return completed.stdout.strip() if completed.returncode == 0 else "(not a git checkout)"


def resolve_checkout(spec: str, repo: Path, destination: Path) -> tuple[Path, bool]:
    """A directory as it is, or a revision of `repo` as a detached worktree at `destination`. The bool
    says whether a worktree was made (and must be removed)."""
    if Path(spec).is_dir():
        return Path(spec).resolve(), False
    found = git(repo, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    if found.returncode != 0:
        # A shallow CI checkout lacks the base commit; GitHub serves a commit by its sha.
        log(f"{spec} is not in the local clone; fetching it from origin")
        git(repo, "fetch", "--no-tags", "--depth=1", "origin", spec, check=False)
        found = git(repo, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
        if found.returncode != 0:
            raise GateError(f"{spec} is neither a directory nor a commit of {repo}; give a checkout or a revision")
    # What an interrupted earlier run left behind.
    if destination.exists():
        git(repo, "worktree", "remove", "--force", str(destination), check=False)
        shutil.rmtree(destination, ignore_errors=True)
    git(repo, "worktree", "prune", check=False)
    git(repo, "worktree", "add", "--detach", str(destination), found.stdout.strip())
    return destination.resolve(), True


def read_threshold(side: Side, gate_file: str) -> tuple[float, str]:
    """The regression threshold from `KVBENCH_REGRESSION_PCT=...` in the side's gate file, and where it
    came from; the default when the file or the key is missing (a base that predates the gate file)."""
    path = side.checkout / gate_file
    if not path.is_file():
        return DEFAULT_THRESHOLD_PCT, f"the default, as {side.name} has no `{gate_file}`"
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == THRESHOLD_KEY:
            raw = value.split("#", 1)[0].strip().strip("\"'")
            try:
                threshold = float(raw)
            except ValueError:
                raise GateError(
                    f"{path}: {THRESHOLD_KEY}={raw!r} is not a number; write a percentage, such as 10"
                ) from None
            return threshold, f"{THRESHOLD_KEY} in {side.name}'s `{gate_file}`"
    return DEFAULT_THRESHOLD_PCT, f"the default, as {side.name}'s `{gate_file}` has no {THRESHOLD_KEY}"


def prepare(side: Side, mode: str, python: str, pip_install: str, kvbench_spec: str, work: Path) -> None:
    """Make `side.kvbench` run that checkout's kvbench: a fresh venv that reuses the system's packages
    (the runner's CUDA torch), or, for quick local runs and tests, the checkout on PYTHONPATH."""
    if mode == "pythonpath":
        side.kvbench = [python, "-m", "kvbench"]
        paths = [str(side.checkout), os.environ.get("PYTHONPATH")]
        side.env = {"PYTHONPATH": os.pathsep.join(filter(None, paths))}
        return
    venv = work / f"{side.name}-venv"
    shutil.rmtree(venv, ignore_errors=True)
    log(f"{side.name}: creating {venv}")
    created = subprocess.run([python, "-m", "venv", "--system-site-packages", str(venv)], stdout=sys.stderr)
    if created.returncode != 0:
        raise GateError(f"{python} -m venv failed; give --python an interpreter with the venv module")
    venv_python = venv / "bin" / "python"
    # A kvbench directory is installed editable, so the checkout's own kvbench is the one measured.
    if kvbench_spec and Path(kvbench_spec).is_dir():
        kvbench_spec = f"-e {shlex.quote(kvbench_spec)}"
    for what in filter(None, [pip_install, kvbench_spec]):
        log(f"{side.name}: pip install {what}")
        command = [str(venv_python), "-m", "pip", "install", "--quiet", *shlex.split(what)]
        if subprocess.run(command, cwd=side.checkout, stdout=sys.stderr).returncode != 0:
            raise GateError(f"{side.name}: pip install {what} failed in {side.checkout} (see the log above)")
    if not (venv / "bin" / "kvbench").exists():
        raise GateError(
            f"{side.name}: no kvbench in {venv} after pip install; give --kvbench-spec where kvbench comes from"
        )
    side.kvbench = [str(venv / "bin" / "kvbench")]


def measure(side: Side, config: Path, run_args: list[str], output: Path) -> None:
    log(f"{side.name}: kvbench run --config {config} {shlex.join(run_args)}".rstrip())
    output.unlink(missing_ok=True)
    completed = side.run(["run", "--config", str(config), *run_args, "--output", str(output)])
    if completed.returncode != 0 or not output.is_file():
        raise GateError(f"{side.name}: kvbench run exited {completed.returncode} (see the log above)")


def environment_of(path: Path) -> dict:
    """A results file's environment block, with the kvbench version that wrote it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {**data.get("environment", {}), "kvbench": data.get("kvbench_version")}


def header(verdict: str, threshold: float, columns: list[tuple[str, str, dict]], notes: list[str]) -> str:
    """The summary's head: the verdict, then each side's commit, device and versions side by side."""
    titles = {
        "pass": f"kvbench gate: passed (no significant slowdown of more than {threshold:g}%)",
        "regression": f"kvbench gate: REGRESSION (significantly slower by more than {threshold:g}%)",
        "no-baseline": "kvbench gate: nothing to compare with yet (measured, not judged)",
        "error": "kvbench gate: could not judge",
        "unjudged": "kvbench gate: could not judge every measurement (fails closed)",
    }
    lines = [f"### {titles[verdict]}", ""]
    if not columns:  # it stopped before it knew either side
        return "\n".join(lines + [f"{note}  " for note in notes]) + "\n"
    lines.append("| | " + " | ".join(title for title, _, _ in columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    lines.append("| commit | " + " | ".join(commit.replace("|", "\\|") for _, commit, _ in columns) + " |")
    for label, key in ENVIRONMENT_ROWS:
        values = [str(environment.get(key) or "—") for _, _, environment in columns]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines.append("")
    lines += [f"{note}  " for note in notes]
    return "\n".join(lines) + "\n"


def write_github_files(outputs: dict[str, str], summary: str) -> None:
    """In GitHub Actions: the step's outputs, and the summary on the job's page."""
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a") as handle:
            handle.writelines(f"{key}={value}\n" for key, value in outputs.items())
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as handle:
            handle.write(summary)


def judge(
    judge_side: Side, head: Side, reference: Path | None, head_json: Path, threshold: float, notes: list[str]
) -> tuple[str, int, str]:
    """The verdict, the exit code and the summary's body: one `kvbench compare` call decides, its markdown
    is the body and its exit code the gate's. With nothing to compare with, head's table, unjudged."""
    if reference is None:
        notes.append("No base commit and no committed baseline: head was measured, nothing was judged.")
        shown = head.run(["show", str(head_json)], capture=True).stdout.rstrip()
        return "no-baseline", EXIT_PASS, f"```\n{shown}\n```\n" if shown else ""
    compared = judge_side.run(
        ["compare", str(reference), str(head_json), "--format", "markdown", "--fail-on-regression", f"{threshold:g}"],
        capture=True,
    )
    sys.stderr.write(compared.stderr)
    notes.append(
        f"Judged by {judge_side.name}'s kvbench: `kvbench compare --fail-on-regression {threshold:g}`"
        f" exited {compared.returncode}."
    )
    if compared.returncode == EXIT_PASS:
        return "pass", EXIT_PASS, compared.stdout
    if compared.returncode == EXIT_REGRESSION:
        return "regression", EXIT_REGRESSION, compared.stdout
    # compare's markdown says it fails closed with exit 3: the gate's exit code must be the one it names.
    if compared.returncode == EXIT_UNJUDGED:
        return "unjudged", EXIT_UNJUDGED, compared.stdout
    return "error", EXIT_ERROR, f"{compared.stdout}\n```\n{compared.stderr.strip()}\n```\n"


def gate(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_spec = (args.base or "").strip()
    if base_spec == NULL_SHA:
        base_spec = ""
    worktrees: list[Path] = []
    notes: list[str] = []
    verdict, code, judged = "error", EXIT_ERROR, ""
    threshold = args.threshold_pct if args.threshold_pct is not None else DEFAULT_THRESHOLD_PCT
    head_json, base_json, exported_json = out / "head.json", out / "base.json", out / "benchmark-action.json"
    # A previous run's files must not pass for this one's.
    for stale in (head_json, base_json, exported_json):
        stale.unlink(missing_ok=True)
    base = head = None
    stored_column: tuple[str, str, dict] | None = None  # the committed baseline, when it stands in for base
    try:
        head_dir, made = resolve_checkout(args.head, repo, out / "head-src")
        worktrees += [head_dir] if made else []
        head = Side("head", head_dir, describe_commit(head_dir))
        if base_spec:
            base_dir, made = resolve_checkout(base_spec, repo, out / "base-src")
            worktrees += [base_dir] if made else []
            base = Side("base", base_dir, describe_commit(base_dir))
        # The gate's settings come from the base: the code under review does not choose its own judge.
        trusted = base or head
        if args.threshold_pct is None:
            threshold, source = read_threshold(trusted, args.gate_file)
            notes.append(f"Threshold {threshold:g}%: {source}.")
        else:
            notes.append(f"Threshold {threshold:g}%: given to the gate (--threshold-pct).")
        config = trusted.checkout / args.config
        if not config.is_file():
            raise GateError(f"{args.config} is not in the {trusted.name} checkout {trusted.checkout}; check --config")
        notes.append(f"Config `{args.config}` from {trusted.name}.")
        run_args = shlex.split(args.run_args or "")
        if run_args:
            notes.append(f"Extra `kvbench run` arguments: `{shlex.join(run_args)}`.")

        # Install everything first, so base and head are measured minutes apart with nothing in between.
        for side in filter(None, [base, head]):
            prepare(side, args.install, args.python, args.pip_install, args.kvbench_spec, out)
        if base is not None:
            measure(base, config, run_args, base_json)
        measure(head, config, run_args, head_json)
        if base is not None:
            notes.append("Base then head, back to back, on this machine.")
            reference = base_json
        elif args.baseline_file and (head.checkout / args.baseline_file).is_file():
            reference = head.checkout / args.baseline_file
            stored = environment_of(reference)
            commit = (stored.get("kvbench_git_commit") or "")[:7] or "(unknown)"
            stored_column = (f"baseline `{args.baseline_file}`", f"{commit} (committed results)", stored)
            notes.append(f"No base commit given: compared with the committed `{args.baseline_file}`.")
        else:
            reference = None

        # The history export: github-action-benchmark's JSON of head's measurements, by head's kvbench
        # (the export is a record, not the verdict, so the base need not make it).
        exported = head.run(["compare", str(head_json), "--format", "benchmark-action"], True)
        if exported.returncode == 0:
            exported_json.write_text(exported.stdout)

        verdict, code, judged = judge(trusted, head, reference, head_json, threshold, notes)
    except GateError as error:
        log(f"error: {error}")
        verdict, code = "error", EXIT_ERROR
        notes.append(f"**Error:** {error}")
    finally:
        for worktree in worktrees:
            git(repo, "worktree", "remove", "--force", str(worktree), check=False)

    columns = [("base", base.commit, environment_of(base_json))] if base is not None else []
    columns += [stored_column] if stored_column is not None else []
    columns += [("head", head.commit, environment_of(head_json))] if head is not None else []
    summary = header(verdict, threshold, columns, notes) + ("\n" + judged if judged else "")
    summary_path = out / "summary.md"
    summary_path.write_text(summary)
    print(summary)
    outputs = {
        "verdict": verdict,
        "exit-code": str(code),
        "summary": str(summary_path),
        "base-results": str(base_json) if base_json.is_file() else "",
        "head-results": str(head_json) if head_json.is_file() else "",
        "benchmark-action": str(exported_json) if exported_json.is_file() else "",
    }
    write_github_files(outputs, summary)
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure a base and a head checkout with one kvbench config; fail on a significant regression.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--base", default="", help="base checkout: a directory or a git revision of --repo; empty: --baseline-file")
    add("--head", default=".", help="head checkout: a directory or a git revision of --repo")
    add("--repo", default=".", help="the git repository revisions are taken from")
    add("--config", default="configs/ci-gpu.toml", help="kvbench TOML config, relative to the base checkout")
    add(
        "--threshold-pct", type=float, default=None,
        help=f"fail on a significant slowdown of more than this percentage [default: {THRESHOLD_KEY} in the"
        f" base's --gate-file, else {DEFAULT_THRESHOLD_PCT:g}]",
    )
    add("--gate-file", default=GATE_FILE, help=f"file in the base checkout holding {THRESHOLD_KEY}=PCT")
    add("--baseline-file", default="", help="results file in the head checkout to compare with when there is no --base")
    add(
        "--install", choices=("venv", "pythonpath"), default="venv",
        help="venv: a fresh venv per side that sees --python's packages (a system CUDA torch); pythonpath: run"
        " `python -m kvbench` with the checkout on PYTHONPATH, installing nothing",
    )
    add("--python", default=sys.executable, help="interpreter for the venvs (or for pythonpath runs)")
    add("--pip-install", default="-e .", help="pip install arguments, run inside each checkout (venv mode)")
    add(
        "--kvbench-spec", default="",
        help="where kvbench comes from, installed into both venvs after --pip-install: a kvbench directory"
        " (installed editable) or pip arguments; empty: the checkout is kvbench",
    )
    add("--run-args", default="", help="extra `kvbench run` arguments for both sides, as one string")
    add(
        "--out", default=str(Path(tempfile.gettempdir()) / "kvbench-gate"),
        help="where checkouts, venvs, results, summary.md and benchmark-action.json go (outside the repository)",
    )
    args = parser.parse_args(argv)
    if args.threshold_pct is not None and args.threshold_pct < 0:
        parser.error("--threshold-pct takes a non-negative percentage, such as 10")
    return args


def main(argv: list[str] | None = None) -> int:
    return gate(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
