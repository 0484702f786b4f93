"""Benchmark settings: one dataclass, TOML loading, validation and sweep expansion."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

REFERENCE_PROMPT = "What is KV caching?"
MODES = ("cached", "uncached")
DTYPES = ("auto", "float32", "float16", "bfloat16")
WEIGHTS = ("auto", "pretrained", "random")
# "auto" leaves the choice to transformers (dynamic cache, the model's default attention).
CACHE_IMPLEMENTATIONS = (
    "dynamic",
    "static",
    "offloaded",
    "offloaded_static",
    "quantized",
)
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class BenchConfig:
    """Everything needed to rerun a benchmark. List fields are sweep axes; one value means no sweep."""

    model: list[str] = field(default_factory=lambda: ["gpt2"])
    weights: str = "auto"
    prompt: str = REFERENCE_PROMPT
    prompt_tokens: int | None = None
    max_new_tokens: list[int] = field(default_factory=lambda: [1000])
    batch_size: list[int] = field(default_factory=lambda: [1])
    dtype: list[str] = field(default_factory=lambda: ["auto"])
    cache_implementation: list[str] = field(default_factory=lambda: ["dynamic"])
    attn_implementation: list[str] = field(default_factory=lambda: ["auto"])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    runs: int = 10
    # With target_rse, each cell stops once both modes' relative standard error of the mean is at most
    # target_rse, after min_runs and within max_runs (default: runs) runs per mode.
    target_rse: float | None = None
    min_runs: int = 5
    max_runs: int | None = None
    warmup: int = 1
    device: str = "auto"
    # Spread a model over several GPUs with accelerate ("auto", "balanced", "sequential"); None: one device.
    device_map: str | None = None
    seed: int = 0
    sample_interval_ms: float = 10.0
    memory_sampling: bool = True
    output: str | None = None


SWEEP_AXES = (
    "model",
    "max_new_tokens",
    "batch_size",
    "dtype",
    "cache_implementation",
    "attn_implementation",
)
# What each field must hold; list fields also accept one scalar of the element type.
_FIELD_TYPES: dict[str, tuple[type, bool]] = {
    "model": (str, True),
    "weights": (str, False),
    "prompt": (str, False),
    "prompt_tokens": (int, False),
    "max_new_tokens": (int, True),
    "batch_size": (int, True),
    "dtype": (str, True),
    "cache_implementation": (str, True),
    "attn_implementation": (str, True),
    "modes": (str, True),
    "runs": (int, False),
    "target_rse": (float, False),
    "min_runs": (int, False),
    "max_runs": (int, False),
    "warmup": (int, False),
    "device": (str, False),
    "device_map": (str, False),
    "seed": (int, False),
    "sample_interval_ms": (float, False),
    "memory_sampling": (bool, False),
    "output": (str, False),
}


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: the settings of one cached-vs-uncached comparison."""

    model: str
    max_new_tokens: int
    batch_size: int
    dtype: str
    cache_implementation: str
    attn_implementation: str

    @property
    def id(self) -> str:
        return (
            f"{self.model} new={self.max_new_tokens} batch={self.batch_size} {self.dtype}"
            f" cache={self.cache_implementation} attn={self.attn_implementation}"
        )


def expand(config: BenchConfig) -> list[Cell]:
    """The sweep's cells in a stable order (models outermost, so each model loads once per dtype)."""
    combos = itertools.product(*(getattr(config, axis) for axis in SWEEP_AXES))
    return [Cell(*combo) for combo in combos]


def _type_name(kind: type, is_list: bool) -> str:
    name = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]
    return f"{name} or a list of them" if is_list else name


def _coerce(key: str, value: Any, source: str) -> Any:
    kind, is_list = _FIELD_TYPES[key]

    def check(item: Any) -> Any:
        # bool is an int subclass in Python: refuse `runs = true` rather than read it as 1.
        ok = isinstance(item, kind) and not (kind is not bool and isinstance(item, bool))
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            return float(item)
        if not ok:
            raise KvbenchError(
                f"{source}: '{key}' must be {_type_name(kind, is_list)}, got {item!r}; fix the value"
            )
        return item

    if is_list:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise KvbenchError(f"{source}: '{key}' is an empty list; give at least one value")
        return [check(item) for item in items]
    return check(value)


