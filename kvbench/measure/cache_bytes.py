"""The bytes of a cached run's cache object, walked, beside the theory at the positions it holds."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.model.caches import Generated, implementation
from kvbench.model.records import CellResult


def record_cache_size(cell_result: CellResult, output: Any, loaded: Any, cache_settings: dict[str, Any] | None = None) -> None:
    """The bytes of a cached run's cache object beside its implementation's theory at the positions it holds
    (for a quantized cache, its backend's layout with `cache_settings`, generate()'s cache_config)."""
    from kvbench.core import kvsize

    cell = cell_result.settings
    measurement = kvsize.measured_cache_bytes(kvsize.cache_of(output))
    positions = kvsize.cached_positions(cell_result.prompt_tokens or 0, cell.max_new_tokens)
    generated = Generated(
        loaded.model.config, cell_result.prompt_tokens or 0, cell.max_new_tokens, cell.batch_size, loaded.dtype
    )
    theory, counted = implementation(cell.cache_implementation).theory_bytes(generated, cache_settings)
    cell_result.kv_cache_measured_bytes = measurement.kv_bytes
    cell_result.kv_cache_bytes_by_device = dict(measurement.bytes_by_device) or None
    cell_result.kv_cache_positions = positions
    cell_result.kv_cache_theory_bytes = theory
    cell_result.kv_cache_class = measurement.cache_class
    cell_result.kv_cache_agrees = kvsize.agrees_with_theory(measurement.kv_bytes, theory)
    notes = [measurement.reason] if measurement.reason else []
    if counted is not None:
        # A theory of the implementation's own layout says all the reasons it differs from the full-precision
        # formula would; without one, why there is none is added to them.
        notes = [counted] if theory is not None else [*notes, counted]
    if measurement.positions_held is not None and measurement.positions_held != positions:
        notes.append(f"the cache reports {measurement.positions_held} positions held, not {positions}")
    cell_result.kv_cache_note = "; ".join(notes) or None


def model_cost_of(loaded: Any) -> dict[str, int] | None:
    """What the roofline needs from the model (kvbench.model.costs.ModelCost), kept in the results file so
    `show` and `plot` compute the bound without loading the model."""
    from kvbench.measure.cost import model_cost, parameter_roles

    try:
        lookup, head = parameter_roles(loaded.model)
        return asdict(model_cost(loaded.model.config, loaded.parameters, loaded.dtype, lookup, head))
    except KvbenchError:
        return None
