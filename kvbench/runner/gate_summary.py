"""The gate's summary: its header (the verdict, each side's commit, device and versions) above compare's
markdown, the pull-request comment made from it, and where they go in GitHub Actions (the step's outputs,
the job's page)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvbench.core.untrusted import printable

# GitHub refuses a comment longer than this many characters; the comment stays below it with room for the
# marker a sticky-comment action adds to find its comment again.
COMMENT_LIMIT = 65_536
COMMENT_ROOM = 1_024

# What the summary's header shows from each results file's environment block.
ENVIRONMENT_ROWS = (
    ("device", "device_name"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("CUDA", "cuda_version"),
    ("driver", "gpu_driver"),
    ("kvbench", "kvbench"),
)


def environment_of(path: Path) -> dict:
    """A results file's environment block, with the kvbench version that wrote it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("environment"), dict):
        return {}  # not a results file: the summary says "—" rather than stop
    return {**data["environment"], "kvbench": data.get("kvbench_version")}


def header(verdict: str, threshold: float, columns: list[tuple[str, str, dict]], notes: list[str]) -> str:
    """The summary's head: the verdict, then each side's commit, device and versions side by side."""
    titles = {
        "pass": f"kvbench gate: passed (no significant slowdown of more than {threshold:g}%)",
        "regression": f"kvbench gate: REGRESSION (significantly slower by more than {threshold:g}%)",
        "no-baseline": "kvbench gate: nothing to compare with yet (measured, not judged)",
        "error": "kvbench gate: could not judge",
        "unjudged": "kvbench gate: could not judge every measurement (fails closed)",
        "inconclusive": f"kvbench gate: INCONCLUSIVE (the data cannot rule out a slowdown of more than {threshold:g}%)",
    }
    lines = [f"### {titles[verdict]}", ""]
    if not columns:  # it stopped before it knew either side
        return "\n".join(lines + [f"{note}  " for note in notes]) + "\n"
    lines.append("| | " + " | ".join(title for title, _, _ in columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    lines.append("| commit | " + " | ".join(_cell(commit) for _, commit, _ in columns) + " |")
    for label, key in ENVIRONMENT_ROWS:
        values = [_cell(str(environment.get(key) or "—")) for _, _, environment in columns]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines.append("")
    lines += [f"{note}  " for note in notes]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A table cell from a commit subject or a results file that head wrote: one line, its controls
    written out, no `|` to break the table."""
    return printable(text, one_line=True).replace("|", "\\|")


def write_github_files(outputs: dict[str, str], summary: str) -> None:
    """In GitHub Actions: the step's outputs, and the summary on the job's page."""
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a") as handle:
            handle.writelines(f"{key}={value}\n" for key, value in outputs.items())
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as handle:
            handle.write(summary)


def comment_markdown(summary: str, run_url: str = "", limit: int = COMMENT_LIMIT - COMMENT_ROOM) -> str:
    """The pull-request comment: the summary, with a link to the run, cut at a line within `limit`
    characters where it is longer (a sweep of many cells), saying how much was left out and where it is."""
    footer = f"\n[The run]({run_url}): its job summary and the `kvbench-results` artifact.\n" if run_url else ""
    if len(summary) + len(footer) <= limit:
        return summary + footer
    lines = summary.splitlines(keepends=True)
    kept, size = [], 0
    note = (
        "\n*{} more lines of the summary are left out here, as a comment holds at most {:,} characters:"
        " the job summary has them all.*\n"
    )
    room = limit - len(footer) - len(note.format(len(lines), COMMENT_LIMIT))
    for line in lines:
        if size + len(line) > room:
            break
        kept.append(line)
        size += len(line)
    return "".join(kept) + note.format(len(lines) - len(kept), COMMENT_LIMIT) + footer


def run_url() -> str:
    """The GitHub Actions run this is, from the variables the runner sets; empty elsewhere."""
    parts = [os.environ.get(name, "") for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return f"{parts[0]}/{parts[1]}/actions/runs/{parts[2]}" if all(parts) else ""
