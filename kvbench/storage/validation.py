"""What a results document may hold: every field the type its dataclass declares, settings within their
bounds, times a generate() can take, figures within what any device or model has. The first problem is
named in one line."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import fields
from enum import Enum
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.model.cells import Cell
from kvbench.model.costs import DatasheetPeaks, MeasuredPeaks, ModelCost
from kvbench.model.modes import MODES
from kvbench.model.records import BenchmarkResult, RunRecord
from kvbench.model.settings import LARGEST_INTEGER, MOST_NAME_CHARACTERS, BenchConfig, config_fields
from kvbench.model.validation import bound_problem

# Seconds a generate() can take: beyond these the statistics overflow or divide by zero.
SHORTEST_S, LONGEST_S = 1e-9, 1e7
# Energy, within a float's comfortable range.
MOST_JOULES = 1e12
# Text shown to people (notes, a cell's reason, the environment's values, any key): far beyond what kvbench
# writes (a failure's reason is recorded cut to a tenth of it), far below what drawing it in a table would take
# minutes over. The model names in a file are held to MOST_NAME_CHARACTERS, as the command line holds them.
MOST_TEXT_CHARACTERS = 100_000
# Text as long as the user made it (the prompt, and the command that holds it) or the model generated: bounded
# by the file's size alone, and shown cut short (compare) or only when asked for (show --show-output).
_TEXT_OF_ANY_LENGTH = {("", "command"), ("config", "prompt")}


def check_run_times(runs: list[RunRecord], origin: str) -> None:
    """Refuse what no generate() can record (NaN, infinite, zero, negative or absurd times, tokens out of
    order or after the end, negative energy): judged, they would print "+nan%" or "-332% faster", or
    overflow, instead of failing."""
    for run in runs:
        where = f"{origin}: run {run.run} of {run.mode} in cell {run.cell!r}"
        times = {"latency_s": run.latency_s, "time_to_first_token_s": run.time_to_first_token_s}
        for name, value in times.items():
            if value is None and name == "time_to_first_token_s":
                continue
            if value is None or not (_finite_positive(value) and SHORTEST_S <= value <= LONGEST_S):
                raise KvbenchError(
                    f"{where} has {name} {_shown(value)}, not a number of seconds a generate() can take;"
                    " the file is damaged, rerun kvbench run"
                )
        if run.time_to_first_token_s is not None and run.time_to_first_token_s > run.latency_s:
            raise KvbenchError(
                f"{where} has its first token after its end (time_to_first_token_s > latency_s); the file is"
                " damaged, rerun kvbench run"
            )
        if run.new_tokens < 1 or run.batch_size < 1:
            raise KvbenchError(f"{where} has {run.new_tokens} new tokens in batches of {run.batch_size}; the file is damaged")
        times_s = run.token_times_s
        # Stored to the microsecond: the last may read a hair past the end.
        finite = all(math.isfinite(t) and t >= 0 for t in times_s)
        in_order = finite and all(a <= b for a, b in zip(times_s, times_s[1:]))
        if not in_order or (times_s and times_s[-1] > run.latency_s + 1e-3):
            raise KvbenchError(
                f"{where} has token_times_s that are not finite, in order and within its latency; the file is"
                " damaged, rerun kvbench run"
            )
        for name, pairs in (("memory_timeline", run.memory_timeline), ("allocated_by_position", run.allocated_by_position)):
            if pairs and not all(len(pair) == 2 and all(_finite_non_negative(x) for x in pair) for pair in pairs):
                raise KvbenchError(
                    f"{where} has a {name} that is not a list of [{_PAIRS[name]}] pairs of finite non-negative"
                    " numbers; the file is damaged, rerun kvbench run"
                )
        energy = run.energy_j
        if energy is not None and not (math.isfinite(energy) and 0 <= energy <= MOST_JOULES):
            raise KvbenchError(f"{where} has energy_j {_shown(energy)}, not a number of joules; the file is damaged")


_PAIRS = {"memory_timeline": "seconds, bytes", "allocated_by_position": "position, bytes"}


def _finite_non_negative(value: float) -> bool:
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an integer too large for a float
        return False


# Fields a results file always holds although the dataclass gives them a default.
_REQUIRED_IN_FILE: dict[type, tuple[str, ...]] = {BenchmarkResult: ("cells", "runs")}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# The exact types a JSON reader gives that the item check below accepts for these annotations (not bool).
_PLAIN_NUMBER_TYPES: dict[Any, tuple[type, ...]] = {float: (int, float), int: (int,)}


def _type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """What is wrong with a JSON value against a dataclass field's annotation, or None. The annotations
    are the one declaration of the format: this reads them rather than repeating them."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        problems = [_type_problem(value, option, where) for option in options]
        return None if None in problems else problems[0]
    if dataclasses.is_dataclass(annotation):
        return _object_problem(value, annotation, where)
    if origin is list:
        if not isinstance(value, list):
            return f"{where} must be a list, got {_shown(value)}"
        (item_type,) = typing.get_args(annotation)
        # A run's token times are hundreds of numbers: checked in one pass, item by item only to name a problem.
        plain = _PLAIN_NUMBER_TYPES.get(item_type)
        if plain is not None and all(type(item) in plain for item in value):
            return None
        return next((p for i, item in enumerate(value) if (p := _type_problem(item, item_type, f"{where}[{i}]"))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} must be an object, got {_shown(value)}"
        _, value_type = typing.get_args(annotation)
        return next((p for key, item in value.items() if (p := _type_problem(item, value_type, f"{where}.{key}"))), None)
    if annotation is type(None):
        return None if value is None else f"{where} must be null, got {_shown(value)}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = [member.value for member in annotation]
        return None if value in values else f"{where} {_shown(value)} is not one of {', '.join(values)}"
    # bool is an int subclass in Python, but true is not a count; an integer is a fine float.
    accepted = {float: (int, float)}.get(annotation, annotation)
    if isinstance(value, accepted) and (annotation is bool or not isinstance(value, bool)):
        return None
    return f"{where} must be {_TYPE_NAMES.get(annotation, annotation.__name__)}, got {_shown(value)}"


def _object_problem(value: Any, cls: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be an object, got {_shown(value)}"
    required = _REQUIRED_IN_FILE.get(cls, ())
    for item in fields(cls):
        name = f"{where}.{item.name}" if where else item.name
        if item.name not in value:
            no_default = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            if no_default or item.name in required:
                return f"{name} is missing"
            continue
        problem = _type_problem(value[item.name], _hints(cls)[item.name], name)
        if problem is not None:
            return problem
    return None


def check_fields(data: dict[str, Any], origin: str) -> None:
    """Every field of a results file has the type its dataclass declares, the settings have the types
    BenchConfig declares, and states, modes and cell references are ones kvbench writes; the first
    problem is named in one line."""
    problem = fields_problem(data)
    if problem is not None:
        raise KvbenchError(f"{origin} is a damaged kvbench results file: {problem}; rerun kvbench run to replace it")


def fields_problem(data: dict[str, Any]) -> str | None:
    """What check_fields would refuse in a results document, or None."""
    problem = _object_problem(data, BenchmarkResult, "") or _oversized(data, "")
    if problem is None:
        config = data["config"]
        hints = _hints(BenchConfig)
        problem = next(
            (p for key in hints if key in config if (p := _type_problem(config[key], hints[key], f"config.{key}"))),
            None,
        )
    if problem is None:
        problem = _meaning_problem(data)
    return problem


# Bounds no real device or model reaches, so a stored figure beyond them is damage, not a measurement:
# within them the roofline's arithmetic stays finite.
_PLAUSIBLE = {
    "copy_bandwidth_bytes_per_s": (1e6, 1e15),
    "memory_bandwidth_bytes_per_s": (1e6, 1e15),
    "matmul_flops_per_s": (1e6, 1e18),
    "fp16_tensor_flops_per_s": (1e6, 1e18),
    "bf16_tensor_flops_per_s": (1e6, 1e18),
    "fp32_flops_per_s": (1e6, 1e18),
    "tf32_tensor_flops_per_s": (1e6, 1e18),
    "matmul_flops_by_dtype": (1e6, 1e18),
    "bytes_per_element": (1, 8),
}


def _explained_problem(value: Any, cls: type, where: str) -> str | None:
    """The inputs `show` and `plot` compute the roofline from (stored peaks, a model's cost): the types
    their dataclass declares, and every number finite and positive (a zero would divide, a negative bound
    would mean nothing); the two parameter counts of a cost, and its
    intermediate size (a file from before it was recorded), may be 0."""
    problem = _object_problem(value, cls, where)
    if problem is not None:
        return problem
    for item in fields(cls):
        number = value.get(item.name)
        if isinstance(number, dict):  # figures by type: each held to the same bounds
            for key, figure in number.items():
                low, high = _PLAUSIBLE.get(item.name, (0, math.inf))
                if not (_finite_positive(figure) and low <= figure <= high):
                    return f"{where}.{item.name}.{key} must be a figure within {low:g}..{high:g}, got {_shown(figure)}"
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            may_be_zero = item.name in ("lookup_parameters", "head_parameters", "intermediate_size") and number == 0
            if not (may_be_zero or _finite_positive(number)):
                return f"{where}.{item.name} must be a finite positive number, got {_shown(number)}"
            low, high = _PLAUSIBLE.get(item.name, (0, math.inf))
            if not may_be_zero and not low <= number <= high:
                shown = f"{_shown(number)} is outside what any device or model has ({low:g}..{high:g})"
                return f"{where}.{item.name} {shown}"
    parts = value.get("lookup_parameters", 0) + value.get("head_parameters", 0)
    if "parameters" in value and parts > value["parameters"]:
        return f"{where}: lookup_parameters and head_parameters add up to more than parameters"
    return None


def _oversized(document: Any, where: str) -> str | None:
    """The first integer anywhere in the document too large to be a count of anything, or text (a value or
    a key) longer than MOST_TEXT_CHARACTERS where it is shown to people (walked without recursion: the
    parser accepts nesting deeper than Python's call stack)."""
    # Each value with its container's path and its key: a path is spelled out only for a container, or for
    # the value named in the answer, not for each of a document's many thousand numbers.
    stack: list[tuple[str | None, Any, Any]] = [(None, where, document)]
    while stack:
        parent, key, value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INTEGER:
            return f"{_path(parent, key) or 'a value'} is an integer too large to be a count ({len(str(value))} digits)"
        if type(value) is str and len(value) > MOST_TEXT_CHARACTERS and not _of_any_length(parent, key):
            return f"{_path(parent, key)} is {_too_long(value, MOST_TEXT_CHARACTERS, 'text in a results file')}"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if items:
            path = _path(parent, key)
            if isinstance(value, dict) and (long_key := next((k for k in value if len(k) > MOST_TEXT_CHARACTERS), None)):
                return f"a key of {path or 'the document'} is {_too_long(long_key, MOST_TEXT_CHARACTERS, 'a key')}"
            stack.extend(reversed([(path, inner_key, item) for inner_key, item in items]))
    return None


def _of_any_length(parent: str | None, key: Any) -> bool:
    """Whether the text at `key` of the container at `parent` may be as long as the file holds."""
    return (parent, key) in _TEXT_OF_ANY_LENGTH or (parent or "").endswith(".generated_text")


def _too_long(text: str, most: int, what: str) -> str:
    return f"{len(text):,} characters long, more than the {most:,} {what} may have"


def _path(parent: str | None, key: Any) -> str:
    """Where a value is: `key` itself at the top, else its container's path with `[index]` or `.name`."""
    if parent is None:
        return key
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}" if parent else str(key)


def _finite_positive(value: Any) -> bool:
    """A number JSON may hold that is finite and above 0; an integer too large for a float is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:
        return False


# What a cell's model record (kvbench.measure.loading.LoadedModel.info) holds that renderers and compare read; the rest
# of it is shown as it is or not at all.
_MODEL_INFO: dict[str, Any] = {"dtype": str, "weights": str, "attn_implementation": str | None}


def _meaning_problem(data: dict[str, Any]) -> str | None:
    for key, cls in (("device_peaks", MeasuredPeaks), ("datasheet_peaks", DatasheetPeaks)):
        if data["environment"].get(key) is not None:
            if problem := _explained_problem(data["environment"][key], cls, f"environment.{key}"):
                return problem
    for index, model in enumerate(data["config"].get("model") or ()):
        if len(model) > MOST_NAME_CHARACTERS:
            return f"config.model[{index}] is {_too_long(model, MOST_NAME_CHARACTERS, 'a model name')}"
    ids = set()
    limits = config_fields()
    for index, cell in enumerate(data["cells"]):
        # The same bounds the command line holds a setting to (the roofline and plots step through lengths).
        for name, value in cell["settings"].items():
            if name in limits and isinstance(value, int) and (problem := bound_problem(limits[name], value)):
                return f"cells[{index}].settings.{name} {problem}"
        if len(cell["settings"]["model"]) > MOST_NAME_CHARACTERS:
            shown = _too_long(cell["settings"]["model"], MOST_NAME_CHARACTERS, "a model name")
            return f"cells[{index}].settings.model is {shown}"
        model = cell.get("model") or {}
        for key, annotation in _MODEL_INFO.items():
            if key in model and (problem := _type_problem(model[key], annotation, f"cells[{index}].model.{key}")):
                return problem
        cost = model.get("cost")
        if cost is not None and (problem := _explained_problem(cost, ModelCost, f"cells[{index}].model.cost")):
            return problem
        # A setting added since the file was written (prompt_tokens) takes its default, as when it is built.
        settings = cell["settings"]
        ids.add(Cell(**{item.name: settings[item.name] for item in fields(Cell) if item.name in settings}).id)
    for index, run in enumerate(data["runs"]):
        if run["mode"] not in MODES:
            return f"runs[{index}].mode {_shown(run['mode'])} is not one of {', '.join(MODES)}"
        if run["cell"] not in ids:
            return f"runs[{index}].cell {_shown(run['cell'])} names no cell of the file"
    return None


def measured_peaks_problem(value: Any) -> str | None:
    """What is wrong with stored device peaks (a results file's, or the peaks cache's), or None."""
    return _explained_problem(value, MeasuredPeaks, "device_peaks")
