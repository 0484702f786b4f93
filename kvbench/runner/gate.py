"""The CI gate: measure a base and a head checkout with one config, alternating, and judge head against base.

`kvbench gate` runs it, the same on a laptop as in the GitHub action (`action.yml`):

    kvbench gate --base origin/main --head . --config configs/ci-gpu.toml

Each side is a directory or a git revision (checked out as a detached worktree). The config and the
regression threshold are read from the base checkout, so a change cannot edit its own gate. Each side
runs the config twice, in the order base, head, head, base, so a machine that drifts steadily (warming,
throttling) slows both sides alike; each side's two halves are then one results file. The verdict is one
`kvbench compare base.json head.json --format markdown --fail-on-regression PCT` call, run with base's
kvbench: its markdown is the summary, its exit code the gate's.

It only drives the kvbench command line of the two checkouts (never importing their code), so it imports
nothing beyond the standard library and kvbench's error type.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from kvbench.compare.judging import EXIT_CODES, zero_threshold_problem
from kvbench.core.errors import KvbenchError
from kvbench.core.jsontext import json_text
from kvbench.runner.gate_summary import comment_markdown, environment_of, header, run_url, write_github_files

GATE_FILE = ".github/kvbench-gate.env"
THRESHOLD_KEY = "KVBENCH_REGRESSION_PCT"
DEFAULT_THRESHOLD_PCT = 10.0
DEFAULT_CONFIG = "configs/ci-gpu.toml"
INSTALL_MODES = ("venv", "pythonpath")
# Where the gate works unless --out says otherwise: this folder in the system's temporary directory.
OUT_FOLDER = "kvbench-gate"
# The file that marks a folder as the gate's: there, and only there, it removes and replaces its own files.
OUT_MARK = ".kvbench-gate"
# What the gate writes in its folder (and removes there before it runs): the results files with the runs' CSVs
# beside them, the summary and the comment made from it, the export, and each side's checkout, venv and torch pin.
RESULTS_FILES = ("base.json", "head.json", "base-1.json", "base-2.json", "head-1.json", "head-2.json")
OUT_FILES = (
    *RESULTS_FILES,
    *(name.replace(".json", ".csv") for name in RESULTS_FILES),
    "summary.md",
    "comment.md",
    "benchmark-action.json",
    *(f"{side}{part}" for side in ("base", "head") for part in ("-src", "-venv", "-torch-constraint.txt")),
)
# How the summary the gate writes begins: a folder holding one is the gate's, from before the mark existed.
SUMMARY_START = "### kvbench gate:"
# A push that creates a branch reports this as its "before" commit: there is nothing to compare with.
NULL_SHA = "0" * 40
# The gate's own exit code when it could not run; its verdicts' codes are compare's (EXIT_CODES).
EXIT_PASS, EXIT_ERROR = EXIT_CODES["pass"], 2
# The order the two sides are measured in: each side's mean time sits at the same point of the session,
# so a steady drift of the machine adds the same to both.
ORDER = ("base", "head", "head", "base")


class GateError(Exception):
    """Something that keeps the gate from judging; its message names the problem and, where it can, the fix.
    Unlike a KvbenchError it still ends in a summary (verdict `error`, exit 2)."""


def default_out() -> Path:
    return Path(tempfile.gettempdir()) / OUT_FOLDER


def _option(default: Any, metavar: str, help: str, *, shown: str | None = None, factory: Any = None) -> Any:
    """A GateOptions field with what `kvbench gate --help` says of it: its value's name, its help, and, for a
    default that stands for something (empty: none; None: read from a file), the words shown for it."""
    metadata = {"metavar": metavar, "help": help, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class GateOptions:
    """What `kvbench gate` was asked to do: each option declared once, with its help and the default --help
    shows (see shown_default); the command line's options are made from these fields."""

    base: str = _option(
        "", "REV|DIR", "Base checkout: a git revision of --repo or a directory.", shown="none, compare with --baseline-file"
    )
    head: str = _option(".", "REV|DIR", "Head checkout: a git revision of --repo or a directory.")
    repo: Path = _option(Path("."), "DIR", "The git repository revisions are taken from.")
    config: str = _option(DEFAULT_CONFIG, "TOML", "kvbench config, a path in the base checkout.")
    threshold_pct: float | None = _option(
        None,
        "PCT",
        "The slowdown the gate must rule out: it passes a measurement whose interval lies wholly below +PCT%,"
        " and fails one wholly above (regression) or across it (inconclusive).",
        shown=f"{THRESHOLD_KEY} in the base's --gate-file, else {DEFAULT_THRESHOLD_PCT:g}",
    )
    gate_file: str = _option(GATE_FILE, "FILE", "File in the base checkout holding KVBENCH_REGRESSION_PCT=PCT.")
    pass_inconclusive: bool = _option(
        False,
        "",
        "Let inconclusive measurements pass (exit 0, not 4): the gate then fails only where the data show a"
        " slowdown of more than PCT; the summary still names them (compare's --pass-inconclusive).",
        shown="off",
    )
    baseline_file: str = _option(
        "", "FILE", "Results file in the head checkout to compare with when there is no --base.", shown="none"
    )
    install: str = _option(
        INSTALL_MODES[0],
        "MODE",
        "venv: a fresh venv per side that sees --python's packages and keeps its torch; pythonpath: run"
        " `python -m kvbench` with the checkout on PYTHONPATH, installing nothing.",
    )
    python: str = _option(sys.executable, "PYTHON", "Interpreter for the venvs (or pythonpath runs).", shown="this one")
    torch: str = _option(
        "",
        "REQUIREMENT",
        "pip arguments installing torch into each venv first, e.g. 'torch==2.6.0 --index-url URL'"
        " (the CUDA build your driver runs).",
        shown="reuse --python's torch, never replaced",
    )
    pip_install: str = _option("-e .", "ARGS", "pip install arguments, run inside each checkout (venv mode).")
    kvbench_spec: str = _option(
        "",
        "SPEC",
        "Where kvbench comes from, installed into both venvs after --pip-install: a kvbench directory"
        " (installed editable) or pip arguments.",
        shown="the checkout is kvbench",
    )
    run_args: str = _option("", "ARGS", "Extra `kvbench run` arguments for both sides, as one string.", shown="none")
    out: Path = _option(
        None,
        "DIR",
        "Where checkouts, venvs, results, summary.md and benchmark-action.json go, outside the head checkout.",
        shown=f"<temp>/{OUT_FOLDER}",
        factory=default_out,
    )

    def check(self) -> None:
        if self.threshold_pct is not None and not 0 <= self.threshold_pct < float("inf"):
            raise KvbenchError("--threshold-pct takes a non-negative percentage, such as 10")
        if self.threshold_pct == 0 and not self.pass_inconclusive:
            raise KvbenchError(zero_threshold_problem("--threshold-pct 0"))
        if self.install not in INSTALL_MODES:
            raise KvbenchError(f"--install is {self.install!r}; give {' or '.join(INSTALL_MODES)}")


