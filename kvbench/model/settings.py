"""Benchmark settings: one dataclass that declares every setting once, and what is derived from it.

Each `BenchConfig` field carries its type (the annotation), its default, its help text and whether
`--resume` requires it to match (the field's metadata). The command line, the TOML reader, validation
and resume checks are all derived from those declarations, so a new setting is added here only.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.model.caches import CACHE_IMPLEMENTATIONS, REFERENCE
from kvbench.model.caches.quantized import QUANTIZED_BACKENDS
from kvbench.model.modes import DEFAULT_MODES, MODES

# --target-rse stops a cell once an upper confidence bound, at this confidence, on each mode's RSE is within
# the target: the point estimate from five noisy runs is often low by chance, and stopping on it stopped
# cells early. The bound is checked after every run, so its chances add up over the looks; at 90% a mode
# much noisier than the other (whose bound then always holds) stopped 13% of simulated cells early (1% CV
# against 5%, 1.5% target), and 1.3% only when both were equally noisy. At 98% the worst of four such
# settings stops 3.8% early, equal noise 0.2%, at about 1.25x the runs (tests/test_stats.py).
RSE_CONFIDENCE = 0.98

REFERENCE_PROMPT = "What is KV caching?"
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Other names people use for the same types (PyTorch's own, and the usual short forms).
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
WEIGHTS = ("auto", "pretrained", "random")
# "auto" leaves the attention backend to transformers (the model's default).
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# Where cells are measured on this machine: processes serving one model's consecutive cells, a process per
# cell, or this process. "process" is the name "cell" had before processes served several cells.
ISOLATIONS = ("model", "cell", "none")
LAUNCHERS = ("local", "ray")


# An experiment file is a few settings; a long prompt pasted in (a million tokens of text) still fits.
MOST_CONFIG_BYTES = 16 * 2**20
# Each cell takes seconds at the least: a larger sweep is a slip (a list typed too long), not an experiment,
# and its plan alone would take minutes to build.
MOST_CELLS = 10_000
# A million positions is beyond every model's context: a larger length is a slip, not an experiment.
MOST_TOKENS = 2**20
# A hub id is at most 96 characters and a path at most 4,096 bytes (Linux's PATH_MAX): a longer name (a model,
# a revision, an address) is a slip, and every table that shows it would wrap it over screens.
MOST_NAME_CHARACTERS = 4096
# JSON integers have no bound, and one beyond a float's comfortable range breaks any arithmetic on it: the
# largest integer a setting, and anything in a results file, may be.
LARGEST_INTEGER = 2**63


def setting(
    default: Any,
    help: str,
    *,
    short: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    must_match: bool = False,
    comma_separated: bool = False,
    shown_default: str | None = None,
    aliases: dict[str, str] | None = None,
) -> Any:
    """A BenchConfig field with what the command line, TOML validation and --resume need to know.

    minimum: the smallest value allowed (inclusive) for a number or each number of a list.
    maximum: the largest value allowed (inclusive), where the libraries underneath have a limit.
    must_match: --resume refuses a results file made with another value.
    comma_separated: on the command line, one option may list several values ("cached,uncached").
    shown_default: how --help shows the default when the value itself would not read well.
    aliases: other spellings accepted for a value, each stored as the value it stands for.
    """
    metadata = {
        "help": help,
        "short": short,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "must_match": must_match,
        "comma_separated": comma_separated,
        "shown_default": shown_default,
        "aliases": aliases or {},
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class BenchConfig:
    """Everything needed to rerun a benchmark. List fields are sweep axes; one value means no sweep."""

    model: list[str] = setting(
        ["gpt2"],
        "Hub id, local model directory, a config shipped with kvbench (gpt2, tinyllama-1.1b, tiny-gpt2,"
        " tiny-llama, tiny-gqa-32k; random weights offline) or its trained tiny-milton. Repeat to sweep.",
        short="-m",
        must_match=True,
    )
    revision: str | None = setting(
        None, "Branch, tag or commit of a hub model to load (default: its main branch).", must_match=True
    )
    trust_remote_code: bool = setting(
        False,
        "Allow a model to run the Python code it ships (its config's auto_map). Off: such a model is refused, never run.",
        must_match=True,
    )
    weights: str = setting(
        "auto",
        "auto: real weights if they can be loaded, else random weights of the same architecture;"
        " pretrained: real or fail; random: always random.",
        choices=WEIGHTS,
        must_match=True,
    )
    prompt: str = setting(REFERENCE_PROMPT, "Prompt text.", must_match=True, shown_default=repr(REFERENCE_PROMPT))
    prompt_tokens: list[int] | None = setting(
        None,
        "Prompt length in tokens: the prompt's tokens repeated or cut to N where the model has a tokenizer,"
        " N seeded synthetic ids where it has none. Repeat to sweep.",
        minimum=1,
        maximum=MOST_TOKENS,
        shown_default="the prompt text, tokenized",
    )
    prefix_tokens: list[int] | None = setting(
        None,
        "Tokens every prompt of a batch starts with, shared as a system prompt or a document is; the rest of"
        " each prompt differs. With --modes prefix, their KV cache is computed once and each timed generation"
        " starts from a copy of it. A value not shorter than a swept prompt makes no cell with it. Repeat to sweep.",
        minimum=1,
        maximum=MOST_TOKENS,
        must_match=True,
        shown_default="no shared prefix",
    )
    prompts: str | None = setting(
        None,
        "A text file of prompts, one a line: row r of a batch is line r (the file needs a line per row).",
        must_match=True,
        shown_default="--prompt, made different per row of a batch",
    )
    ragged: bool = setting(
        False,
        "Give a batch's prompts different lengths, left-padded with an attention mask, as real requests are:"
        " row r is shorter than the longest by r steps of --prompt-tokens / (2 x batch).",
        must_match=True,
    )
    max_new_tokens: list[int] = setting(
        [1000],
        "New tokens per generation, always generated in full. Repeat to sweep.",
        short="-n",
        minimum=1,
        maximum=MOST_TOKENS,
        must_match=True,
    )
    batch_size: list[int] = setting(
        [1],
        "Prompts per generate(), each different (see --prompts, --ragged). Repeat to sweep.",
        short="-b",
        minimum=1,
        maximum=2**16,
        must_match=True,
    )
    dtype: list[str] = setting(
        ["auto"],
        "auto (float32 on a CPU, the checkpoint's 16-bit type on a GPU; transformers' own 'auto' would"
        " take the checkpoint's type everywhere), float32, float16 (fp16, half) or bfloat16 (bf16)."
        " Repeat to sweep.",
        choices=DTYPES,
        aliases=DTYPE_ALIASES,
        must_match=True,
    )
    cache_implementation: list[str] = setting(
        [REFERENCE],
        "The cached mode's cache class: dynamic, static (preallocated), offloaded and offloaded_static (layers"
        " kept on the CPU between steps; a CUDA device only), quantized (see --quantized-backend). Each follows"
        " the model's layers, sliding-window ones included; transformers' older names sliding_window,"
        " hybrid_chunked (static), offloaded_hybrid, offloaded_hybrid_chunked (offloaded_static) and hybrid"
        " are refused, naming the same cache. Repeat to sweep.",
        choices=CACHE_IMPLEMENTATIONS,
        must_match=True,
    )
    attn_implementation: list[str] = setting(
        ["auto"], "Attention backend. Repeat to sweep.", choices=ATTN_IMPLEMENTATIONS, must_match=True
    )
    quantized_backend: str = setting(
        "quanto",
        "With --cache-implementation quantized: quanto (pip install 'kvbench[quantized]'), hqq (pip install"
        " hqq), or fp8 (per-tensor float8, torch alone; it takes none of the settings below).",
        choices=QUANTIZED_BACKENDS,
        must_match=True,
    )
    quantized_nbits: list[int] = setting(
        [4],
        "With --cache-implementation quantized: bits per stored key and value (quanto: 2 or 4; hqq: 1, 2, 3, 4"
        " or 8). Repeat to sweep: each value is a quantized cell of its own; the other cache implementations"
        " are not multiplied by it.",
        minimum=1,
        maximum=8,
        must_match=True,
    )
    quantized_group_size: int = setting(
        64,
        "With --cache-implementation quantized: values per quantization group, which share a scale and zero point.",
        minimum=1,
        must_match=True,
    )
    quantized_residual_length: int = setting(
        128,
        "With --cache-implementation quantized: new positions wait at full precision until this many have"
        " gathered, then all are quantized (the prompt's at once).",
        minimum=1,
        must_match=True,
    )
    modes: list[str] = setting(
        list(DEFAULT_MODES),
        "Modes to measure, comma-separated: cached, uncached, and prefix (each generation starts from a copy of"
        " the --prefix-tokens prefix's cache).",
        choices=MODES,
        must_match=True,
        comma_separated=True,
    )
    runs: int = setting(10, "Measured generations per mode.", short="-r", minimum=1, must_match=True)
    target_rse: float | None = setting(
        None,
        "Stop each cell once every mode's relative standard error of the mean is, with"
        f" {RSE_CONFIDENCE:.0%} confidence, at most this fraction (0.01 = 1%), between --min-runs and --max-runs"
        " runs.",
        must_match=True,
    )
    min_runs: int = setting(5, "Fewest runs per mode with --target-rse.", minimum=2, must_match=True)
    max_runs: int | None = setting(
        None, "Most runs per mode with --target-rse.", minimum=1, must_match=True, shown_default="--runs"
    )
    warmup: int = setting(1, "Unmeasured generations per mode first.", short="-w", minimum=0, must_match=True)
    compile: bool = setting(
        False,
        "Let generate() compile the forward pass with torch.compile where transformers does so by itself"
        " (a static cache on a GPU). Off: both modes run eagerly, the same code. On needs --warmup 1 or"
        " more, since the first call compiles.",
        must_match=True,
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", short="-d", must_match=True)
    device_map: str | None = setting(
        None,
        "Spread the model over all GPUs with accelerate; memory is then reported per device.",
        choices=DEVICE_MAPS,
        must_match=True,
    )
    # torch seeds are 64-bit; TOML integers are signed 64-bit.
    seed: int = setting(0, "Seed for random weights and synthetic prompts.", minimum=0, maximum=2**63 - 1, must_match=True)
    sample_interval_ms: float = setting(10.0, "VRAM sampling interval in milliseconds.")
    memory_sampling: bool = setting(
        True, "Sample memory while generating: VRAM through NVML on a GPU, this process's RSS on a CPU."
    )
    device_peaks: bool = setting(
        True,
        "Measure the device's memory bandwidth and matrix-multiply throughput first (a few seconds, once per"
        " machine, device and software: later runs read them from kvbench's cache), for the roofline bound"
        " each mode is measured against.",
    )
    remeasure_peaks: bool = setting(
        False,
        "Measure the device's peaks again rather than read them from kvbench's cache ($KVBENCH_CACHE_DIR, else"
        " ~/.cache/kvbench), and keep the new ones there.",
    )
    isolation: str = setting(
        "model",
        "model: measure a model's consecutive cells in one fresh Python process, which loads it once (memory"
        " freed and peaks reset between cells; a fresh process after a cell that fails, times out or runs out"
        " of memory), so another model's crash, hang or leftover memory cannot touch them; cell: a fresh"
        " process for every cell (each pays its own start-up and load: seconds a cell); none: every cell in"
        " this process (no start-up cost at all).",
        choices=ISOLATIONS,
        aliases={"process": "cell"},
    )
    processes: int = setting(
        1,
        "Spread each cell's runs over N fresh processes, one after another, so the spread between runs"
        " includes process-to-process variation (3 or more for compare to use it).",
        minimum=1,
        must_match=True,
    )
    cell_timeout: float | None = setting(
        None, "Record a cell as timed out when it takes longer than this many seconds (its process is stopped)."
    )
    launcher: str = setting(
        "local",
        "local: this machine (cells run one per GPU at once where there are several); ray: each cell"
        " becomes a Ray task (pip install 'kvbench[ray]').",
        choices=LAUNCHERS,
    )
    ray_address: str | None = setting(
        None,
        "With --launcher ray: the cluster to join (auto, or ray://host:10001).",
        shown_default="start a local Ray instance",
    )
    accelerator_type: str | None = setting(
        None, "With --launcher ray: run cells only on GPUs of this Ray accelerator type (e.g. A100, H100)."
    )
    gpus_per_cell: int | None = setting(
        None,
        "With --launcher ray: GPUs each cell asks for (for a model spread with --device-map).",
        minimum=0,
        shown_default="1 on a GPU, 0 on a CPU",
    )
    output: str | None = setting(
        None,
        "Results .json (a .csv of runs goes beside it).",
        short="-o",
        shown_default="results/<model>-<time>-<4 hex digits>.json",
    )

    def __post_init__(self) -> None:
        # A library caller may write max_new_tokens=8: the same coercion as a TOML file's scalars.
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                setattr(self, item.name, coerce(item.name, value, "BenchConfig"))


@functools.cache
def config_fields() -> dict[str, Field]:
    return {item.name: item for item in fields(BenchConfig)}


@functools.cache
def field_kind(name: str) -> tuple[type, bool]:
    """(element type, whether it is a list) of a BenchConfig field, read from its annotation."""
    annotation = typing.get_type_hints(BenchConfig)[name]
    # An optional list (`list[int] | None`) is a list whose absence means "not swept".
    optional = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not list and len(optional) == 1 and typing.get_origin(optional[0]) is list:
        annotation = optional[0]
    is_list = typing.get_origin(annotation) is list
    if is_list:
        (annotation,) = typing.get_args(annotation)
    members = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return members[0], is_list


def default_of(name: str) -> Any:
    item = config_fields()[name]
    return item.default_factory() if item.default is MISSING else item.default  # type: ignore[operator]


def resume_must_match() -> tuple[str, ...]:
    """Settings that must agree for --resume to add to an existing file."""
    return tuple(item.name for item in fields(BenchConfig) if item.metadata["must_match"])


def _type_name(kind: type, is_list: bool) -> str:
    name = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]
    return f"{name} or a list of them" if is_list else name


def coerce(key: str, value: Any, source: str) -> Any:
    """A setting's value checked against its declared type; a scalar becomes a one-item list where the
    setting is a list, and an integer a float where a number is expected."""
    kind, is_list = field_kind(key)
    aliases = config_fields()[key].metadata["aliases"]

    def check(item: Any) -> Any:
        if isinstance(item, str) and item in aliases:
            return aliases[item]
        # bool is an int subclass in Python: refuse `runs = true` rather than read it as 1.
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            return float(item)
        if not isinstance(item, kind) or (kind is not bool and isinstance(item, bool)):
            raise KvbenchError(f"{source}: '{key}' must be {_type_name(kind, is_list)}, got {item!r}; fix the value")
        return item

    if is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise KvbenchError(f"{source}: '{key}' is an empty list; give at least one value")
        return [check(item) for item in items]
    return check(value)


def run_limits(config: BenchConfig) -> tuple[int, int]:
    """(fewest, most) measured runs per mode and cell."""
    if config.target_rse is None:
        return config.runs, config.runs
    most = config.max_runs if config.max_runs is not None else max(config.runs, config.min_runs)
    return config.min_runs, most


def config_to_dict(config: BenchConfig) -> dict[str, Any]:
    return {item.name: getattr(config, item.name) for item in fields(BenchConfig)}