def apply_settings(config: BenchConfig, settings: dict[str, Any], source: str) -> BenchConfig:
    """Overlay settings (from a TOML file or the command line) on a config, checking names and types."""
    known = {f.name for f in fields(BenchConfig)}
    for key, value in settings.items():
        if key not in known:
            raise KvbenchError(
                f"{source}: unknown setting '{key}'; known settings are {', '.join(sorted(known))}"
            )
        if value is None:
            continue
        setattr(config, key, _coerce(key, value, source))
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; the keys are the long names of `kvbench run`'s options."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvbenchError(f"config file {path} does not exist; check the path") from None
    except OSError as error:
        raise KvbenchError(f"config file {path} cannot be read ({error.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KvbenchError(f"{path}: not valid TOML ({error}); fix the syntax") from None
    # Users write option names as on the command line; accept both spellings.
    return {key.replace("-", "_"): value for key, value in data.items()}


def build_config(config_file: str | Path | None, overrides: dict[str, Any]) -> BenchConfig:
    """Defaults, then the TOML file, then command-line overrides; validated."""
    config = BenchConfig()
    if config_file is not None:
        apply_settings(config, load_toml(config_file), str(config_file))
    apply_settings(config, overrides, "command line")
    validate(config, str(config_file) if config_file else "command line")
    return config


def _require_choice(source: str, key: str, values: list[str] | str, choices: tuple[str, ...]) -> None:
    for value in values if isinstance(values, list) else [values]:
        if value not in choices:
            raise KvbenchError(
                f"{source}: '{key}' cannot be {value!r}; choose one of {', '.join(choices)}"
            )


def validate(config: BenchConfig, source: str = "command line") -> None:
    """Reject impossible values before any model is loaded."""
    for key in ("max_new_tokens", "batch_size"):
        for value in getattr(config, key):
            if value < 1:
                raise KvbenchError(f"{source}: '{key}' must be at least 1, got {value}")
    if config.runs < 1:
        raise KvbenchError(f"{source}: 'runs' must be at least 1, got {config.runs}")
    if config.target_rse is not None and not 0 < config.target_rse < 1:
        raise KvbenchError(
            f"{source}: 'target_rse' is a fraction such as 0.02 (2%), got {config.target_rse}"
        )
    if config.min_runs < 2:
        raise KvbenchError(f"{source}: 'min_runs' must be at least 2 to estimate an error, got {config.min_runs}")
    if config.max_runs is not None and config.max_runs < config.min_runs:
        raise KvbenchError(
            f"{source}: 'max_runs' ({config.max_runs}) is below 'min_runs' ({config.min_runs}); raise it"
        )
    if config.warmup < 0:
        raise KvbenchError(f"{source}: 'warmup' cannot be negative, got {config.warmup}")
    if config.prompt_tokens is not None and config.prompt_tokens < 1:
        raise KvbenchError(
            f"{source}: 'prompt_tokens' must be at least 1, got {config.prompt_tokens}"
        )
    if config.sample_interval_ms <= 0:
        raise KvbenchError(
            f"{source}: 'sample_interval_ms' must be positive, got {config.sample_interval_ms}"
        )
    if not config.prompt:
        raise KvbenchError(f"{source}: 'prompt' is empty; give some text or use --prompt-tokens")
    _require_choice(source, "weights", config.weights, WEIGHTS)
    _require_choice(source, "dtype", config.dtype, DTYPES)
    _require_choice(source, "modes", config.modes, MODES)
    _require_choice(source, "cache_implementation", config.cache_implementation, CACHE_IMPLEMENTATIONS)
    _require_choice(source, "attn_implementation", config.attn_implementation, ATTN_IMPLEMENTATIONS)
    if config.device_map is not None:
        _require_choice(source, "device_map", config.device_map, DEVICE_MAPS)
    if len(set(config.modes)) != len(config.modes):
        raise KvbenchError(f"{source}: 'modes' lists a mode twice; give each of cached, uncached once")
    device = config.device
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        raise KvbenchError(
            f"{source}: 'device' cannot be {device!r}; use auto, cpu, cuda or cuda:N"
        )
    for axis in SWEEP_AXES:
        values = getattr(config, axis)
        if len(set(values)) != len(values):
            raise KvbenchError(f"{source}: '{axis}' lists the same value twice; remove the repeat")


def run_limits(config: BenchConfig) -> tuple[int, int]:
    """(fewest, most) measured runs per mode and cell."""
    if config.target_rse is None:
        return config.runs, config.runs
    most = config.max_runs if config.max_runs is not None else max(config.runs, config.min_runs)
    return config.min_runs, most


def config_to_dict(config: BenchConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(BenchConfig)}
