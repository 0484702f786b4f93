"""The two ways a generation runs, each declared once: its name (in --modes, results files and every table),
whether generate() keeps a KV cache, the reference experiment's words for it and its colour in figures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    use_cache: bool  # generate(use_cache=...)
    words: str  # how the reference experiment printed its result: "with KV caching: 11.885 +- 0.272 seconds"
    colour: str  # a matplotlib colour, the same in every figure


CACHED = Mode("cached", use_cache=True, words="with KV caching", colour="tab:blue")
UNCACHED = Mode("uncached", use_cache=False, words="without KV caching", colour="tab:red")
# In the order a cell measures them (interleaved: cached, uncached, cached, ...) and tables list them.
MODES_BY_NAME = {mode.name: mode for mode in (CACHED, UNCACHED)}
MODES = tuple(MODES_BY_NAME)
