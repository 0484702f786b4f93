"""The cells of a sweep: one point each, a cached-vs-uncached comparison of one combination of the swept
settings, and the axes they are swept along."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kvbench.model.caches import REFERENCE, implementation
from kvbench.model.settings import BenchConfig


def axis(short: str, label: str, *, numeric: bool = False, **default: Any) -> Any:
    """A sweep axis: `short` names it in a legend or a group ("batch=1"; "" shows the value alone),
    `label` on a figure's axis; a numeric axis is drawn to scale."""
    return field(metadata={"short": short, "label": label, "numeric": numeric}, **default)


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: the settings of one cached-vs-uncached comparison. Its fields are the sweep
    axes: each is a list field of BenchConfig with the same name."""

    model: str = axis("", "model")
    max_new_tokens: int = axis("new", "new tokens generated", numeric=True)
    batch_size: int = axis("batch", "batch size", numeric=True)
    dtype: str = axis("", "dtype")
    cache_implementation: str = axis("cache", "cache implementation")
    attn_implementation: str = axis("attn", "attention implementation")
    # None: the prompt text as tokenized.
    prompt_tokens: int | None = axis("prompt", "prompt tokens", numeric=True, default=None)
    # None: no prefix shared by the batch's prompts (and no prefix mode).
    prefix_tokens: int | None = axis("prefix", "shared prefix tokens", numeric=True, default=None)
    # A quantized cell's bits per stored value; None for every other cache implementation (and the fp8
    # backend, whose width is fixed), which the bits do not apply to.
    quantized_nbits: int | None = axis("nbits", "quantized cache bits", numeric=True, default=None)

    @property
    def cache_name(self) -> str:
        """The cache implementation as a reader names it: "quantized int4" where the bits apply."""
        bits = f" int{self.quantized_nbits}" if self.quantized_nbits is not None else ""
        return f"{self.cache_implementation}{bits}"

    @property
    def id(self) -> str:
        """The key that ties a results file's runs to their cell. A cell without a prompt length keeps the
        id it had before prompt length was an axis, so older results files still resume and compare; a
        quantized cell names its bits ("cache=quantized nbits=4"), and one read from a file written before
        they were an axis is given them (kvbench.storage.document)."""
        prompt = f" prompt={self.prompt_tokens}" if self.prompt_tokens is not None else ""
        prefix = f" prefix={self.prefix_tokens}" if self.prefix_tokens is not None else ""
        bits = f" nbits={self.quantized_nbits}" if self.quantized_nbits is not None else ""
        return (
            f"{self.model} new={self.max_new_tokens} batch={self.batch_size} {self.dtype}"
            f" cache={self.cache_implementation}{bits} attn={self.attn_implementation}{prompt}{prefix}"
        )

    def label(self, dtype: str | None = None) -> str:
        """A short human name; `dtype` replaces "auto" with what it resolved to."""
        extras = [dtype or self.dtype]
        if self.cache_implementation != REFERENCE:
            extras.append(f"cache {self.cache_name}")
        if self.attn_implementation != "auto":
            extras.append(f"attn {self.attn_implementation}")
        prompt = f"{self.prompt_tokens}-token prompt · " if self.prompt_tokens is not None else ""
        if self.prefix_tokens is not None:
            prompt += f"{self.prefix_tokens} shared · "
        return f"{self.model} · {prompt}{self.max_new_tokens} tok · batch {self.batch_size} · {' · '.join(extras)}"


SWEEP_AXES = tuple(item.name for item in fields(Cell))
AXES = {item.name: item.metadata for item in fields(Cell)}
# Axes that apply to some cells only: None there means "does not apply", not a value of its own.
PARTIAL_AXES = ("quantized_nbits", "prefix_tokens")


def shown_value(settings: Cell, axis: str) -> str:
    """A cell's value on an axis as a legend or a figure's axis shows it: the cache implementation with its
    bits ("quantized int4"), so the quantized cells of a sweep of bits stand apart beside the others."""
    return settings.cache_name if axis == "cache_implementation" else str(getattr(settings, axis))


def reference_of(cell: Cell) -> Cell:
    """The cell of `cell`'s group whose cache every other is compared with: the same settings with the
    dynamic cache (the group's cells differ only in their cache implementation and its bits)."""
    return replace(cell, cache_implementation=REFERENCE, quantized_nbits=None)


def nbits_of(config: BenchConfig, cache_implementation: str) -> list[int | None]:
    """The bits a cache implementation's cells take: each swept value for the quantized cache with an
    integer backend, [None] for the others (the bits do not apply, so they do not multiply the cells)."""
    return implementation(cache_implementation).bits(config)


def prefix_fits(prompt_tokens: int | None, prefix_tokens: int | None) -> bool:
    """Whether a prefix leaves its prompt at least one token of its own to compute. A prompt of the text's
    own length is known only once it is tokenized (kvbench.measure checks it then)."""
    return prompt_tokens is None or prefix_tokens is None or prefix_tokens < prompt_tokens


def expand(config: BenchConfig) -> list[Cell]:
    """The sweep's cells in a stable order (models outermost, so each model loads once per dtype). A prefix
    not shorter than a prompt makes no cell with it: a sweep of lengths may pair each prompt with its own
    prefix (prompt_tokens [2048, 8192], prefix_tokens [2000, 8000] is three cells)."""
    # An optional axis left unset (prompt_tokens = None) is one cell with that axis None.
    others = [axis for axis in SWEEP_AXES if axis != "quantized_nbits"]
    cells = []
    for combo in itertools.product(*(getattr(config, axis) or [None] for axis in others)):
        settings = dict(zip(others, combo))
        if not prefix_fits(settings["prompt_tokens"], settings["prefix_tokens"]):
            continue
        for nbits in nbits_of(config, settings["cache_implementation"]):
            cells.append(Cell(**settings, quantized_nbits=nbits))
    return cells


def cell_count(config: BenchConfig) -> int:
    """How many cells `expand` makes, without making them."""
    caches = sum(len(nbits_of(config, cache)) for cache in config.cache_implementation)
    unset: list[int | None] = [None]
    prompts, prefixes = config.prompt_tokens or unset, config.prefix_tokens or unset
    lengths = sum(prefix_fits(prompt, prefix) for prompt in prompts for prefix in prefixes)
    paired = ("cache_implementation", "quantized_nbits", "prompt_tokens", "prefix_tokens")
    others = (axis for axis in SWEEP_AXES if axis not in paired)
    return caches * lengths * math.prod(len(getattr(config, axis) or [None]) for axis in others)
