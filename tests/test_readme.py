"""The README's and the docs pages' examples are real: every TOML block is a valid experiment file whose every
cell passes the checks a run makes, and every `kvbench` command in a shell block parses with the current
command line."""

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.model.experiment import build_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
# Every page a user reads: the README first, then each docs page.
PAGES = {"README.md": README} | {
    f"docs/{page.name}": page.read_text(encoding="utf-8") for page in sorted((REPO / "docs").glob("*.md"))
}


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def kvbench_commands(text: str = README) -> list[list[str]]:
    """Each `kvbench …` invocation in the shell blocks, as argument lists (comments, pipes and
    redirections cut off; `&&` chains split)."""
    found = []
    for block in blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            line = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
            for part in re.split(r"&&|\|\||;", line):
                words = shlex.split(re.split(r"[|>]", part)[0])
                for index, word in enumerate(words):
                    if word == "kvbench" or word.endswith("/kvbench"):
                        found.append(words[index + 1 :])
                        break
    return found


TOML_BLOCKS = [(page, block) for page, text in PAGES.items() for block in blocks("toml", text)]
COMMANDS = [(page, args) for page, text in PAGES.items() for args in kvbench_commands(text)]


def test_the_readme_and_the_docs_have_examples_to_check():
    assert len(kvbench_commands(README)) >= 8
    assert len(PAGES) > 1 and len(TOML_BLOCKS) >= 1 and len(COMMANDS) > len(kvbench_commands(README))


@pytest.mark.parametrize(("page", "text"), TOML_BLOCKS, ids=[page for page, _ in TOML_BLOCKS])
def test_toml_blocks_are_valid_experiments(page, text, tmp_path, monkeypatch):
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    build_config(path, {})
    # Every cell's model and length, checked as a run checks them before measuring.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--dry-run", "--device", "cpu"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("page", "args"), COMMANDS, ids=[f"{page}: {' '.join(args)[:60]}" for page, args in COMMANDS])
def test_commands_parse(page, args):
    group = get_command(app)
    assert args and not args[0].startswith("-"), f"{page}: a documented command names its subcommand first"
    command = group.get_command(None, args[0])
    assert command is not None, f"{page}: kvbench has no command {args[0]!r}"
    command.make_context(args[0], list(args[1:]))


def test_ci_runs_the_readmes_test_command_verbatim():
    """CI must run what a user runs: the README's test command, with its xdist options, word for word."""
    (command,) = [line for block in blocks("bash") for line in block.splitlines() if "-m pytest" in line]
    assert "-n auto --dist loadfile" in command
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
