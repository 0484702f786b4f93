"""transformers' QuantizedCache: keys and values stored in fewer bits with a scale per group, by one of three
backends, its settings, what each backend needs, and its bytes in theory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvbench.core import packages
from kvbench.core.kvsize import BYTES_PER_ELEMENT, cached_positions, kv_geometry
from kvbench.model.caches.base import CacheImplementation, CacheSettings, Generated

# QuantizedCache's backends in transformers: quanto (optimum-quanto) and hqq group-wise integers, fp8
# per-tensor float8 (torch alone). The bits each integer backend can store.
QUANTIZED_BACKENDS = ("quanto", "hqq", "fp8")
QUANTIZED_NBITS = {"quanto": (2, 4), "hqq": (1, 2, 3, 4, 8)}
# The package each backend imports, and how to install it; fp8 needs torch alone.
_BACKEND_PACKAGES = {
    "quanto": ("optimum.quanto", "optimum-quanto (pip install 'kvbench[quantized]')"),
    "hqq": ("hqq", "hqq (pip install hqq)"),
}


@dataclass(frozen=True)
class QuantizedTheory:
    """A quantized cache's bytes in theory, and how its positions are held."""

    kv_bytes: int
    quantized_positions: int
    full_precision_positions: int  # the residual window, not yet quantized


def quantized_cache_bytes(
    config: Any, prompt_tokens: int, new_tokens: int, batch: int, dtype: str, cache_settings: dict[str, Any]
) -> QuantizedTheory | None:
    """transformers' QuantizedCache after a generation, with generate()'s cache_config. quanto: `nbits` per
    value packed into bytes, and a scale and a zero point in the states' dtype for each group of
    `q_group_size` values; the prompt is quantized at prefill, then new positions wait at full precision
    until `residual_length` of them have gathered and everything is quantized again. fp8: one byte per
    value (its one scale per tensor is bookkeeping). None for a backend not worked out here (hqq)."""
    geometry = kv_geometry(config)
    if geometry is None:
        return None
    positions = cached_positions(prompt_tokens, new_tokens)
    values_per_position = geometry.kv_heads * geometry.head_dim * batch
    backend = cache_settings.get("backend")
    if backend == "fp8":
        return QuantizedTheory(2 * geometry.layers * values_per_position * positions, positions, 0)
    if backend != "quanto":
        return None
    decode_steps = max(new_tokens, 1) - 1
    residual = decode_steps % cache_settings["residual_length"]
    quantized_values = (positions - residual) * values_per_position
    groups = -(-quantized_values // cache_settings["q_group_size"])
    quantized_bytes = quantized_values * cache_settings["nbits"] // 8 + 2 * groups * BYTES_PER_ELEMENT[dtype]
    residual_bytes = residual * values_per_position * BYTES_PER_ELEMENT[dtype]
    return QuantizedTheory(2 * geometry.layers * (quantized_bytes + residual_bytes), positions - residual, residual)


def quantized_theory_text(theory: QuantizedTheory, cache_settings: dict[str, Any], dtype: str) -> str:
    """What a quantized cache's theory counts, for the results file and `show`."""
    if cache_settings.get("backend") == "fp8":
        return f"theory for the fp8 quantized cache: {theory.quantized_positions} positions at 1 byte per value"
    return (
        f"theory for the {cache_settings['backend']} quantized cache: {theory.quantized_positions} positions at"
        f" {cache_settings['nbits']} bits per value, with a {dtype} scale and zero point per"
        f" {cache_settings['q_group_size']} values, and the newest {theory.full_precision_positions} (its residual"
        f" window of up to {cache_settings['residual_length'] - 1}) at full precision"
    )


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


class Quantized(CacheImplementation):
    formula = "the quantized layout below"
    what_fits_note = (
        "quantized: counted as its quantized bytes per position, its residual window (up to"
        " quantized_residual_length - 1 of the newest positions) at full precision, and the full-precision copies"
        " of one layer's states that each step dequantizes"
    )
    # Each step dequantizes one layer's states and concatenates the new position to them (transformers'
    # QuantizedLayer.update): two full-precision copies of that layer while its attention runs.
    full_precision_layer_copies = 2

    def bits(self, settings: CacheSettings) -> list[int | None]:
        """Each swept value with an integer backend; fp8's width is fixed, so the bits do not apply."""
        if settings.quantized_backend not in QUANTIZED_NBITS:
            return [None]
        return list(settings.quantized_nbits)

    def settings_problem(self, settings: CacheSettings) -> str | None:
        backend, bits = settings.quantized_backend, QUANTIZED_NBITS.get(settings.quantized_backend)
        for nbits in settings.quantized_nbits:
            if bits is not None and nbits not in bits:
                return (
                    f"'quantized_nbits' cannot be {nbits} with the {backend} backend; choose one of {', '.join(map(str, bits))}"
                )
        if bits is None and len(settings.quantized_nbits) > 1:
            return (
                f"'quantized_nbits' lists several values, but the {backend} backend stores 8-bit floats whatever"
                " the bits; give one value, or use --quantized-backend quanto or hqq to sweep them"
            )
        return None

    def full_precision_window(self, nbits: int | None, new_tokens: int, residual_length: int | None) -> tuple[int, int]:
        """The integer backends' residual window: new positions wait at full precision until residual_length of
        them would gather, then everything is quantized again, so after s decode steps it holds s mod
        residual_length, at most residual_length - 1. fp8 (no bits) appends quantized positions: no window."""
        if nbits is None or residual_length is None or residual_length < 1:
            return 0, 0
        steps = max(new_tokens, 1) - 1
        return steps % residual_length, min(steps, residual_length - 1)

    def cache_config(self, settings: CacheSettings, nbits: int | None) -> dict[str, Any] | None:
        """The backend with the cell's bits, group size and residual window; fp8 alone (per-tensor:
        transformers refuses group-wise settings for it)."""
        if settings.quantized_backend not in QUANTIZED_NBITS:
            return {"backend": settings.quantized_backend}
        return {
            "backend": settings.quantized_backend,
            # A cell made by hand without its bits (not by expand) takes the first configured value.
            "nbits": nbits if nbits is not None else settings.quantized_nbits[0],
            "q_group_size": settings.quantized_group_size,
            "residual_length": settings.quantized_residual_length,
        }

    def unsupported_reason(self, device: str, settings: CacheSettings) -> str | None:
        backend = settings.quantized_backend
        package = _BACKEND_PACKAGES.get(backend)
        if package is not None and not packages.installed(package[0]):
            return f"cache_implementation=quantized with the {backend} backend needs {package[1]}"
        if backend == "fp8":
            return _fp8_cache_missing()
        return None

    def theory_bytes(self, generation: Generated, cache_config: dict[str, Any] | None) -> tuple[int | None, str | None]:
        settings, g = cache_config or {}, generation
        theory = quantized_cache_bytes(g.model_config, g.prompt_tokens, g.new_tokens, g.batch, g.dtype, settings)
        if theory is None:
            return None, f"no theory for the {settings.get('backend')} backend's layout"
        return theory.kv_bytes, quantized_theory_text(theory, settings, g.dtype)


QUANTIZED = Quantized("quantized")
