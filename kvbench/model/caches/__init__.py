"""The cache implementations the cached mode can use, each declared once (kvbench.model.caches.base says what a
declaration holds). A new one with rules of its own is a module here and a line in IMPLEMENTATIONS."""

from __future__ import annotations

from typing import Any

from kvbench.model.caches.base import CacheCell, CacheImplementation, CacheSettings, Generated
from kvbench.model.caches.offloaded import OFFLOADED, OFFLOADED_STATIC
from kvbench.model.caches.quantized import QUANTIZED

# generate()'s own cache, which it builds when given none, and what every other implementation is judged against.
DYNAMIC = CacheImplementation("dynamic", reference=True)
# Preallocated for the whole generation; a GPU compiles its forward pass (--compile).
STATIC = CacheImplementation("static")
# In the order their notes are said (what-fits: bytes per position before where the bytes are kept).
IMPLEMENTATIONS = {cache.name: cache for cache in (DYNAMIC, STATIC, QUANTIZED, OFFLOADED, OFFLOADED_STATIC)}
CACHE_IMPLEMENTATIONS = tuple(IMPLEMENTATIONS)
REFERENCE = DYNAMIC.name

# The other names transformers' generate() takes (4.56 to 5.24), kept there for older code: each builds a cache
# above, whose layers follow the model's own (sliding-window layers where it has them, full otherwise), so a
# cell of one would measure that cache under another name. Refused, naming the one to use.
SAME_CACHE_AS = {
    "sliding_window": ("static", "it builds a StaticCache, like static"),
    "hybrid_chunked": ("static", "it builds a StaticCache, like static"),
    "offloaded_hybrid": ("offloaded_static", "it builds a StaticCache offloaded to the CPU, like offloaded_static"),
    "offloaded_hybrid_chunked": ("offloaded_static", "it builds a StaticCache offloaded to the CPU, like offloaded_static"),
    # generate() unsets "hybrid" since transformers dropped it as a default for sliding-window models.
    "hybrid": ("static or dynamic", "transformers 4.56 builds a StaticCache for it, 5.24 ignores it for a DynamicCache"),
}


def implementation(name: str) -> CacheImplementation:
    """The declaration of a cache by its name; a name this version does not know (a results file of a later
    one) is a full-precision cache with no rules of its own, which is all a renderer needs of it."""
    return IMPLEMENTATIONS.get(name) or CacheImplementation(name)


def cache_config(settings: CacheSettings, cell: CacheCell) -> dict[str, Any] | None:
    """generate()'s cache_config for a cell: its implementation's settings, with the
    cell's own bits; None for an implementation that takes none."""
    return implementation(cell.cache_implementation).cache_config(settings, cell.quantized_nbits)


__all__ = [
    "CACHE_IMPLEMENTATIONS",
    "DYNAMIC",
    "IMPLEMENTATIONS",
    "QUANTIZED",
    "REFERENCE",
    "SAME_CACHE_AS",
    "STATIC",
    "CacheImplementation",
    "CacheSettings",
    "Generated",
    "cache_config",
    "implementation",
]
