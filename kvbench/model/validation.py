"""Settings checked before anything is loaded: each field's declared choices and bounds, then the rules that
tie fields together, each refusal one line naming the fix."""

from __future__ import annotations

import math
from dataclasses import Field, fields
from typing import Any

from kvbench.core.devices import valid_device_name
from kvbench.core.errors import KvbenchError
from kvbench.model.caches import IMPLEMENTATIONS, REFERENCE, SAME_CACHE_AS
from kvbench.model.cells import SWEEP_AXES, cell_count
from kvbench.model.modes import MODES_BY_NAME
from kvbench.model.settings import LARGEST_INTEGER, MOST_CELLS, MOST_NAME_CHARACTERS, BenchConfig


def bound_problem(item: Field, value: Any) -> str | None:
    """What is wrong with a number against a setting's declared minimum and maximum, or None: for the
    command line and TOML, and for a results file's cell settings. A file could not hold an infinite or
    NaN number (they are not JSON), nor read back an integer beyond LARGEST_INTEGER."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    minimum, maximum = item.metadata["minimum"], item.metadata["maximum"]
    if maximum is None and isinstance(value, int) and not isinstance(value, bool):
        maximum = LARGEST_INTEGER
    if minimum is not None and value < minimum:
        return f"must be at least {minimum:g}, got {value}"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum}, got {value}"
    return None


def _name_problem(setting: str, value: str) -> str | None:
    """What is wrong with a setting's text, or None. Every one but the prompt is a name (a model, a device, an
    address, a path), held to MOST_NAME_CHARACTERS: a results file holding a longer one is refused as damaged."""
    if setting != "prompt" and len(value) > MOST_NAME_CHARACTERS:
        return (
            f"'{setting}' has a value {len(value):,} characters long, more than the {MOST_NAME_CHARACTERS:,} a name"
            " may have (no hub id or path is that long); check what was passed"
        )
    if setting == "model" and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Bytes the file system's encoding could not decode (a folder named in Latin-1 on a UTF-8 system)
            # reach Python as surrogates: shown as the bytes they stand for.
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a surrogate no undecodable byte stands for
                raw = value.encode("utf-8", "backslashreplace")
            shown = raw.decode("utf-8", "backslashreplace")
            return (
                f"the model path {shown} is not valid UTF-8; safetensors and the results file take UTF-8 names"
                " only: rename the folder"
            )
    return None


def validate(config: BenchConfig, source: str = "command line") -> None:
    """Reject impossible values before any model is loaded: each field's declared choices and minimum,
    then the rules that tie fields together."""
    for item in fields(BenchConfig):
        value = getattr(config, item.name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        choices = item.metadata["choices"]
        for one in values:
            if item.name == "cache_implementation" and one in SAME_CACHE_AS:
                use, builds = SAME_CACHE_AS[one]
                raise KvbenchError(
                    f"{source}: 'cache_implementation' {one!r} is an older transformers name for a cache kvbench"
                    f" already measures ({builds}, with the model's own sliding-window or full layers); use {use}"
                )
            if choices is not None and one not in choices:
                raise KvbenchError(f"{source}: '{item.name}' cannot be {one!r}; choose one of {', '.join(choices)}")
            if (problem := bound_problem(item, one)) is not None:
                raise KvbenchError(f"{source}: '{item.name}' {problem}")
            if isinstance(one, str) and (problem := _name_problem(item.name, one)) is not None:
                raise KvbenchError(f"{source}: {problem}")
        if item.name in SWEEP_AXES or item.name == "modes":
            if len(set(values)) != len(values):
                raise KvbenchError(f"{source}: '{item.name}' lists the same value twice; remove the repeat")
    _validate_workload(config, source)
    cells = cell_count(config)
    if cells > MOST_CELLS:
        sizes = " × ".join(str(len(getattr(config, axis) or [None])) for axis in SWEEP_AXES)
        raise KvbenchError(
            f"{source}: the sweep has {cells:,} cells (from {sizes}, one per combination of {', '.join(SWEEP_AXES)},"
            f" the bits for quantized cells only), more than the {MOST_CELLS:,} one run may hold; sweep fewer"
            " values, or split it into several runs"
        )
    # Each implementation's own settings, whichever the sweep measures: a typo shows before it is swept.
    for cache in IMPLEMENTATIONS.values():
        if (problem := cache.settings_problem(config)) is not None:
            raise KvbenchError(f"{source}: {problem}")
    if config.target_rse is not None and not 0 < config.target_rse < 1:
        raise KvbenchError(f"{source}: 'target_rse' is a fraction such as 0.02 (2%), got {config.target_rse}")
    if config.max_runs is not None and config.max_runs < config.min_runs:
        raise KvbenchError(f"{source}: 'max_runs' ({config.max_runs}) is below 'min_runs' ({config.min_runs}); raise it")
    if not config.sample_interval_ms > 0:
        raise KvbenchError(f"{source}: 'sample_interval_ms' must be positive, got {config.sample_interval_ms}")
    if config.compile and config.warmup < 1:
        raise KvbenchError(
            f"{source}: 'compile' needs 'warmup' of at least 1: the first generation compiles, and timing it"
            " would time the compiler; raise --warmup"
        )
    if any(not model.strip() for model in config.model):
        raise KvbenchError(f"{source}: a 'model' name is empty; give a hub id, a model directory or a shipped config name")
    if not config.prompt:
        raise KvbenchError(f"{source}: 'prompt' is empty; give some text or use --prompt-tokens")
    _validate_launch(config, source)
    if not valid_device_name(config.device):
        raise KvbenchError(f"{source}: 'device' cannot be {config.device!r}; use auto, cpu, cuda or cuda:N")


def validate_timing(config: BenchConfig, source: str = "command line") -> None:
    """What a timed run needs beyond validate(): a quantized cache whose backend builds or loads its kernels in
    its first generation needs a warmup, as --compile does (kvbench capacity, which times nothing, needs none)."""
    if "quantized" in config.cache_implementation and config.quantized_backend != "fp8" and config.warmup < 1:
        raise KvbenchError(
            f"{source}: a {config.quantized_backend} quantized cache needs 'warmup' of at least 1: the backend builds"
            " or loads its kernels in the first generation (optimum-quanto compiles its CUDA extension), and timing"
            " it would time that; raise --warmup"
        )


def _validate_workload(config: BenchConfig, source: str) -> None:
    """The rules that tie the prompts, the shared prefix and the prefix mode together."""
    reusing = [mode for mode in config.modes if MODES_BY_NAME[mode].reuses_prefix]
    if reusing and config.prefix_tokens is None:
        raise KvbenchError(
            f"{source}: the {reusing[0]} mode reuses a shared prefix's cache, and there is none; add"
            " --prefix-tokens N (fewer than the prompt's tokens)"
        )
    others = [cache for cache in config.cache_implementation if cache != REFERENCE]
    if reusing and others:
        raise KvbenchError(
            f"{source}: the {reusing[0]} mode copies a {REFERENCE} cache, and the sweep also has"
            f" {', '.join(others)}; measure those in a run without the {reusing[0]} mode"
        )
    if config.ragged and config.prefix_tokens is not None:
        raise KvbenchError(
            f"{source}: --ragged left-pads the shorter prompts, so their rows would no longer start with the"
            " shared prefix; drop --ragged or --prefix-tokens"
        )
    if config.prompt_tokens is not None and config.prefix_tokens is not None and cell_count(config) == 0:
        raise KvbenchError(
            f"{source}: no prefix ({', '.join(map(str, config.prefix_tokens))} tokens) is shorter than a prompt"
            f" ({', '.join(map(str, config.prompt_tokens))} tokens), so there is nothing to measure; give"
            " --prefix-tokens below --prompt-tokens"
        )


def _validate_launch(config: BenchConfig, source: str) -> None:
    """The rules that tie the isolation, process and launcher settings together."""
    if config.processes > 1 and config.target_rse is not None:
        raise KvbenchError(
            f"{source}: 'processes' above 1 splits a fixed number of runs; it cannot be combined with 'target_rse' (choose one)"
        )
    if config.processes > config.runs:
        raise KvbenchError(
            f"{source}: 'processes' ({config.processes}) is more than 'runs' ({config.runs}); every process"
            f" needs a run: use --runs {config.processes} or more"
        )
    if config.cell_timeout is not None:
        if not config.cell_timeout > 0:
            raise KvbenchError(f"{source}: 'cell_timeout' must be positive seconds, got {config.cell_timeout}")
        if config.isolation == "none" and config.processes == 1 and config.launcher == "local":
            raise KvbenchError(
                f"{source}: 'cell_timeout' needs cells in their own processes to stop one; add --isolation model"
            )
    if config.launcher != "ray":
        for name in ("ray_address", "accelerator_type", "gpus_per_cell"):
            if getattr(config, name) is not None:
                raise KvbenchError(f"{source}: '{name}' applies only with --launcher ray; add it or drop {name}")