def shown_default(name: str) -> str:
    """The default `kvbench gate --help` shows for an option: the words for what its GateOptions field's
    value stands for, where the field has them, else the value."""
    item = next(item for item in fields(GateOptions) if item.name == name)
    if item.metadata["shown"] is not None:
        return item.metadata["shown"]
    assert item.default is not MISSING  # a default made by a factory stands for something: it is described
    return str(item.default)


@dataclass
class GateOutcome:
    """The verdict, the exit code, the summary's markdown and the step outputs the action publishes."""

    verdict: str
    exit_code: int
    summary: str
    outputs: dict[str, str]


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


def claim_out_folder(out: Path) -> None:
    """Make `out` the gate's folder, marked as such, or refuse it, before anything there is removed or
    replaced: a folder the gate did not make may hold a user's own head.json or summary.md, which the gate
    would take for its own."""
    mark = out / OUT_MARK
    if mark.is_file():
        return
    if out.is_dir():
        found = [name for name in OUT_FILES if (out / name).exists() or (out / name).is_symlink()]
        if found and not _summary_by_the_gate(out / "summary.md"):
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise KvbenchError(
                f"--out {out} holds files the gate would replace ({shown}) but did not write (it marks its"
                f" folders with {OUT_MARK}); give an empty or new directory"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark.write_text("kvbench gate's folder: each run replaces its results, summary, checkouts and venvs here.\n")
    except OSError as error:
        raise KvbenchError(f"--out {out} cannot be made ({error.strerror}); give a directory you can write") from None


def _summary_by_the_gate(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(len(SUMMARY_START)) == SUMMARY_START
    except (OSError, UnicodeDecodeError):
        return False


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
                threshold = math.nan
            if not 0 <= threshold < math.inf:
                raise GateError(f"{path}: {THRESHOLD_KEY}={raw!r} is not a non-negative percentage; write one, such as 10")
            return threshold, f"{THRESHOLD_KEY} in {side.name}'s `{gate_file}`"
    return DEFAULT_THRESHOLD_PCT, f"the default, as {side.name}'s `{gate_file}` has no {THRESHOLD_KEY}"


def choose_config(trusted: Side, head: Side, name: str) -> tuple[Path, str]:
    """The config both sides run, and the summary's note on it: the base's, so a change does not choose its
    own benchmark; head's only where the base has none, as in the pull request that adds the gate (every
    team's first), whose base predates it. From the next pull request on, the base has it."""
    config = trusted.checkout / name
    if config.is_file():
        return config, f"Config `{name}` from {trusted.name}."
    if trusted is not head and (head.checkout / name).is_file():
        return head.checkout / name, (
            f"Config `{name}` from head, for both sides: base has none (the pull request that adds the gate);"
            " from the next pull request on, the base's is read."
        )
    where = f"the {trusted.name} checkout {trusted.checkout}" + (" nor in head's" if trusted is not head else "")
    raise GateError(f"{name} is not in {where}; check --config (a path in the checkout)")


def torch_version(python: Path) -> str | None:
    """The version of the torch `python` would import, without importing it (seconds, and no CUDA)."""
    probe = "import importlib.metadata as m\ntry: print(m.version('torch'))\nexcept m.PackageNotFoundError: pass"
    completed = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return completed.stdout.strip() or None


# Prints, for an interpreter, whether it is a venv's and the directories its packages are installed in.
SITE_PROBE = (
    "import sys, sysconfig\n"
    "print(sys.prefix != sys.base_prefix)\n"
    "print(*dict.fromkeys(sysconfig.get_paths()[key] for key in ('purelib', 'platlib')), sep='\\n')"
)


def reuse_venv_packages(python: str, venv_python: Path) -> None:
    """Where `python` is a venv's (the README's install puts torch in one), let the new venv see that venv's
    packages: `--system-site-packages` shows it the packages of the interpreter the venv was made from, which
    is the base interpreter, not the venv. A .pth file adds them to the path after the venv's own, as plain
    directories, so their .pth files (an editable kvbench among them) do not reach the new venv."""
    given = subprocess.run([python, "-c", SITE_PROBE], capture_output=True, text=True)
    lines = given.stdout.split("\n")
    if given.returncode != 0 or lines[0] != "True":
        return
    own = subprocess.run([str(venv_python), "-c", SITE_PROBE], capture_output=True, text=True, check=True)
    site_packages = Path(own.stdout.split("\n")[1])
    (site_packages / "kvbench-gate-reuse.pth").write_text("".join(f"{line}\n" for line in lines[1:] if line))


def prepare(side: Side, options: GateOptions, work: Path) -> None:
    """Make `side.kvbench` run that checkout's kvbench: a fresh venv that reuses the system's packages
    (the runner's CUDA torch, which pip is then not allowed to replace), or, for quick local runs and
    tests, the checkout on PYTHONPATH."""
    if options.install == "pythonpath":
        side.kvbench = [options.python, "-m", "kvbench"]
        paths = [str(side.checkout), os.environ.get("PYTHONPATH")]
        side.env = {"PYTHONPATH": os.pathsep.join(filter(None, paths))}
        return
    venv = work / f"{side.name}-venv"
    shutil.rmtree(venv, ignore_errors=True)
    log(f"{side.name}: creating {venv}")
    created = subprocess.run([options.python, "-m", "venv", "--system-site-packages", str(venv)], stdout=sys.stderr)
    if created.returncode != 0:
        raise GateError(f"{options.python} -m venv failed; give --python an interpreter with the venv module")
    venv_python = venv / "bin" / "python"
    reuse_venv_packages(options.python, venv_python)

    def pip_install(what: str, env: dict[str, str]) -> None:
        log(f"{side.name}: pip install {what}")
        command = [str(venv_python), "-m", "pip", "install", "--quiet", *shlex.split(what)]
        if subprocess.run(command, cwd=side.checkout, env={**os.environ, **env}, stdout=sys.stderr).returncode != 0:
            raise GateError(f"{side.name}: pip install {what} failed in {side.checkout} (see the log above)")

    if options.torch:
        pip_install(options.torch, {})
    torch = torch_version(venv_python)
    if torch is None:
        # Left to itself pip would fetch the newest CUDA torch into each venv: gigabytes, minutes, and a
        # build the runner's driver may not run.
        raise GateError(
            f"{options.python} has no torch the venvs can reuse; install a CUDA build of torch for it on the"
            " runner, or give --torch (the action's `torch` input) a pip requirement such as"
            " 'torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124'"
        )
    pinned = work / f"{side.name}-torch-constraint.txt"
    pinned.write_text(f"torch=={torch}\n")
    log(f"{side.name}: torch {torch}, kept as it is")
    # A kvbench directory is installed editable, so the checkout's own kvbench is the one measured.
    kvbench_spec = options.kvbench_spec
    if kvbench_spec and Path(kvbench_spec).is_dir():
        kvbench_spec = f"-e {shlex.quote(kvbench_spec)}"
    for what in filter(None, [options.pip_install, kvbench_spec]):
        pip_install(what, {"PIP_CONSTRAINT": str(pinned)})
    if not (venv / "bin" / "kvbench").exists():
        raise GateError(f"{side.name}: no kvbench in {venv} after pip install; give --kvbench-spec where kvbench comes from")
    side.kvbench = [str(venv / "bin" / "kvbench")]


def measure(side: Side, config: Path, run_args: list[str], output: Path) -> None:
    log(f"{side.name}: kvbench run --config {config} {shlex.join(run_args)} --output {output}".replace("  ", " "))
    output.unlink(missing_ok=True)
    completed = side.run(["run", "--config", str(config), *run_args, "--output", str(output)])
    if completed.returncode != 0 or not output.is_file():
        raise GateError(f"{side.name}: kvbench run exited {completed.returncode} (see the log above)")


def merge_halves(first: Path, second: Path, merged: Path) -> None:
    """One results file holding both halves' runs, the second's numbered on from the first's. The summary
    and explanation blocks are derived from the runs, so they are left out and compare derives them."""
    try:
        document, later = json.loads(first.read_bytes()), json.loads(second.read_bytes())
        last_run: dict[tuple[str, str], int] = {}
        for run in document["runs"]:
            key = (run["cell"], run["mode"])
            last_run[key] = max(last_run.get(key, -1), run["run"])
        for run in later["runs"]:
            run["run"] += last_run.get((run["cell"], run["mode"]), -1) + 1
        document["runs"] += later["runs"]
        known = {cell["id"] for cell in document["cells"]}
        document["cells"] += [cell for cell in later["cells"] if cell["id"] not in known]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GateError(f"cannot join {first.name} and {second.name} into {merged.name}: {error!r}") from None
    document["complete"] = bool(document.get("complete")) and bool(later.get("complete"))
    document["updated_at"] = later.get("updated_at", document.get("updated_at"))
    document.pop("summary", None)
    document.pop("explained", None)
    merged.write_text(json_text(document), encoding="utf-8")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_untouched(digests: dict[Path, str]) -> None:
    """Base's results, as base wrote them: head's code ran after them, as the same user, and must not be
    able to make its own reference faster or slower."""
    for path, digest in digests.items():
        now = sha256_of(path) if path.is_file() else "(gone)"
        if now != digest:
            raise GateError(
                f"{path} changed after base wrote it (sha256 {digest[:12]}…, now {now[:12]}…), while head's code"
                " ran; the gate does not judge against results it cannot trust"
            )


# kvbench compare's exit codes under --fail-on-regression, and the gate's verdict for each; the gate exits
# with the same code, so a workflow reads one set of numbers.
COMPARE_VERDICTS = {code: outcome for outcome, code in EXIT_CODES.items()}


def judge(
    judge_side: Side,
    head: Side,
    reference: Path | None,
    head_json: Path,
    threshold: float,
    notes: list[str],
    pass_inconclusive: bool = False,
) -> tuple[str, int, str]:
    """The verdict, the exit code and the summary's body: one `kvbench compare` call decides, its markdown
    is the body and its exit code the gate's. With nothing to compare with, head's table, unjudged."""
    if reference is None:
        notes.append("No base commit and no committed baseline: head was measured, nothing was judged.")
        shown = head.run(["show", str(head_json)], capture=True).stdout.rstrip()
        return "no-baseline", EXIT_PASS, f"```\n{shown}\n```\n" if shown else ""
    gate_args = ["--fail-on-regression", f"{threshold:g}", *(["--pass-inconclusive"] if pass_inconclusive else [])]
    compared = judge_side.run(
        ["compare", str(reference), str(head_json), "--format", "markdown", *gate_args],
        capture=True,
    )
    sys.stderr.write(compared.stderr)
    notes.append(
        f"Judged by {judge_side.name}'s kvbench: `kvbench compare {' '.join(gate_args)}` exited {compared.returncode}."
    )
    if compared.returncode in COMPARE_VERDICTS:
        return COMPARE_VERDICTS[compared.returncode], compared.returncode, compared.stdout
    return "error", EXIT_ERROR, f"{compared.stdout}\n```\n{compared.stderr.strip()}\n```\n"


def run_gate(options: GateOptions) -> GateOutcome:
    """Measure, judge and write the summary (to `out/summary.md` and, in GitHub Actions, the job's page)."""
    options.check()
    repo = Path(options.repo).resolve()
    out = Path(options.out).expanduser().resolve()
    # Refused before anything is made or removed there: head's code must not be able to reach base's
    # results, and a folder the user did not mean is not emptied of its results files.
    if Path(options.head).is_dir() and out.is_relative_to(Path(options.head).resolve()):
        raise KvbenchError(f"--out {out} is inside the head checkout; give a directory outside it")
    claim_out_folder(out)
    base_spec = options.base.strip()
    if base_spec == NULL_SHA:
        base_spec = ""
    worktrees: list[Path] = []
    notes: list[str] = []
    verdict, code, judged = "error", EXIT_ERROR, ""
    threshold = options.threshold_pct if options.threshold_pct is not None else DEFAULT_THRESHOLD_PCT
    head_json, base_json, exported_json = out / "head.json", out / "base.json", out / "benchmark-action.json"
    halves = {side: (out / f"{side}-1.json", out / f"{side}-2.json") for side in ("base", "head")}
    # A previous run's files must not pass for this one's, nor stand in the way of its runs (a results
    # file's CSV is refused as one that is there already).
    for name in (*RESULTS_FILES, *(name.replace(".json", ".csv") for name in RESULTS_FILES), exported_json.name):
        (out / name).unlink(missing_ok=True)
    base = head = None
    stored_column: tuple[str, str, dict] | None = None  # the committed baseline, when it stands in for base
    try:
        head_dir, made = resolve_checkout(options.head, repo, out / "head-src")
        worktrees += [head_dir] if made else []
        head = Side("head", head_dir, describe_commit(head_dir))
        if base_spec:
            base_dir, made = resolve_checkout(base_spec, repo, out / "base-src")
            worktrees += [base_dir] if made else []
            base = Side("base", base_dir, describe_commit(base_dir))
        # The gate's settings come from the base: the code under review does not choose its own judge.
        trusted = base or head
        if options.threshold_pct is None:
            threshold, source = read_threshold(trusted, options.gate_file)
            if threshold == 0 and not options.pass_inconclusive:
                raise GateError(zero_threshold_problem(f"{THRESHOLD_KEY}=0 ({source})"))
            notes.append(f"Threshold {threshold:g}%: {source}.")
        else:
            notes.append(f"Threshold {threshold:g}%: given to the gate (--threshold-pct).")
        if options.pass_inconclusive:
            notes.append(
                "Inconclusive measurements pass (--pass-inconclusive): the gate fails only where the data show a"
                f" slowdown of more than {threshold:g}%."
            )
        config, said = choose_config(trusted, head, options.config)
        notes.append(said)
        run_args = shlex.split(options.run_args or "")
        if run_args:
            notes.append(f"Extra `kvbench run` arguments: `{shlex.join(run_args)}`.")

        # Install everything first, so base and head are measured minutes apart with nothing in between.
        for side in filter(None, [base, head]):
            prepare(side, options, out)
        base_digests: dict[Path, str] = {}
        if base is not None:
            sides, waiting = {"base": base, "head": head}, {"base": list(halves["base"]), "head": list(halves["head"])}
            for name in ORDER:
                output = waiting[name].pop(0)
                measure(sides[name], config, run_args, output)
                if name == "base":
                    base_digests[output] = sha256_of(output)
            merge_halves(*halves["base"], base_json)
            merge_halves(*halves["head"], head_json)
            base_digests[base_json] = sha256_of(base_json)
            notes.append("Measured base, head, head, base on this machine; each side's two halves judged as one.")
            reference = base_json
        else:
            measure(head, config, run_args, head_json)
            if options.baseline_file and (head.checkout / options.baseline_file).is_file():
                reference = head.checkout / options.baseline_file
                stored = environment_of(reference)
                commit = (stored.get("kvbench_git_commit") or "")[:7] or "(unknown)"
                stored_column = (f"baseline `{options.baseline_file}`", f"{commit} (committed results)", stored)
                notes.append(f"No base commit given: compared with the committed `{options.baseline_file}`.")
            else:
                reference = None

        # The history export: github-action-benchmark's JSON of head's measurements, by head's kvbench
        # (the export is a record, not the verdict, so the base need not make it).
        exported = head.run(["compare", str(head_json), "--format", "benchmark-action"], True)
        if exported.returncode == 0:
            exported_json.write_text(exported.stdout)

        check_untouched(base_digests)
        verdict, code, judged = judge(trusted, head, reference, head_json, threshold, notes, options.pass_inconclusive)
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
    # For a workflow that posts it on the pull request (opt-in, docs/gpu-ci.md): within GitHub's limit.
    comment_path = out / "comment.md"
    comment_path.write_text(comment_markdown(summary, run_url()))
    outputs = {
        "verdict": verdict,
        "exit-code": str(code),
        "summary": str(summary_path),
        "comment": str(comment_path),
        "base-results": str(base_json) if base_json.is_file() else "",
        "head-results": str(head_json) if head_json.is_file() else "",
        "benchmark-action": str(exported_json) if exported_json.is_file() else "",
    }
    write_github_files(outputs, summary)
    return GateOutcome(verdict, code, summary, outputs)
