"""A prepared model built on its devices (its weights, or random ones seeded), checked against its context,
and the prompt ids it is given."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from kvbench.core.devices import Devices
from kvbench.core.errors import KvbenchError
from kvbench.core.limits import out_of_memory
from kvbench.measure.models import SYNTHETIC_PROMPT_TOKENS, PreparedModel, resolve_dtype, unsafe_weights_message


@dataclass
class LoadedModel:
    model: Any
    prepared: PreparedModel
    dtype: str
    attn_implementation: str
    parameters: int
    devices: Devices  # every device holding part of the model
    device_map: dict[str, str] | None = None

    def info(self) -> dict[str, Any]:
        """What the results file records about the model actually measured."""
        return {
            "name": self.prepared.name,
            "source": self.prepared.resolved.label,
            "weights": self.prepared.resolved.weights,
            "model_type": self.prepared.resolved.config.model_type,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "attn_implementation": self.attn_implementation,
            "max_positions": self.prepared.max_positions,
            "devices": list(self.devices.names),
            "device_map": self.device_map,
        }


def parameter_count(prepared: PreparedModel) -> int:
    """The parameters of a prepared model's architecture, counted on the meta device: no memory is taken and no
    weights are read, so a model larger than this machine is counted before anything is loaded. Shared (tied)
    weights count once, as they take memory once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            prepared.resolved.config, trust_remote_code=prepared.resolved.trust_remote_code
        )
    return sum(parameter.numel() for parameter in model.parameters())


def check_context(prepared: PreparedModel, prompt_tokens: int, new_tokens: int) -> None:
    limit = prepared.max_positions
    if limit is not None and prompt_tokens >= limit:
        raise KvbenchError(
            f"{prepared.name}: the prompt is too long: {prompt_tokens} tokens leave no room for a new token in"
            f" its context of {limit} tokens; use a shorter prompt or --prompt-tokens {max(limit // 2, 1)}"
        )
    if limit is not None and prompt_tokens + new_tokens > limit:
        raise KvbenchError(
            f"{prepared.name}: a {prompt_tokens}-token prompt plus {new_tokens} new tokens exceeds its"
            f" context of {limit} tokens; use --max-new-tokens {max(limit - prompt_tokens, 1)} or less"
        )


def build_model(
    prepared: PreparedModel,
    *,
    dtype: str,
    attn_implementation: str,
    device: str,
    seed: int,
    device_map: str | None = None,
    capability: tuple[int, int] | None = None,
) -> LoadedModel:
    import pickle

    import torch
    from transformers import AutoModelForCausalLM

    name, resolved = prepared.name, prepared.resolved
    if device_map is not None and importlib.util.find_spec("accelerate") is None:
        raise KvbenchError("--device-map needs accelerate; pip install accelerate")
    dtype_name = resolve_dtype(dtype, resolved.config, device, capability)
    torch_dtype = getattr(torch, dtype_name)
    attn = None if attn_implementation == "auto" else attn_implementation
    model: Any
    try:
        if resolved.weights == "pretrained":
            assert resolved.files_from is not None, "pretrained weights come from a directory or a hub id"
            # Weights whose shapes differ from the config's are loaded aside and named below: without this,
            # transformers logs a report (which kvbench keeps quiet) and raises an error that points to it.
            with_info: Any = AutoModelForCausalLM.from_pretrained(
                resolved.files_from,
                dtype=torch_dtype,
                attn_implementation=attn,
                local_files_only=resolved.local_only,
                device_map=device_map,
                revision=resolved.revision,
                trust_remote_code=resolved.trust_remote_code,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
            model, loading_info = with_info
            _refuse_mismatched_shapes(loading_info.get("mismatched_keys") or (), name)
        else:
            # Seeded so two runs of the same config time the same random model.
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                resolved.config,
                dtype=torch_dtype,
                attn_implementation=attn,
                trust_remote_code=resolved.trust_remote_code,
            )
            if device_map is not None:
                model = _dispatch(model, device_map)
    except (ImportError, ValueError) as error:
        # An address space too small to map a library the model needs (ulimit -v) says so; transformers
        # raises these too for an attention backend or dtype the setup lacks.
        raise out_of_memory(error) or KvbenchError(
            f"{name}: cannot build the model with {dtype_name}/{attn_implementation}: {error}"
        ) from None
    except OSError as error:
        raise KvbenchError(f"{name}: cannot load weights ({error}); try --weights random") from None
    except pickle.UnpicklingError:
        raise KvbenchError(unsafe_weights_message(name, "its .bin/.pt files")) from None
    placement = None
    if device_map is None:
        model = model.to(device)
        devices = Devices((device,))
    else:
        # transformers leaves hf_device_map unset when everything landed on one device.
        placement = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
        devices = Devices(_placement_devices(placement))
    return LoadedModel(
        model=model.eval(),
        prepared=prepared,
        dtype=dtype_name,
        attn_implementation=getattr(model.config, "_attn_implementation", None) or "auto",
        parameters=sum(p.numel() for p in model.parameters()),
        devices=devices,
        device_map={module: _device_name(where) for module, where in placement.items()} if placement else None,
    )


def _refuse_mismatched_shapes(mismatched: Any, name: str) -> None:
    """Weights of another shape than the architecture's config gives (a config.json edited, or another
    model's): the first named, in one line."""
    shapes = sorted((str(key), list(stored), list(expected)) for key, stored, expected in mismatched)
    if not shapes:
        return
    key, stored, expected = shapes[0]
    more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
    raise KvbenchError(
        f"{name}: cannot load the model: its weights do not fit the architecture its config gives: {key} is"
        f" {stored} in the weights, {expected} in the model{more}; fix config.json to match its weights, or use"
        " --weights random to time the architecture it gives"
    )


def _dispatch(model: Any, device_map: str) -> Any:
    """Spread a model built in memory (random weights) over the GPUs as from_pretrained would."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    keep_whole = getattr(model, "_no_split_modules", None)
    max_memory = None
    if device_map != "sequential":
        max_memory = get_balanced_memory(model, no_split_module_classes=keep_whole, low_zero=device_map == "balanced_low_0")
    placement = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=keep_whole)
    model = dispatch_model(model, device_map=placement)
    model.hf_device_map = placement
    return model


def _device_name(where: Any) -> str:
    return f"cuda:{where}" if isinstance(where, int) else str(where)


def _placement_devices(placement: dict[str, Any]) -> tuple[str, ...]:
    """The devices of a device map, in the order the model's modules use them (inputs go to the first)."""
    return tuple(dict.fromkeys(_device_name(where) for where in placement.values()))


def prompt_ids(prepared: PreparedModel, prompt: str, prompt_tokens: int | None, seed: int) -> tuple[Any, str]:
    """One row of prompt ids and how they were made: tokenized text, or seeded synthetic ids."""
    import torch

    if prepared.tokenizer is not None:
        ids = prepared.tokenizer(prompt, return_tensors="pt").input_ids[0]
        if ids.numel() > 0:
            return (ids if prompt_tokens is None else fit_to_length(ids, prompt_tokens)), "tokenized"
    length = prompt_tokens or SYNTHETIC_PROMPT_TOKENS
    vocab = prepared.resolved.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (length,), generator=generator), "synthetic"


def fit_to_length(ids: Any, length: int) -> Any:
    """A tokenized prompt repeated, then cut, to exactly `length` ids: real tokens of the model's own
    vocabulary at any prompt length, from one short text."""
    repeats = -(-length // int(ids.numel()))
    return ids.repeat(repeats)[:length]
