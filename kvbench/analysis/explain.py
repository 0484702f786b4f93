"""Why a results file's numbers are what they are, from the file alone (no torch): the roofline bound each
mode is measured against, and latency fitted against length to say what happens beyond the lengths run."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvbench.analysis.fit import LengthExtrapolation, extrapolate
from kvbench.analysis.roofline import RooflineBound, roofline_bound, step_bound_s, step_cost
from kvbench.core.errors import KvbenchError
from kvbench.core.units import seconds_as_ms
from kvbench.model.cells import AXES, PARTIAL_AXES, SWEEP_AXES, Cell
from kvbench.model.costs import DatasheetPeaks, ModelCost, datasheet_flops
from kvbench.model.modes import CACHED, MODES, UNCACHED
from kvbench.model.records import BenchmarkResult, CellResult


def varying_axes(result: BenchmarkResult) -> list[str]:
    """The sweep axes that take more than one value among the cells with runs."""
    cells = [cell for cell in result.cells if any(result.runs_of(cell.id, mode) for mode in MODES)]
    return [axis for axis in SWEEP_AXES if len(_values_on(axis, cells)) > 1]


def _values_on(axis: str, cells: list[CellResult]) -> set[Any]:
    """The values cells take on an axis; on a partial axis, only where it applies."""
    values = {getattr(cell.settings, axis) for cell in cells}
    return values - {None} if axis in PARTIAL_AXES else values


def named_settings(settings: Cell, axes: list[str] | tuple[str, ...]) -> str:
    """Settings by name, for a legend: "gpt2, prompt=8, batch=1"; "" when no axis is named."""
    parts = []
    for axis in axes:
        value = getattr(settings, axis)
        short = AXES[axis]["short"]
        if axis in PARTIAL_AXES and value is None:
            continue
        if axis == "prompt_tokens" and value is None:
            value = "text"
        parts.append(f"{short}={value}" if short else str(value))
    return ", ".join(parts)


@dataclass(frozen=True)
class Peaks:
    """The memory bandwidth and arithmetic throughput the bound is computed from, and where they come from.
    The throughput is for matrix products in `dtype` (a cell's arithmetic runs in its own type: float32 on
    a GPU is an order of magnitude slower than float16), with float32's on TF32 tensor cores where `tf32`."""

    bandwidth_bytes_per_s: float
    flops_per_s: float
    source: str
    dtype: str | None = None  # None: a file from before the type was chosen per cell
    tf32: bool | None = None  # float32 only; None where the file does not say

    def label(self) -> str:
        """ "float16 peaks", "float32 peaks, TF32 off": the type whose throughput bounds a cell."""
        if self.dtype is None:
            return ""
        if self.dtype != "float32" or self.tf32 is None:
            return f"{self.dtype} peaks"
        return f"float32 peaks, TF32 {'on' if self.tf32 else 'off'}"


def cell_dtype(cell: CellResult) -> str | None:
    """The type the cell's model ran in (its "auto" resolved), else the one asked for; None if unknown."""
    loaded = (cell.model or {}).get("dtype")
    if isinstance(loaded, str):
        return loaded
    return cell.settings.dtype if cell.settings.dtype != "auto" else None


def peaks_of(environment: dict[str, Any], dtype: str | None = None) -> Peaks | None:
    """The device's peaks for products in `dtype` (the type measured first where None, as files before
    types were told apart used): the measured ones (what torch reached: the bound a run can actually
    approach), else a known GPU's datasheet, each part separately; None when there are neither for that
    type. float32 on a GPU takes its datasheet figure with TF32 as the peaks were measured, else off
    (torch's default, which kvbench leaves), and says so."""
    measured, sheet_row = environment.get("device_peaks") or {}, environment.get("datasheet_peaks")
    sheet = None
    if sheet_row:
        sheet = DatasheetPeaks(**{item.name: sheet_row[item.name] for item in fields(DatasheetPeaks) if item.name in sheet_row})
    dtype = dtype or measured.get("matmul_dtype") or "float16"
    if measured:
        bandwidth = measured["copy_bandwidth_bytes_per_s"]
        copy = f"measured on {measured['device']}: copy {bandwidth / 1e9:.1f} GB/s"
    elif sheet is not None:
        bandwidth = sheet.memory_bandwidth_bytes_per_s
        copy = f"{sheet.name} datasheet: {bandwidth / 1e9:.0f} GB/s"
    else:
        return None
    by_dtype = measured.get("matmul_flops_by_dtype") or (
        {measured["matmul_dtype"]: measured["matmul_flops_per_s"]} if measured else {}
    )
    tf32 = measured.get("tf32") if dtype == "float32" else None
    if dtype in by_dtype:
        flops = by_dtype[dtype]
        tf32_words = "" if tf32 is None else f" (TF32 {'on' if tf32 else 'off'})"
        return Peaks(bandwidth, flops, f"{copy}, {dtype} matmul {flops / 1e9:.0f} GFLOP/s{tf32_words}", dtype, tf32)
    found = datasheet_flops(sheet, dtype, bool(tf32)) if sheet is not None else None
    if sheet is None or found is None:
        return None
    flops, name = found
    figure = f"{name} {flops / 1e12:.3g} TFLOP/s"
    if dtype == "float32" and tf32 is None:
        tf32, figure = False, f"{figure}, TF32 taken as off (torch's default; the file does not record it)"
    source = f"{copy}, {figure}" if not measured else f"{copy}; {dtype} matmul not measured: {sheet.name} datasheet {figure}"
    return Peaks(bandwidth, flops, source, dtype, tf32)


