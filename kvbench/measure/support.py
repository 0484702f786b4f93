"""Whether this machine can measure a cell's cache and attention implementation, known before trying."""

from __future__ import annotations

import importlib.util

from kvbench.core.devices import is_gpu
from kvbench.model.cells import Cell


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


# The package each quantized cache backend imports, and how to install it; fp8 needs torch alone.
_QUANTIZED_BACKEND_PACKAGES = {
    "quanto": ("optimum.quanto", "optimum-quanto (pip install 'kvbench[quantized]')"),
    "hqq": ("hqq", "hqq (pip install hqq)"),
}


def unsupported_reason(
    cell: Cell,
    device: str,
    capability: tuple[int, int] | None = None,
    quantized_backend: str = "quanto",
    *,
    capability_known: bool = True,
) -> str | None:
    """Why this machine cannot run a cell's cache or attention implementation, known before trying.
    `capability` is the GPU's compute capability (None on a CPU); not `capability_known` where the GPUs are
    other machines' (--launcher ray), whose workers decide."""
    if cell.cache_implementation in ("offloaded", "offloaded_static") and not is_gpu(device):
        return f"cache_implementation={cell.cache_implementation} offloads to a GPU and needs a CUDA device"
    package = _QUANTIZED_BACKEND_PACKAGES.get(quantized_backend)
    if cell.cache_implementation == "quantized" and package is not None and not _installed(package[0]):
        return f"cache_implementation=quantized with the {quantized_backend} backend needs {package[1]}"
    if cell.cache_implementation == "quantized" and quantized_backend == "fp8":
        missing = _fp8_cache_missing()
        if missing is not None:
            return missing
    gpu_elsewhere = not capability_known and is_gpu(device)
    if cell.attn_implementation == "flash_attention_2" and not gpu_elsewhere and (capability is None or capability < (8, 0)):
        found = f"this GPU has {capability[0]}.{capability[1]}" if capability else f"the device is {device}"
        return f"attn_implementation=flash_attention_2 needs a GPU of compute capability 8.0 or newer ({found})"
    if cell.attn_implementation == "flash_attention_2" and not _installed("flash_attn"):
        return "attn_implementation=flash_attention_2 needs the flash-attn package"
    return None


def _fp8_cache_missing() -> str | None:
    """Why the installed transformers cannot build an fp8 quantized cache: its generate() knows the backend only
    where cache_utils has the layer (5.24 has it, 5.17 not), and otherwise fails inside the first run."""
    import transformers
    from transformers import cache_utils

    if hasattr(cache_utils, "Fp8QuantizedLayer"):
        return None
    return (
        f"cache_implementation=quantized with the fp8 backend needs a transformers with an fp8 quantized cache"
        f" (this one, {transformers.__version__}, has none): pip install -U transformers, or --quantized-backend quanto"
    )
