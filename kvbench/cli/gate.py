"""`kvbench gate`: a base and a head checkout measured with one config, and the verdict on the head."""

from __future__ import annotations

import sys
import typing
from dataclasses import fields
from typing import Any, Optional

import typer

from kvbench.cli.app import keyword, user_errors, with_options


def gate(**given: Any) -> None:
    """Measure a base and a head checkout with one config (base, head, head, base) and fail on a
    significant slowdown: exit 0 passed, 1 regression, 2 the gate could not run, 3 a measurement could
    not be judged, 4 inconclusive."""
    # The defaults live in GateOptions alone: only what was given on the command line is passed on.
    options = {name: value for name, value in given.items() if value is not None}
    with user_errors():
        from kvbench.runner.gate import GateOptions, run_gate

        outcome = run_gate(GateOptions(**options))
    sys.stdout.write(outcome.summary)
    raise typer.Exit(outcome.exit_code)


def _options() -> list:
    """One option per GateOptions field, its help and metavar from the field's declaration; every option's
    own default is None, so GateOptions alone decides what an absent one means."""
    from kvbench.runner.gate import GateOptions, shown_default

    hints = typing.get_type_hints(GateOptions)
    parameters = []
    for item in fields(GateOptions):
        kind = hints[item.name]
        kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), kind)
        help_text = f"{item.metadata['help']} \\[default: {shown_default(item.name)}]"
        # A switch is one flag, on when given: "--pass-inconclusive", never a "--no-" twin.
        names = [f"--{item.name.replace('_', '-')}"] if kind is bool else []
        option = typer.Option(None, *names, metavar=item.metadata["metavar"], help=help_text)
        parameters.append(keyword(item.name, Optional[kind], option))
    return parameters


with_options(gate, _options())