@dataclass(frozen=True)
class ModeBound:
    """One mode of one cell against the hardware's limit."""

    cell: str
    mode: str
    bound_per_token_s: float  # the least time per generated token the peaks allow
    measured_per_token_s: float  # mean end-to-end latency / new tokens
    fraction_of_bound: float  # bound / measured: 1.0 is the hardware's limit
    limited_by: str  # "memory bandwidth" or "compute"
    memory_bound_steps: int
    steps: int
    peaks_for: str = ""  # the type whose throughput bounds it (Peaks.label()); "" in a file from before

    @property
    def beyond_bound(self) -> bool:
        """Measured faster than the bound allows: a lower bound cannot be beaten, so the bound (its cost
        model) or the peaks it divides by are wrong, and no share of it means anything."""
        return self.fraction_of_bound > 1

    def words(self) -> str:
        """ "cached at 71% of the memory-bandwidth bound (2.41 ms/token bound, 3.39 measured)"; never more than
        100%: a mode measured faster than its bound says that the bound or the peaks are wrong."""
        limit = "memory-bandwidth" if self.limited_by == "memory bandwidth" else "compute"
        bound, measured = seconds_as_ms(self.bound_per_token_s), seconds_as_ms(self.measured_per_token_s)
        figures = f"{bound} ms/token bound, {measured} measured"
        if self.beyond_bound:
            return (
                f"{self.mode} measured faster than its {limit} bound ({figures}), which no run can be: the bound's"
                " cost model or the peaks it uses are wrong (peaks measured under load read low)"
            )
        return f"{self.mode} at {percent(self.fraction_of_bound)} of the {limit} bound ({figures})"

    def reached(self) -> str:
        """How the mean run stands against its bound, for the bound's legend: "run at 71% of it", or, past a
        bound that is wrong, "measured faster than it: the bound or the peaks are wrong"."""
        if self.beyond_bound:
            return "measured faster than it: the bound or the peaks are wrong"
        return f"run at {percent(self.fraction_of_bound)} of it"


def percent(fraction: float) -> str:
    """71%, 4.2%, 0.13%: two significant figures, so a small fraction does not read as 0%."""
    return f"{fraction * 100:.2g}%" if fraction < 0.1 else f"{fraction:.0%}"


def model_cost_of(cell: CellResult) -> ModelCost | None:
    """The stored cost (checked when the file was read); keys a newer kvbench added are left aside."""
    cost = (cell.model or {}).get("cost")
    if not cost:
        return None
    return ModelCost(**{item.name: cost[item.name] for item in fields(ModelCost) if item.name in cost})


def _bound(cell: CellResult, mode: str, peaks: Peaks) -> RooflineBound | None:
    model = model_cost_of(cell)
    if model is None or cell.prompt_tokens is None:
        return None
    settings = cell.settings
    return roofline_bound(
        model,
        mode,
        cell.prompt_tokens,
        settings.max_new_tokens,
        settings.batch_size,
        peaks.bandwidth_bytes_per_s,
        peaks.flops_per_s,
        settings.prefix_tokens or 0,
    )


def mode_bound(result: BenchmarkResult, cell: CellResult, mode: str, peaks: Peaks | None) -> ModeBound | None:
    """The bound on a mode's time per token and the fraction of it the mean run reached; None without
    peaks, runs, or the model's cost (a file from before kvbench stored it)."""
    runs = result.runs_of(cell.id, mode)
    if peaks is None or not runs:
        return None
    bound = _bound(cell, mode, peaks)
    if bound is None:
        return None
    measured_s = statistics.fmean(run.latency_s for run in runs)
    return ModeBound(
        cell=cell.id,
        mode=mode,
        bound_per_token_s=bound.bound_per_token_s,
        measured_per_token_s=measured_s / cell.settings.max_new_tokens,
        fraction_of_bound=bound.bound_s / measured_s,
        limited_by=bound.limited_by,
        memory_bound_steps=bound.memory_bound_steps,
        steps=bound.steps,
        peaks_for=peaks.label(),
    )


