"""Resolve a model name, directory or shipped config into a loaded causal LM and its prompt ids."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvbench.core.devices import is_gpu, native_bfloat16
from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import read_bounded_text

# Inside the package, so a wheel install finds them wherever it runs.
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "shipped_models"
# GPT-2's tokenizer turns the reference prompt "What is KV caching?" into 6 tokens: without a
# tokenizer, a synthetic prompt of that length keeps runs comparable with the reference.
SYNTHETIC_PROMPT_TOKENS = 6
# A model's config.json is kilobytes; one a thousand times larger is not a config.
MOST_CONFIG_BYTES = 16 * 2**20
# The weight files from_pretrained looks for in a directory, in its order of preference.
TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# In a shipped config: the hub model whose architecture it copies.
HUB_ID_KEY = "kvbench_hub_id"


@dataclass
class ModelSource:
    """Where a model's architecture (and maybe weights) comes from."""

    name: str
    kind: str  # "local" (a directory), "shipped" (kvbench/shipped_models/<name>.json), "hub", "config-file"
    location: str


@dataclass
class ResolvedConfig:
    """A model's config and where its weights and tokenizer will come from."""

    config: Any
    weights: str  # "pretrained" or "random"
    label: str
    files_from: str | None  # directory or hub id holding weights and tokenizer files, if any
    local_only: bool  # load those files without asking the hub
    notes: list[str] = field(default_factory=list)
    # Passed to every from_pretrained call, so transformers never asks on stdin whether to run code.
    trust_remote_code: bool = False
    revision: str | None = None


def shipped_configs() -> dict[str, Path]:
    return {path.stem: path for path in sorted(SHIPPED_CONFIG_DIR.glob("*.json"))}


def shipped_trained_models() -> dict[str, Path]:
    """Models shipped with their trained weights and tokenizer (kvbench/shipped_models/<name>/): where output
    quality is measured, random weights would say nothing."""
    return {path.name: path for path in sorted(SHIPPED_CONFIG_DIR.iterdir()) if (path / "config.json").is_file()}


