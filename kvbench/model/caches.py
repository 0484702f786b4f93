"""The cache implementations the cached mode can use, and what generate() is given for each."""

from __future__ import annotations

from typing import Any

from kvbench.model.cells import Cell
from kvbench.model.settings import QUANTIZED_NBITS, BenchConfig


def cache_config(config: BenchConfig, cell: Cell) -> dict[str, Any] | None:
    """generate()'s cache_config for a cell: the quantized cache's settings, with the cell's own bits; None
    for every other implementation, which takes none."""
    if cell.cache_implementation != "quantized":
        return None
    if config.quantized_backend not in QUANTIZED_NBITS:  # fp8, per-tensor: transformers refuses group-wise settings
        return {"backend": config.quantized_backend}
    # A cell made by hand without its bits (not by expand) takes the first configured value.
    nbits = cell.quantized_nbits if cell.quantized_nbits is not None else config.quantized_nbits[0]
    return {
        "backend": config.quantized_backend,
        "nbits": nbits,
        "q_group_size": config.quantized_group_size,
        "residual_length": config.quantized_residual_length,
    }