def step_bounds_ms(cell: CellResult, mode: str, peaks: Peaks | None) -> list[float]:
    """The bound on each new token's time (ms) by position, for the per-token plot; [] when unknown."""
    model = model_cost_of(cell)
    if peaks is None or model is None or cell.prompt_tokens is None:
        return []
    settings = cell.settings
    return [
        step_bound_s(
            step_cost(model, mode, step, cell.prompt_tokens, settings.batch_size, settings.prefix_tokens or 0),
            peaks.bandwidth_bytes_per_s,
            peaks.flops_per_s,
        )
        * 1000
        for step in range(settings.max_new_tokens)
    ]


@dataclass(frozen=True)
class LengthFit:
    """Latency against new tokens for one group of cells that differ only in length."""

    group: str  # the group's named settings
    cells: list[str]
    extrapolation: LengthExtrapolation | None
    reason: str | None = None  # why there is no fit


def _length_groups(result: BenchmarkResult) -> dict[tuple, list[CellResult]]:
    groups: dict[tuple, list[CellResult]] = {}
    for cell in result.cells:
        if all(result.runs_of(cell.id, mode.name) for mode in (CACHED, UNCACHED)):
            key = tuple(getattr(cell.settings, axis) for axis in SWEEP_AXES if axis != "max_new_tokens")
            groups.setdefault(key, []).append(cell)
    return groups


def length_fits(result: BenchmarkResult) -> list[LengthFit]:
    """A fit per group with at least three lengths measured in both modes."""
    axes = [axis for axis in varying_axes(result) if axis != "max_new_tokens"]
    fits = []
    for cells in _length_groups(result).values():
        lengths = {cell.settings.max_new_tokens for cell in cells}
        if len(lengths) < 2:
            continue  # not a length sweep at all: nothing to say
        points = {
            mode.name: [(run.new_tokens, run.latency_s) for cell in cells for run in result.runs_of(cell.id, mode.name)]
            for mode in (CACHED, UNCACHED)
        }
        name = named_settings(cells[0].settings, axes) or cells[0].settings.model
        ids = [cell.id for cell in cells]
        try:
            fits.append(LengthFit(name, ids, extrapolate(points[CACHED.name], points[UNCACHED.name])))
        except KvbenchError as error:
            fits.append(LengthFit(name, ids, None, str(error)))
    return fits


@dataclass
class Explanation:
    """Everything `show` and `plot` explain, and the results file's "explained" block: the peaks for each
    type the cells ran in, and each cell's bounds against its own type's."""

    peaks: list[Peaks] = field(default_factory=list)
    bounds: list[ModeBound] = field(default_factory=list)
    fits: list[LengthFit] = field(default_factory=list)

    def bound_of(self, cell_id: str, mode: str) -> ModeBound | None:
        return next((b for b in self.bounds if b.cell == cell_id and b.mode == mode), None)

    def peaks_for(self, cell: CellResult) -> Peaks | None:
        dtype = cell_dtype(cell)
        return next((peaks for peaks in self.peaks if peaks.dtype == dtype or dtype is None), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peaks": [asdict(peaks) for peaks in self.peaks],
            "roofline": [asdict(bound) for bound in self.bounds],
            "length_fits": [asdict(fit) for fit in self.fits],
        }


def explain_result(result: BenchmarkResult) -> Explanation:
    """The roofline bounds and length fits of a result, computed once until a run is added."""
    return result.derived("explanation", lambda: _explain(result))


def _explain(result: BenchmarkResult) -> Explanation:
    by_dtype: dict[str | None, Peaks | None] = {}
    for cell in result.cells:
        dtype = cell_dtype(cell)
        if dtype not in by_dtype:
            by_dtype[dtype] = peaks_of(result.environment, dtype)
    if not by_dtype:  # no cells: the peaks measured, as they were
        by_dtype[None] = peaks_of(result.environment)
    bounds = [
        bound
        for cell in result.cells
        for mode in result.modes
        if (bound := mode_bound(result, cell, mode, by_dtype[cell_dtype(cell)])) is not None
    ]
    peaks = list({p.dtype: p for p in by_dtype.values() if p is not None}.values())
    return Explanation(peaks, bounds, length_fits(result))
