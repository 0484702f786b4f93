"""Every command's --help as a terminal of 80 columns shows it: option names whole, sentences unbroken,
each snapshotted (update with `pytest --snapshot-update` when a change to the help is meant)."""

import inspect
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from kvbench.cli import app

runner = CliRunner()
COMMANDS = [[], ["run"], ["show"], ["compare"], ["plot"], ["gate"], ["capacity"]]


def help_text(command: list[str], columns: int) -> str:
    result = runner.invoke(app, [*command, "--help"], prog_name="kvbench", env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def option_names(command: list[str]) -> list[str]:
    group = typer.main.get_command(app)
    chosen = group.commands[command[0]] if command else group  # type: ignore[attr-defined]
    return [
        name
        for param in chosen.params
        if isinstance(param, click.Option) and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kvbench")
def test_help_at_80_columns_keeps_every_option_name_whole(command, snapshot):
    shown = help_text(command, 80)
    assert "…" not in shown
    assert max(map(len, shown.splitlines())) <= 80
    words = set(re.findall(r"-[-\w]+", shown))
    for name in option_names(command):
        assert name in words, name
    assert shown == snapshot


def test_run_help_groups_its_options_into_panels():
    """One table of 40 options made every column share the width: panels of related options instead."""
    from kvbench.cli.run import OTHER_SETTINGS_PANEL, SETTING_PANELS
    from kvbench.model.settings import config_fields

    panelled = [name for names in SETTING_PANELS.values() for name in names]
    assert sorted(panelled) == sorted(config_fields()), "every setting in one panel, once"
    shown = help_text(["run"], 80)
    for panel in ("Run", *SETTING_PANELS):
        assert f"─ {panel} ─" in shown
    assert OTHER_SETTINGS_PANEL not in shown


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kvbench")
def test_help_paragraphs_are_not_broken_where_the_source_lines_end(command):
    """At 300 columns every paragraph of a command's description is one line: a line break inside it was the
    docstring's, mid-sentence."""
    group = typer.main.get_command(app)
    chosen = group.commands[command[0]] if command else group  # type: ignore[attr-defined]
    shown = help_text(command, 300)
    for paragraph in inspect.cleandoc(chosen.callback.__doc__ or "").split("\n\n"):
        if not paragraph.startswith(" "):
            assert " ".join(paragraph.split()) in shown, paragraph
    if command == ["run"]:
        assert "1000 new tokens, 10 runs per mode" in shown


def test_the_help_and_the_tables_name_the_same_default_gpu_memory_sizes():
    from kvbench.analysis.cache_choice import DEFAULT_GPU_MEMORY_BYTES

    sizes = [str(size // 2**30) for size in DEFAULT_GPU_MEMORY_BYTES]
    expected = f"[default: {', '.join(sizes[:-1])} and {sizes[-1]} GiB]"
    assert expected in help_text(["show"], 300)
