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


def kv_cache_bytes(
    layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int, bytes_per_element: int
) -> int:
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
    return kv_cache_bytes(
        geometry.layers, geometry.kv_heads, geometry.head_dim, tokens, batch, BYTES_PER_ELEMENT[dtype]
    )
