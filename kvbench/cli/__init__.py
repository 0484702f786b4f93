"""The `kvbench` command line: one module per command, each parsing options and calling the library."""

from kvbench.cli import capacity, compare, gate, plot, run, show
from kvbench.cli.app import Command, app, main

# In the order --help lists them. A new command is a module and a line here.
for command in (run.run, show.show, compare.compare, plot.plot, gate.gate, capacity.capacity):
    app.command(cls=Command)(command)

__all__ = ["app", "main"]
