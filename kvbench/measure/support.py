"""Whether this machine can measure a cell's cache and attention implementation, known before trying."""

from __future__ import annotations

from kvbench.core import packages
from kvbench.core.devices import is_gpu
from kvbench.model.caches import CacheSettings, implementation
from kvbench.model.cells import Cell
from kvbench.model.settings import BenchConfig


def unsupported_reason(
    cell: Cell,
    device: str,
    capability: tuple[int, int] | None = None,
    settings: CacheSettings | None = None,
    *,
    capability_known: bool = True,
) -> str | None:
    """Why this machine cannot run a cell's cache or attention implementation, known before trying: the cache's
    own needs (its declaration says them, read with `settings`, the defaults if none), then the attention's.
    `capability` is the GPU's compute capability (None on a CPU); not `capability_known` where the GPUs are
    other machines' (--launcher ray), whose workers decide."""
    reason = implementation(cell.cache_implementation).unsupported_reason(device, settings or BenchConfig())
    if reason is not None:
        return reason
    gpu_elsewhere = not capability_known and is_gpu(device)
    if cell.attn_implementation == "flash_attention_2" and not gpu_elsewhere and (capability is None or capability < (8, 0)):
        found = f"this GPU has {capability[0]}.{capability[1]}" if capability else f"the device is {device}"
        return f"attn_implementation=flash_attention_2 needs a GPU of compute capability 8.0 or newer ({found})"
    if cell.attn_implementation == "flash_attention_2" and not packages.installed("flash_attn"):
        return "attn_implementation=flash_attention_2 needs the flash-attn package"
    return None
