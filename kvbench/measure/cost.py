"""A loaded model's cost for the roofline (kvbench.model.costs.ModelCost): its parameters by role and its
attention shape, read from the model and its config."""

from __future__ import annotations

from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.kvsize import BYTES_PER_ELEMENT, kv_geometry
from kvbench.model.costs import ModelCost


def model_cost(config: Any, parameters: int, dtype: str, lookup_parameters: int = 0, head_parameters: int = 0) -> ModelCost:
    """ModelCost from a transformers config (GPT-2 and Llama attribute names), a parameter count, a dtype,
    and how many of the parameters are lookup tables and the output head (parameter_roles)."""
    if dtype not in BYTES_PER_ELEMENT:
        raise KvbenchError(f"unknown dtype {dtype!r} for the roofline; use one of {', '.join(BYTES_PER_ELEMENT)}")
    geometry = kv_geometry(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if geometry is None or not heads or not hidden:
        raise KvbenchError(f"{type(config).__name__} does not say its layers, heads and hidden size; the roofline needs them")
    return ModelCost(
        parameters=parameters,
        bytes_per_element=BYTES_PER_ELEMENT[dtype],
        layers=geometry.layers,
        hidden=hidden,
        attention_width=heads * geometry.head_dim,
        kv_heads=geometry.kv_heads,
        head_dim=geometry.head_dim,
        lookup_parameters=lookup_parameters,
        head_parameters=head_parameters,
        intermediate_size=_intermediate_size(text, hidden),
    )


def _intermediate_size(config: Any, hidden: int) -> int:
    """The MLP's width: intermediate_size (Llama, Qwen, Mistral), GPT-2's n_inner, which None makes 4 x hidden;
    0 where the config says neither."""
    size = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    if size is None and hasattr(config, "n_inner"):
        size = 4 * hidden
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


def parameter_roles(model: Any) -> tuple[int, int]:
    """(lookup-table parameters, output-head parameters) of a loaded transformers model: every
    nn.Embedding's weight except one shared with the output head (GPT-2 ties them), and the head's weight."""
    import torch

    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    lookup = sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not head_weight
    )
    return lookup, head_weight.numel() if head_weight is not None else 0
