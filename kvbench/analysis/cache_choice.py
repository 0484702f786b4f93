"""Which KV cache to use: each cache implementation against the dynamic cache at otherwise equal settings
(speed, memory saved, output agreement), and what fits beside the model's weights in a GPU's memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from kvbench.analysis.footprint import Footprint, footprint_of
from kvbench.core.stats import RatioTest, compare_means, process_aware_samples
from kvbench.model.caches import IMPLEMENTATIONS, REFERENCE
from kvbench.model.cells import Cell, reference_of
from kvbench.model.modes import CACHED
from kvbench.model.records import BenchmarkResult, CellResult, CellState

# GPU memory sizes the what-fits figures are given for when none is asked for: common cards' memory (an
# H200's 143,771 MiB is just over 140 GiB).
DEFAULT_GPU_MEMORY_BYTES = tuple(size * 2**30 for size in (24, 40, 80, 140))


# What every what-fits figure counts, said under them.
WHAT_FITS_COUNTS = (
    "what fits is an estimate: it counts the weights, the KV cache, the last position's logits (in the model's"
    " dtype and two float32 copies) and the prefill's largest activations (the residual stream and three MLP"
    " tensors per prompt position; eager attention's score matrix, quadratic in the prompt), not the"
    " allocator's overhead or the CUDA context; a real run fits less"
)


@dataclass(frozen=True)
class Missing:
    """A figure that could not be given, and why."""

    reason: str


Figure = TypeVar("Figure")


def present(value: Figure | Missing) -> Figure | None:
    """The figure, or None where it is Missing."""
    return None if isinstance(value, Missing) else value


@dataclass(frozen=True)
class CacheVerdict:
    """One cache implementation's cell against the dynamic cache's cell at the same settings. A figure is
    a Missing (with its reason) where it cannot be given; the dynamic cell is its own reference."""

    cell: CellResult
    # This cache's mean cached-mode latency over the dynamic cache's, with its 95% interval: below 1 faster.
    latency_ratio: RatioTest | Missing
    # The dynamic cache's measured bytes minus this one's: above 0, this cache holds less.
    memory_saved_bytes: int | Missing
    memory_saved_share: float | Missing
    # Against the dynamic cache's output (CellResult's agreement fields); None within them: not measured.
    agreement: CellResult | Missing

    @property
    def cache(self) -> str:
        return self.cell.settings.cache_name

    @property
    def is_reference(self) -> bool:
        return self.cache == REFERENCE

    def missing(self) -> list[tuple[str, str]]:
        """(figure, reason) for each figure that could not be given; none for the measured reference."""
        if self.is_reference and not CellState(self.cell.status).failed:
            return []
        figures = {
            "latency": self.latency_ratio,
            "memory saved": self.memory_saved_bytes,
            "agreement": self.agreement,
        }
        return [(name, value.reason) for name, value in figures.items() if isinstance(value, Missing)]


@dataclass(frozen=True)
class VerdictGroup:
    """The cells of one model, length, batch, dtype, attention and prompt, one per cache implementation."""

    settings: Cell  # the group's settings, its cache implementation set to the reference
    verdicts: list[CacheVerdict]
    # The run's quantized_residual_length, which what fits counts at full precision; None where not recorded.
    residual_length: int | None = None

    def what_fits(self, verdict: CacheVerdict, gpu_memory_bytes: tuple[int, ...]) -> WhatFits | Missing:
        """What fits for one of the group's caches, with the run's residual window."""
        return what_fits(verdict.cell, gpu_memory_bytes, self.residual_length)

    def title(self) -> str:
        """The group's settings in words, without the cache implementation that varies within it, and the
        dtype that "auto" resolved to."""
        settings = self.settings
        resolved = ((verdict.cell.model or {}).get("dtype") for verdict in self.verdicts)
        dtype = next((value for value in resolved if value), None)
        prompt = f"{settings.prompt_tokens}-token prompt · " if settings.prompt_tokens is not None else ""
        attn = f" · attn {settings.attn_implementation}" if settings.attn_implementation != "auto" else ""
        return (
            f"{settings.model} · {prompt}{settings.max_new_tokens} tok · batch {settings.batch_size} · "
            f"{dtype or settings.dtype}{attn}"
        )


def cache_verdicts(result: BenchmarkResult) -> list[VerdictGroup]:
    """Each group of cells that differ only in their cache implementation, where more than one was run
    (a pending cell is not counted): every cache's verdict against the group's dynamic cell, dynamic first."""
    groups: dict[Cell, list[CellResult]] = {}
    for cell in result.cells:
        if cell.status != CellState.PENDING:
            group = reference_of(cell.settings)
            groups.setdefault(group, []).append(cell)
    residual = result.config.get("quantized_residual_length")
    residual = residual if isinstance(residual, int) and not isinstance(residual, bool) and residual > 0 else None
    verdicts = []
    for settings, cells in groups.items():
        if len({cell.settings.cache_name for cell in cells}) < 2:
            continue
        reference = next((cell for cell in cells if cell.settings.cache_implementation == REFERENCE), None)
        cells.sort(key=lambda cell: cell.settings.cache_implementation != REFERENCE)
        verdicts.append(VerdictGroup(settings, [verdict_against(result, cell, reference) for cell in cells], residual))
    return verdicts


def verdict_against(result: BenchmarkResult, cell: CellResult, reference: CellResult | None) -> CacheVerdict:
    """One cell's speed, memory and agreement against the dynamic cache's cell (None: there is none)."""
    if CellState(cell.status).failed:
        why = Missing(f"{cell.status}: {cell.reason}")
        return CacheVerdict(cell, why, why, why, why)
    if cell is reference:
        itself = Missing("the reference")  # shown as "reference", never as a missing figure
        return CacheVerdict(cell, itself, itself, itself, itself)
    saved = _memory_saved(cell, reference)
    return CacheVerdict(
        cell,
        latency_ratio=_latency_ratio(result, cell, reference),
        memory_saved_bytes=saved if isinstance(saved, Missing) else saved[0],
        memory_saved_share=saved if isinstance(saved, Missing) else saved[1],
        agreement=_agreement(cell),
    )


def _cached_samples(result: BenchmarkResult, cell: CellResult) -> list[float]:
    # As compare takes them: one per run, or one per process's mean with runs from 3 or more processes.
    runs = result.runs_of(cell.id, CACHED.name)
    return process_aware_samples([run.latency_s for run in runs], [(run.host, run.pid) for run in runs])


def _no_reference(reference: CellResult | None) -> Missing | None:
    if reference is None:
        return Missing("no dynamic cache cell at these settings to compare with")
    if CellState(reference.status).failed:
        return Missing(f"the dynamic cache's cell was {reference.status}: {reference.reason}")
    return None


def _latency_ratio(result: BenchmarkResult, cell: CellResult, reference: CellResult | None) -> RatioTest | Missing:
    missing = _no_reference(reference)
    if missing is not None:
        return missing
    assert reference is not None
    ours, theirs = _cached_samples(result, cell), _cached_samples(result, reference)
    if not ours:
        return Missing("no cached-mode runs in this cell")
    if not theirs:
        return Missing("no cached-mode runs in the dynamic cache's cell")
    if any(not math.isfinite(value) or value <= 0 for value in (*ours, *theirs)):
        return Missing("a latency that is not a positive number")
    return compare_means(ours, theirs)


def _memory_saved(cell: CellResult, reference: CellResult | None) -> tuple[int, float] | Missing:
    missing = _no_reference(reference)
    if missing is not None:
        return missing
    assert reference is not None
    ours, theirs = cell.kv_cache_measured_bytes, reference.kv_cache_measured_bytes
    if CellState(cell.status) == CellState.INCOMPLETE and ours is None:
        return Missing("the cell was interrupted before its cache was measured")
    if ours is None or ours <= 0:
        return Missing(f"the cache object was not measured ({cell.kv_cache_note or 'a file from before it was'})")
    if theirs is None or theirs <= 0:
        return Missing("the dynamic cache's object was not measured")
    return theirs - ours, (theirs - ours) / theirs


def _agreement(cell: CellResult) -> CellResult | Missing:
    if cell.agreement_note is not None:
        return Missing(cell.agreement_note)
    if CellState(cell.status) == CellState.INCOMPLETE and cell.agreement_token_share is None:
        return Missing("the cell was interrupted before its agreement pass")
    if cell.agreement_token_share is None:
        return Missing("not measured in this file")
    return cell


@dataclass(frozen=True)
class Fit:
    """What fits beside the weights in one GPU memory size, from one cell's measured cache."""

    gpu_memory_bytes: int
    longest_context: int  # positions at batch 1, at most the model's position limit; 0 when not even one fits
    largest_batch: int  # sequences of the cell's positions


