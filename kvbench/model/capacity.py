"""What `kvbench capacity` measured: each probe (one generation of a cell at one prompt length or batch), each
search over probes for the longest context or the largest batch that fits, and the document it writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CONTEXT, BATCH = "context", "batch"
# What a search finds: the longest prompt at batch 1, the largest batch at a given prompt.
SEARCHES = (CONTEXT, BATCH)
DOCUMENT_KIND = "kvbench capacity"


@dataclass
class Probe:
    """One generation of a cell at `value` (prompt tokens for a context search, sequences for a batch search) in
    a measuring process, and whether it fit."""

    value: int
    fits: bool
    peak_bytes: int | None = None  # the measuring process's peak (RSS on a CPU, GPU memory on a GPU)
    peak_source: str | None = None  # which figure: "RSS", "process VRAM", "torch reserved", ...
    out_of_memory: bool = False
    # Why it did not run to its end: out of memory in the process's words, or another failure, which ends the
    # search (the cache is not supported here, an error).
    failure: str | None = None
    pid: int | None = None  # the measuring process's
    kv_cache_bytes: int | None = None  # the cache object's measured bytes after the generation
    seconds: float | None = None  # the probe's wall time, start-up of a fresh process included


@dataclass
class Search:
    """Probes of one cache implementation along one axis: grown by doubling from `start` until one does not fit
    (or `most` is reached), then bisected between the last that fit and the first that did not."""

    cache: str  # the cache implementation as a reader names it ("quantized int4")
    find: str  # CONTEXT or BATCH
    batch: int | None  # the batch a context search runs at (1); None for a batch search, which varies it
    context: int | None  # the prompt a batch search runs at; None for a context search
    start: int
    most: int
    most_reason: str  # what sets `most`: the model's position limit, --most-batch...
    probes: list[Probe] = field(default_factory=list)
    largest: int | None = None  # the largest value that fit; None when none did (or none was probed)
    first_failure: int | None = None  # the smallest value seen not to fit above it; None when none failed
    stopped: str = ""  # why the search ended, in words
    # The extrapolated what-fits figure for the same memory (kvbench.analysis.footprint), and why none.
    estimate: int | None = None
    estimate_missing: str | None = None
    # The extrapolated context reached the model's position limit: the count would allow more, so the estimate is
    # a lower bound and the ratio an upper one.
    estimate_at_limit: bool = False

    def probe_of(self, value: int | None) -> Probe | None:
        """The last probe at `value`."""
        return next((probe for probe in reversed(self.probes) if probe.value == value), None)

    @property
    def ratio(self) -> float | None:
        """The measured figure over the extrapolated one: below 1, less fits than the extrapolation says. None
        where the search stopped at its most with everything fitting: that is where the probing stopped, not
        what the memory holds."""
        if self.largest is None or self.first_failure is None or not self.estimate:
            return None
        return self.largest / self.estimate


@dataclass
class CapacityReport:
    """A `kvbench capacity` run: what it was asked, the memory its probes had to stay within, and its searches.
    Written after every probe, so an interrupted run keeps what it measured (`complete` says whether it
    finished)."""

    model: str
    device: str
    dtype: str  # as resolved ("auto" is float32 on a CPU)
    max_new_tokens: int
    # The memory the probes must stay within and that the extrapolation is solved against: the budget, else the
    # GPU's memory; what it is, in words.
    memory_bytes: int
    memory_source: str
    budget_bytes: int | None  # --memory-budget: a probe's measured peak must not exceed it
    out_of_memory_decides: bool  # on a GPU: a probe that runs out of the device's memory does not fit
    weight_bytes: int  # parameters x bytes per element, known before loading
    parameters: int
    position_limit: int | None
    command: str = ""
    kvbench_version: str = ""
    created: str = ""
    complete: bool = False
    processes_started: int = 0
    searches: list[Search] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # On a CPU: the resident memory of a measuring process that has imported torch and transformers and not yet
    # loaded the model, which the what-fits count leaves out; the extrapolation is for the budget less it.
    process_baseline_bytes: int | None = None
    extrapolated_for_bytes: int | None = None  # the memory the extrapolation was solved against

    def document(self) -> dict[str, Any]:
        """The JSON document written to --output."""
        return {"kind": DOCUMENT_KIND, **asdict(self)}
