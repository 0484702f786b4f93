"""The ways a generation runs, each declared once: its name (in --modes, results files and every table),
whether generate() keeps a KV cache, whether it starts from a copy of a shared prefix's cache, the reference
experiment's words for it and its colour in figures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    use_cache: bool  # generate(use_cache=...)
    words: str  # how the reference experiment printed its result: "with KV caching: 11.885 +- 0.272 seconds"
    colour: str  # a matplotlib colour, the same in every figure
    # The prompt's first --prefix-tokens positions come from a cache computed once, outside the timed span;
    # each generation starts from a copy of it, as a server reusing a shared system prompt or document does.
    reuses_prefix: bool = False


CACHED = Mode("cached", use_cache=True, words="with KV caching", colour="tab:blue")
UNCACHED = Mode("uncached", use_cache=False, words="without KV caching", colour="tab:red")
PREFIX = Mode("prefix", use_cache=True, words="with the prefix's KV cache reused", colour="tab:green", reuses_prefix=True)
# In the order a cell measures them (interleaved: cached, uncached, prefix, cached, ...) and tables list them.
MODES_BY_NAME = {mode.name: mode for mode in (CACHED, UNCACHED, PREFIX)}
MODES = tuple(MODES_BY_NAME)
# The classic comparison, what a run measures unless told otherwise: the prefix mode needs --prefix-tokens.
DEFAULT_MODES = (CACHED.name, UNCACHED.name)