@dataclass(frozen=True)
class WhatFits:
    """One cell's cache bytes per position, the model's weight bytes, what else a generation holds (the
    footprint), and what fits in each GPU size."""

    cell: CellResult
    bytes_per_position: float
    weight_bytes: int
    positions: int  # the context the cell ran at: the positions its cache held
    fits: list[Fit]
    position_limit: int | None = None  # the model's own (max_position_embeddings), where it has one
    footprint: Footprint | None = None

    @property
    def limited_by_model(self) -> bool:
        return self.position_limit is not None and any(fit.longest_context == self.position_limit for fit in self.fits)

    @property
    def cache(self) -> str:
        return self.cell.settings.cache_name


def what_fits(
    cell: CellResult, gpu_memory_bytes: tuple[int, ...] = DEFAULT_GPU_MEMORY_BYTES, residual_length: int | None = None
) -> WhatFits | Missing:
    """The longest context at batch 1 and the largest batch at the cell's context whose generation fits in each
    GPU memory size, by the cell's footprint (kvbench.analysis.footprint): the weights, the cache at its
    measured bytes per position, a quantized cache's full-precision residual window (`residual_length`: the
    run's quantized_residual_length), the last position's logits and the prefill's largest activations,
    solved against the memory. An estimate: no allocator overhead, no CUDA context; a real run fits less."""
    if CellState(cell.status).failed:
        return Missing(f"{cell.status}: {cell.reason}")
    footprint = footprint_of(cell, residual_length)
    if isinstance(footprint, str):
        return Missing(footprint)
    measured, positions = cell.kv_cache_measured_bytes, cell.kv_cache_positions
    assert measured is not None and positions is not None, "footprint_of measured them"
    limit = (cell.model or {}).get("max_positions")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    fits = [
        Fit(
            memory,
            # Memory is not the only bound: past its position limit the model cannot attend at all.
            footprint.longest_context(memory, limit),
            footprint.largest_batch(memory, positions, cell.prompt_tokens),
        )
        for memory in gpu_memory_bytes
    ]
    per_position = measured / positions / cell.settings.batch_size
    return WhatFits(cell, per_position, footprint.weight_bytes, positions, fits, limit, footprint)


