"""Theoretical KV cache size from a model's config: 2 (K and V) x layers x kv_heads x head_dim x tokens x batch x bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class KvGeometry:
    layers: int
    kv_heads: int
    head_dim: int


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int, bytes_per_element: int) -> int:
    return 2 * layers * kv_heads * head_dim * tokens * batch * bytes_per_element


def kv_geometry(config: Any) -> KvGeometry | None:
    """Layers, key/value heads and head size; grouped-query and multi-query models have fewer KV heads
    than attention heads. None when the config does not say (an unusual architecture)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (layers and heads):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "multi_query", False):
        kv_heads = 1
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    return KvGeometry(layers=layers, kv_heads=kv_heads, head_dim=head_dim)


def cache_bytes_for(config: Any, tokens: int, batch: int, dtype: str) -> int | None:
    geometry = kv_geometry(config)
    if geometry is None:
        return None
    return kv_cache_bytes(geometry.layers, geometry.kv_heads, geometry.head_dim, tokens, batch, BYTES_PER_ELEMENT[dtype])


def cached_positions(prompt_tokens: int, new_tokens: int) -> int:
    """Positions a cache holds after generating `new_tokens`: the last token is returned, never fed back,
    so its keys and values are never computed."""
    return prompt_tokens + max(new_tokens, 1) - 1


@dataclass(frozen=True)
class CacheMeasurement:
    """The bytes a KV cache object holds after a generation, found by walking its tensors."""

    cache_class: str | None
    kv_bytes: int | None  # key/value states (tensors of 2+ dimensions), each storage counted once
    bookkeeping_bytes: int  # counters and position vectors (0-1 dimensions) held beside the states
    tensors: int  # distinct storages counted in kv_bytes
    positions_held: int | None  # sequence length the cache reports, None where it does not say
    bytes_by_device: dict[str, int]  # kv_bytes split by the device that holds them
    reason: str | None  # why kv_bytes is None, or why it may legitimately differ from the theory


def cache_of(output: Any) -> Any:
    """The cache of a generate(..., return_dict_in_generate=True) output: `cache` in transformers 5
    (reading the older `past_key_values` name logs a deprecation warning), `past_key_values` before."""
    cache = getattr(output, "cache", None)
    if cache is None and "past_key_values" in getattr(output, "__dataclass_fields__", {}):
        cache = getattr(output, "past_key_values", None)
    return cache


_MAX_DEPTH = 8  # deep enough for EncoderDecoderCache -> cache -> layers -> layer -> tuple -> tensor


def _walk_tensors(value: Any, depth: int = 0, seen_objects: set[int] | None = None):
    """Every tensor reachable from a cache through attributes, sequences and dicts, each object once."""
    import torch

    seen_objects = set() if seen_objects is None else seen_objects
    if depth > _MAX_DEPTH or id(value) in seen_objects:
        return
    seen_objects.add(id(value))
    if isinstance(value, torch.Tensor):
        # Tensor subclasses that wrap others (quantized tensors) own no storage of their own: count the parts.
        if hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
            names, _ = value.__tensor_flatten__()
            for name in names:
                yield from _walk_tensors(getattr(value, name), depth + 1, seen_objects)
        else:
            yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_tensors(item, depth + 1, seen_objects)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_tensors(item, depth + 1, seen_objects)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for item in vars(value).values():
            yield from _walk_tensors(item, depth + 1, seen_objects)


def _storage_key_and_bytes(tensor: Any) -> tuple[tuple[str, int], int]:
    """Two views of one buffer are one allocation: key by (device, storage address), count the storage."""
    try:
        storage = tensor.untyped_storage()
        return (str(tensor.device), storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return (str(tensor.device), tensor.data_ptr()), tensor.numel() * tensor.element_size()


def _positions_held(cache: Any) -> int | None:
    get_seq_length = getattr(cache, "get_seq_length", None)
    if get_seq_length is None:
        return None
    try:
        return int(get_seq_length())
    except Exception:  # a cache class we do not know may want arguments or be empty
        return None


def _why_it_differs(cache: Any, bytes_by_device: dict[str, int]) -> str | None:
    """Cache layouts whose size is not 2 x layers x kv_heads x head_dim x positions x batch x bytes."""
    layers = getattr(cache, "layers", None) or []
    names = {type(cache).__name__, *(type(layer).__name__ for layer in layers)}
    reasons = []
    if any("Quantized" in name for name in names):
        reasons.append("quantized cache: states are stored in fewer bits, with scales, so it is smaller")
    windows = {getattr(layer, "sliding_window", None) for layer in layers if getattr(layer, "is_sliding", False)}
    if windows:
        sizes = ", ".join(str(window) for window in sorted(w for w in windows if w is not None)) or "a window of"
        reasons.append(f"sliding-window layers keep only the last {sizes} positions")
    max_lengths = {
        length
        for layer in layers
        if not getattr(layer, "is_sliding", False) and (length := getattr(layer, "max_cache_len", None)) is not None
    }
    if max_lengths:
        reasons.append(
            f"static cache: preallocated for {max(max_lengths)} positions, more than it fills when the generation is shorter"
        )
    if getattr(cache, "offloading", False) or len(bytes_by_device) > 1:
        where = ", ".join(f"{device} {size}" for device, size in sorted(bytes_by_device.items()))
        reasons.append(f"offloaded cache: layers wait on the CPU between uses (bytes by device: {where})")
    return "; ".join(reasons) or None


def measured_cache_bytes(cache: Any) -> CacheMeasurement:
    """Walk a cache object (DynamicCache, StaticCache, quantized or offloaded caches, legacy tuples of
    (key, value) per layer) and add up its tensors' bytes, each storage once."""
    if cache is None:
        return CacheMeasurement(
            None, None, 0, 0, None, {}, "no cache object: generate() ran with use_cache=False or returned none"
        )
    kv_bytes, bookkeeping_bytes, tensors = 0, 0, 0
    bytes_by_device: dict[str, int] = {}
    counted: set[tuple[str, int]] = set()
    for tensor in _walk_tensors(cache):
        key, size = _storage_key_and_bytes(tensor)
        if size == 0 or key in counted:
            continue
        counted.add(key)
        if tensor.dim() < 2:
            bookkeeping_bytes += size
            continue
        kv_bytes += size
        tensors += 1
        bytes_by_device[key[0]] = bytes_by_device.get(key[0], 0) + size
    cache_class = type(cache).__name__
    if tensors == 0:
        return CacheMeasurement(
            cache_class,
            None,
            bookkeeping_bytes,
            0,
            _positions_held(cache),
            {},
            f"{cache_class} holds no key/value tensors (empty, or a layout kvbench does not know)",
        )
    return CacheMeasurement(
        cache_class=cache_class,
        kv_bytes=kv_bytes,
        bookkeeping_bytes=bookkeeping_bytes,
        tensors=tensors,
        positions_held=_positions_held(cache),
        bytes_by_device=bytes_by_device,
        reason=_why_it_differs(cache, bytes_by_device),
    )


def agrees_with_theory(measured_bytes: int | None, theory_bytes: int | None, tolerance: float = 0.01) -> bool | None:
    """Whether a measured cache size is within `tolerance` (relative) of the theory; None if either is unknown."""
    if measured_bytes is None or not theory_bytes:
        return None
    return abs(measured_bytes - theory_bytes) <= tolerance * theory_bytes
