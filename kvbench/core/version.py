"""kvbench's version: one place that the results file, --version and the wheel read."""

import re

__version__ = "0.1.0"


def newer_than_this(version: object) -> bool:
    """Whether a version a results file records is later than this kvbench's; one that does not read as a
    version (none, or not numbers) is not said to be."""
    return _release(version) > _release(__version__)


def _release(version: object) -> tuple[int, ...]:
    """The leading numbers of a version ("0.2.0.dev1": 0, 2, 0), zeros dropped from the end so that 1.0 and
    1.0.0 are one release."""
    # Bounded: the text comes from a file, and a number of thousands of digits is no release.
    match = re.match(r"\d{1,9}(?:\.\d{1,9}){0,9}", version) if isinstance(version, str) else None
    numbers = [int(part) for part in match.group().split(".")] if match else []
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)