def what_fits_notes(group: VerdictGroup, gpu_memory_bytes: tuple[int, ...] = DEFAULT_GPU_MEMORY_BYTES) -> list[str]:
    """What the what-fits figures leave out, said plainly; more for the quantized and offloaded caches."""
    notes = [WHAT_FITS_COUNTS]
    # Each implementation's own, once however many cells share it, in the registry's order.
    present = {verdict.cell.settings.cache_implementation for verdict in group.verdicts}
    own = dict.fromkeys(cache.what_fits_note for name, cache in IMPLEMENTATIONS.items() if name in present)
    notes += [note for note in own if note is not None]
    fitted = [fits for v in group.verdicts if isinstance(fits := group.what_fits(v, gpu_memory_bytes), WhatFits)]
    uncounted = dict.fromkeys(what for fits in fitted if fits.footprint for what in fits.footprint.uncounted)
    if uncounted:
        notes.append(f"not counted, as the results file does not say enough: {'; '.join(uncounted)}")
    limits = {fits.position_limit for fits in fitted if fits.limited_by_model and fits.position_limit is not None}
    if limits:
        shown = ", ".join(f"{limit:,}" for limit in sorted(limits))
        notes.append(
            f"longest context stops at the model's own position limit ({shown} positions) where memory would allow"
            " more: beyond it the model cannot run at all"
        )
    return notes


# The least share of positions whose most likely next token must agree with the dynamic cache's (the verdict's
# top-1 column) for a cache to be recommended: quanto's int4 keeps about 99% on the trained tiny-milton, int2
# 84 to 94% (docs/results.md).
DEFAULT_MIN_TOP1_AGREEMENT = 0.98


@dataclass(frozen=True)
class Recommendation:
    """Of a group's caches that save memory while agreeing with the dynamic cache at no less than
    `min_top1_share` of positions, the one that saves most (None: none does); where none does, the saving one
    that agrees most, which a lower tolerance would choose (None: no cache saved memory at all)."""

    chosen: CacheVerdict | None
    min_top1_share: float
    closest_miss: CacheVerdict | None = None


def _top1_share(verdict: CacheVerdict) -> float | None:
    agreement = verdict.agreement
    return None if isinstance(agreement, Missing) else agreement.agreement_top1_share


def recommend(group: VerdictGroup, min_top1_share: float = DEFAULT_MIN_TOP1_AGREEMENT) -> Recommendation:
    """The cache to use from the group's verdicts: the most memory saved within the tolerance for agreement,
    the faster one on a tie."""
    saving = [
        (verdict, share)
        for verdict in group.verdicts
        if not verdict.is_reference and isinstance(share := verdict.memory_saved_share, float) and share > 0
    ]

    def most_saved(candidate: tuple[CacheVerdict, float]) -> tuple[float, float]:
        latency = candidate[0].latency_ratio
        return candidate[1], -(latency.ratio if not isinstance(latency, Missing) else math.inf)

    agreeing = [(v, share) for v, share in saving if (top1 := _top1_share(v)) is not None and top1 >= min_top1_share]
    if agreeing:
        return Recommendation(max(agreeing, key=most_saved)[0], min_top1_share)
    # The closest miss: the saving cache that agrees most, which a slightly lower tolerance would choose.
    closest = max(saving, key=lambda candidate: (_top1_share(candidate[0]) or -1.0, *most_saved(candidate)), default=None)
    return Recommendation(None, min_top1_share, closest[0] if closest is not None else None)
