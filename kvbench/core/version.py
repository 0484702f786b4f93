"""kvbench's version: one place that the results file, --version and the wheel read."""

__version__ = "0.1.0"
