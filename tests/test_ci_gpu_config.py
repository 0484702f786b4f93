"""configs/ci-gpu.toml measures a regime where the KV cache matters: a grouped-query-attention model in bfloat16
at a few thousand positions, where kvbench's own roofline puts the uncached mode far above the cached one on a
datacenter GPU (GPT-2 small at 256 tokens, the config before, had both modes at the same bound)."""

from pathlib import Path

import pytest
import torch
import transformers

from kvbench.analysis.roofline import roofline_bound
from kvbench.measure.cost import model_cost, parameter_roles
from kvbench.measure.models import shipped_configs
from kvbench.model.costs import datasheet_peaks
from kvbench.model.experiment import build_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ci-gpu.toml"


def _cost(model: str, dtype: str):
    config = transformers.AutoConfig.from_pretrained(str(shipped_configs()[model]))
    with torch.device("meta"):
        loaded = transformers.AutoModelForCausalLM.from_config(config)
    lookup, head = parameter_roles(loaded)
    return config, model_cost(config, sum(p.numel() for p in loaded.parameters()), dtype, lookup, head)


def _uncached_over_cached(model: str, dtype: str, prompt: int, new: int, batch: int) -> float:
    _, cost = _cost(model, dtype)
    h100 = datasheet_peaks("NVIDIA H100 80GB HBM3")
    assert h100 is not None
    bounds = {
        mode: roofline_bound(cost, mode, prompt, new, batch, h100.memory_bandwidth_bytes_per_s, h100.fp16_tensor_flops_per_s)
        for mode in ("cached", "uncached")
    }
    return bounds["uncached"].bound_s / bounds["cached"].bound_s


def test_the_ci_config_is_a_gqa_model_in_bfloat16_with_random_weights_at_a_few_thousand_positions():
    config = build_config(CONFIG, {})
    (model,) = config.model
    (prompt,) = config.prompt_tokens
    (new,) = config.max_new_tokens
    assert (config.dtype, config.weights, config.device) == (["bfloat16"], "random", "cuda")
    hf_config, _ = _cost(model, "bfloat16")
    assert hf_config.num_key_value_heads < hf_config.num_attention_heads
    assert 2000 <= prompt + new <= hf_config.max_position_embeddings


def test_the_ci_config_measures_where_the_cache_matters_and_the_old_one_did_not():
    config = build_config(CONFIG, {})
    ratio = _uncached_over_cached(
        config.model[0], config.dtype[0], config.prompt_tokens[0], config.max_new_tokens[0], config.batch_size[0]
    )
    assert ratio > 10
    # GPT-2 small in float32 from a 6-token prompt to 256 new tokens: the same bound in both modes.
    assert _uncached_over_cached("gpt2", "float32", 6, 256, 1) == pytest.approx(1.0, abs=0.1)