def shipped_names() -> list[str]:
    return [*shipped_configs(), *shipped_trained_models()]


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """A quick TCP check, so an offline machine falls back at once instead of after the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the hub client, through the proxy, can tell
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def locate(name: str) -> ModelSource:
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            if config.is_symlink():
                # A link to a device (/dev/zero would never end), a FIFO, a folder, or nothing at all.
                what = "nothing that exists" if not config.exists() else "no regular file"
                raise KvbenchError(
                    f"model directory {path}: its config.json is a link to {os.readlink(config)}, {what}; replace it"
                    " with the model's config.json"
                )
            if config.exists():
                raise KvbenchError(
                    f"model directory {path}: its config.json is not a regular file; replace it with the model's config.json"
                )
            raise KvbenchError(f"model directory {path} has no config.json; point --model at a saved Hugging Face model")
        return ModelSource(name, "local", str(path))
    if path.is_file() and path.suffix == ".json":
        return ModelSource(name, "config-file", str(path))
    shipped = shipped_configs()
    if name in shipped:
        return ModelSource(name, "shipped", str(shipped[name]))
    trained = shipped_trained_models()
    if name in trained:
        return ModelSource(name, "local", str(trained[name]))
    if path.suffix == ".json" or os.sep in name and not _looks_like_hub_id(name):
        raise KvbenchError(f"model path {name} does not exist; check the path")
    return ModelSource(name, "hub", name)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _read_config_file(path: str) -> Any:
    from transformers import AutoConfig

    try:
        data = json.loads(read_bounded_text(path, MOST_CONFIG_BYTES, "model config"))
    except json.JSONDecodeError as error:
        raise KvbenchError(f"model config {path} cannot be read ({error}); fix or replace it") from None
    if not isinstance(data, dict):
        raise KvbenchError(f"model config {path} is not a JSON object; fix or replace it")
    data.pop(HUB_ID_KEY, None)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise KvbenchError(f"model config {path} has no 'model_type'; add one (e.g. \"gpt2\")")
    try:
        return AutoConfig.for_model(model_type, **data)
    except _config_errors() as error:
        raise KvbenchError(f"model config {path}: {' '.join(str(error).split())}; fix the value") from None


def _config_errors() -> tuple[type[Exception], ...]:
    """What transformers raises for a config's values: huggingface_hub's validation of each field's type
    (vocab_size "big") is no ValueError."""
    from huggingface_hub.errors import StrictDataclassError

    return ValueError, TypeError, KeyError, StrictDataclassError


# Sizes every causal LM's config has, by transformers' common names (each config maps them to its own keys,
# GPT-2's n_layer for num_hidden_layers): a model with one at 0 or below fails deep inside torch, if at all.
CONFIG_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
)


def check_sizes(config: Any, name: str, where: str) -> None:
    """Each size a config sets is a positive integer; the first that is not is named in one line."""
    text_config = config.get_text_config()
    for size in CONFIG_SIZES:
        value = getattr(text_config, size, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            key = getattr(text_config, "attribute_map", {}).get(size, size)
            raise KvbenchError(f"{name}: {where} sets {key} to {value!r}; a model's sizes are positive integers")


def check_causal_lm(config: Any, name: str, custom_code: bool = False) -> None:
    """Only decoders keep a KV cache; refuse encoders (BERT) and encoder-decoders with a clear reason."""
    if custom_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return  # a causal LM by its own (allowed) code
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    hint = "kvbench measures decoder-only causal LMs such as gpt2 or a Llama model"
    # Whisper, Pegasus, Marian... also register a causal LM class: their decoder alone, which would be
    # measured without the encoder it attends to.
    if getattr(config, "is_encoder_decoder", False):
        raise KvbenchError(
            f"{name} (model_type {model_type!r}) is an encoder-decoder: it has a KV cache, but kvbench measures"
            f" only decoder-only causal LMs and would time its decoder alone; {hint}"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise KvbenchError(
            f"{name} (model_type {model_type!r}) is not a causal language model and has no KV cache to measure; {hint}"
        )
    # BERT-like encoders also register an LM head for causal use, but are encoders unless
    # explicitly configured as decoders.
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise KvbenchError(
            f"{name} (model_type {model_type!r}) is an encoder: it does not generate text and has no KV cache; {hint}"
        )


def max_positions(config: Any) -> int | None:
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_dtype(requested: str, config: Any, device: str, capability: tuple[int, int] | None = None) -> str:
    """'auto' is float32 on a CPU (as the reference ran); on a GPU the checkpoint's own 16-bit type,
    except that a bfloat16 checkpoint runs in float16 on a GPU without native bfloat16 (compute
    capability below 8.0, e.g. a T4), where bfloat16 is emulated and far slower."""
    if requested != "auto":
        return requested
    if is_gpu(device):
        declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        declared = str(declared).replace("torch.", "") if declared is not None else None
        if declared == "bfloat16" and capability is not None and not native_bfloat16(capability):
            return "float16"
        if declared in ("float16", "bfloat16"):
            return declared
    return "float32"


def bfloat16_note(dtypes: list[str], capability: tuple[int, int] | None) -> str | None:
    """A word for the results file when bfloat16 is asked for on a GPU that only emulates it."""
    if "bfloat16" not in dtypes or capability is None or native_bfloat16(capability):
        return None
    return (
        f"bfloat16 on a GPU of compute capability {capability[0]}.{capability[1]} is emulated (native from"
        " 8.0): its cells time the emulation, far slower than float16"
    )


def refuse_custom_code(config_path: Path, name: str, trust_remote_code: bool) -> None:
    """A config with `auto_map` names Python files that transformers would import (and, without an
    explicit answer, ask about on stdin): refuse it unless the user allowed custom code."""
    if trust_remote_code:
        return
    try:
        data = json.loads(read_bounded_text(config_path, MOST_CONFIG_BYTES, "model config"))
    except json.JSONDecodeError as error:
        raise KvbenchError(f"model config {config_path} cannot be read ({error}); fix or replace it") from None
    if isinstance(data, dict) and data.get("auto_map"):
        raise KvbenchError(
            f"{name} ships its own Python code (auto_map in {config_path.name}); kvbench runs it only with"
            " --trust-remote-code, after you have read it"
        )


def weight_files(directory: Path) -> list[Path]:
    """The files from_pretrained loads as a directory's weights, found as transformers finds them: the file
    config.json names (`transformers_weights`), else model.safetensors, its sharded index, pytorch_model.bin,
    its sharded index, the first that exists. An index comes with its shards. Anything else there (a
    Trainer's training_args.bin, an optimizer state) is never loaded, so never checked."""
    try:
        config = json.loads(read_bounded_text(directory / "config.json", MOST_CONFIG_BYTES, "model config"))
        explicit = config.get("transformers_weights")
    except (KvbenchError, ValueError, AttributeError):
        explicit = None
    if isinstance(explicit, str) and not (directory / explicit).resolve().is_relative_to(directory.resolve()):
        raise KvbenchError(f"{directory}: config.json names weights outside the model ({explicit!r}); fix config.json")
    candidates = [explicit] if isinstance(explicit, str) else list(TRANSFORMERS_WEIGHT_FILES)
    entry = next((directory / name for name in candidates if (directory / name).is_file()), None)
    if entry is None:
        return []
    if not entry.name.endswith(".index.json"):
        return [entry]
    try:
        index = json.loads(read_bounded_text(entry, MOST_CONFIG_BYTES, "weight index"))
        shards = sorted(set(index["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise KvbenchError(f"{directory}: weight index {entry.name} cannot be read ({error}); fix or replace it") from None
    files = [directory / shard for shard in shards]
    # An index is the model's own file: a shard named outside its directory (../, an absolute path) is no
    # shard of it.
    outside = [str(shard) for shard, path in zip(shards, files) if not path.resolve().is_relative_to(directory.resolve())]
    if outside:
        raise KvbenchError(f"{directory}: weight index {entry.name} names files outside the model: {', '.join(outside)}")
    return files


def check_weight_files(directory: Path, name: str) -> None:
    """Open the weight files from_pretrained will load, reading headers only, so a damaged or unsafe file
    is found before anything is measured."""
    for path in weight_files(directory):
        if not path.is_file():
            raise KvbenchError(f"{name}: weight file {path.name} listed in its index is missing; download it again")
        if path.suffix == ".safetensors":
            _check_safetensors(path, name)
        else:
            _check_pickled_weights(path, name)


def _check_safetensors(path: Path, name: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise KvbenchError(
            f"{name}: weight file {path.name} is damaged ({error}); download it again or use --weights random"
        ) from None


def _check_pickled_weights(path: Path, name: str) -> None:
    """Unpickle with weights_only on the meta device, as transformers loads it (weights_only): no tensor
    data is kept, and a pickle that would run code is refused by torch rather than run."""
    import pickle
    import zipfile

    import torch

    # torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped, but transformers loads it all the same.
    mmap = zipfile.is_zipfile(path)
    try:
        torch.load(path, map_location="meta", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise KvbenchError(unsafe_weights_message(name, path.name)) from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a bad file
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise KvbenchError(unsafe_weights_message(name, path.name)) from None
        raise KvbenchError(
            f"{name}: weight file {path.name} cannot be read ({type(error).__name__}: {str(error)[:200]});"
            " download it again or use --weights random"
        ) from None


def unsafe_weights_message(name: str, file: str) -> str:
    return (
        f"{name}: the weights in {file} cannot be loaded safely (a pickle that holds more than tensors, which"
        " could run code); use the model's .safetensors weights, or --weights random"
    )


def _load_config(
    source: ModelSource, weights: str, trust_remote_code: bool = False, revision: str | None = None
) -> ResolvedConfig:
    from transformers import AutoConfig

    if source.kind == "local":
        directory = Path(source.location)
        refuse_custom_code(directory / "config.json", source.name, trust_remote_code)
        unreadable: tuple[type[Exception], ...] = (OSError, *_config_errors())
        try:
            config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        except unreadable as error:
            reason = " ".join(str(error).split())
            raise KvbenchError(f"model directory {directory}: cannot read its config ({reason}); fix it") from None
        has_weights = bool(weight_files(directory))
        if weights == "pretrained" and not has_weights:
            raise KvbenchError(
                f"model directory {directory} holds no weight files that transformers loads"
                f" ({', '.join(TRANSFORMERS_WEIGHT_FILES)}); use --weights random to time its architecture"
            )
        use = "pretrained" if has_weights and weights != "random" else "random"
        if use == "pretrained":
            check_weight_files(directory, source.name)
        notes = []
        if use == "random" and weights == "auto":
            notes.append(f"{directory} holds no weights: random weights from its config.json")
        shipped = directory.resolve().parent == SHIPPED_CONFIG_DIR
        described = f"trained model shipped with kvbench, {directory}" if shipped else f"local directory {directory}"
        return ResolvedConfig(config, use, described, str(directory), True, notes)
    copies = shipped_hub_id(Path(source.location)) if source.kind == "shipped" else None
    if source.kind == "config-file" or source.kind == "shipped" and (weights == "random" or copies is None):
        if weights == "pretrained":
            raise KvbenchError(
                f"{source.name} is a config without weights; use --weights random or auto, or pass a hub id or model directory"
            )
        return _random_from_file(Path(source.location), source.kind)
    if source.kind == "shipped" and copies is not None:
        return _from_hub(copies, weights, Path(source.location), revision)
    fallback = next((p for p in shipped_configs().values() if shipped_hub_id(p) == source.name), None)
    if weights == "random" and fallback is not None and revision is None:
        return _random_from_file(fallback, "shipped")
    return _from_hub(source.name, weights, fallback, revision, trust_remote_code)


def shipped_hub_id(path: Path) -> str | None:
    """The hub model a shipped config copies, whose real weights `--weights auto` tries first."""
    return json.loads(path.read_text(encoding="utf-8")).get(HUB_ID_KEY)


def _random_from_file(path: Path, kind: str) -> ResolvedConfig:
    label = "shipped config" if kind == "shipped" else "config file"
    return ResolvedConfig(_read_config_file(str(path)), "random", f"{label} {path}", None, True)


def _from_hub(
    hub_id: str,
    weights: str,
    fallback: Path | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ResolvedConfig:
    """Real weights where the hub or the local cache has them; else the shipped config, if any."""
    from transformers import AutoConfig

    online = hub_reachable()
    try:
        config = AutoConfig.from_pretrained(
            hub_id, local_files_only=not online, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and "trust_remote_code" in str(error):
            raise KvbenchError(
                f"{hub_id} ships its own Python code (auto_map in its config); kvbench runs it only with"
                " --trust-remote-code, after you have read it"
            ) from None
        reason = "the hub is unreachable and it is not in the local cache" if not online else str(error)
        if weights == "auto" and fallback is not None:
            resolved = _random_from_file(fallback, "shipped")
            why = "hub unreachable, not cached" if not online else "not loadable from the hub"
            resolved.notes.append(
                f"{hub_id}: no pretrained weights ({why}), so RANDOM weights from the shipped config"
                f" {fallback.name}: the same architecture, so the same timing"
            )
            return resolved
        available = ", ".join(shipped_names()) or "none"
        raise KvbenchError(
            f"model {hub_id!r} not found: {reason}; pass a local model directory, a hub id while online,"
            f" or a shipped config ({available})"
        ) from None
    use = "random" if weights == "random" else "pretrained"
    if use == "pretrained" and not online:
        _check_cached_weights(hub_id, revision)
    return ResolvedConfig(
        config, use, f"hub {hub_id}", hub_id, not online, trust_remote_code=trust_remote_code, revision=revision
    )


def _check_cached_weights(hub_id: str, revision: str | None) -> None:
    """Offline, a hub model loads from the local cache: its weight files are checked there, as a local
    directory's are, so a damaged or unsafe file is one line before any measuring process starts."""
    from huggingface_hub import try_to_load_from_cache

    config_file = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    if isinstance(config_file, str):
        check_weight_files(Path(config_file).parent, hub_id)


@dataclass
class PreparedModel:
    """A model resolved and checked, its tokenizer loaded, its weights not yet: enough to validate a
    whole sweep before the first measurement."""

    name: str
    resolved: ResolvedConfig
    tokenizer: Any | None
    max_positions: int | None
    notes: list[str]


def prepare_model(name: str, weights: str, *, trust_remote_code: bool = False, revision: str | None = None) -> PreparedModel:
    from transformers import AutoTokenizer

    resolved = _load_config(locate(name), weights, trust_remote_code, revision)
    resolved.trust_remote_code = trust_remote_code
    check_causal_lm(resolved.config, name, custom_code=trust_remote_code)
    check_sizes(resolved.config, name, resolved.label)
    notes = list(resolved.notes)
    tokenizer = None
    if resolved.files_from is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                resolved.files_from,
                local_files_only=resolved.local_only,
                revision=resolved.revision,
                trust_remote_code=resolved.trust_remote_code,
            )
        # ImportError: transformers 4.x, finding no tokenizer files, falls back to a converter that needs
        # protobuf, which kvbench does not install (5.x raises OSError).
        except (OSError, ValueError, TypeError, KeyError, ImportError):
            notes.append(f"{name}: no tokenizer found; the prompt is synthetic token ids")
    return PreparedModel(name, resolved, tokenizer, max_positions(resolved.config), notes)


def quiet_transformers() -> None:
    """transformers' warnings and progress bars off: kvbench reports what matters itself, and they would bury
    its progress display (or, from every measuring process, the parent's)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
