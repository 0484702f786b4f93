from transformers import GPT2Config, LlamaConfig

from kvbench.core.kvsize import cache_bytes_for, kv_cache_bytes, kv_geometry


def test_gpt2_reference_cache_size():
    # 2 x 12 layers x 12 heads x 64 x 1006 tokens x 4 bytes = 74,170,368 bytes (about 74 MB).
    assert kv_cache_bytes(12, 12, 64, 1006, 1, 4) == 74_170_368
    assert cache_bytes_for(GPT2Config(), 1006, 1, "float32") == 74_170_368


def test_grouped_query_attention_uses_kv_heads():
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, num_hidden_layers=22)
    geometry = kv_geometry(config)
    assert (geometry.layers, geometry.kv_heads, geometry.head_dim) == (22, 4, 64)
    # 2 x 22 x 4 x 64 x 2048 tokens x batch 8 x 2 bytes
    assert cache_bytes_for(config, 2048, 8, "bfloat16") == 2 * 22 * 4 * 64 * 2048 * 8 * 2


def test_batch_and_dtype_scale_linearly():
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32)
    one = cache_bytes_for(config, 10, 1, "float32")
    assert cache_bytes_for(config, 10, 4, "float32") == 4 * one
    assert cache_bytes_for(config, 10, 1, "float16") == one // 2


# --- the cache measured after a real generate() ---------------------------------------------------

import pytest  # noqa: E402

from kvbench.core.kvsize import agrees_with_theory, cache_of, cached_positions, measured_cache_bytes  # noqa: E402

PROMPT, NEW, BATCH = 5, 7, 2


def _generate(directory, **kwargs):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.randint(3, 60, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        use_cache=kwargs.pop("use_cache", True),
        pad_token_id=0,
        return_dict_in_generate=True,
        **kwargs,
    )
    assert output.sequences.shape[1] == PROMPT + NEW
    return model.config, cache_of(output)


def test_cache_holds_prompt_plus_new_minus_one_positions():
    # The last generated token is returned, never fed back through the model.
    assert cached_positions(prompt_tokens=5, new_tokens=7) == 11
    assert cached_positions(prompt_tokens=5, new_tokens=1) == 5


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_measured_dynamic_cache_equals_theory(fixture, request):
    config, cache = _generate(request.getfixturevalue(fixture))
    measured = measured_cache_bytes(cache)
    positions = cached_positions(PROMPT, NEW)
    theory = cache_bytes_for(config, positions, BATCH, "float32")
    assert measured.cache_class == "DynamicCache"
    assert measured.positions_held == positions
    assert measured.kv_bytes == theory  # exact: prompt + new - 1 positions
    assert agrees_with_theory(measured.kv_bytes, theory)
    # One position more (prompt + new) is already off by more than 1% at this length.
    assert not agrees_with_theory(measured.kv_bytes, cache_bytes_for(config, PROMPT + NEW, BATCH, "float32"))
    assert measured.tensors == 2 * config.num_hidden_layers
    assert measured.bytes_by_device == {"cpu": theory}
    assert measured.reason is None


def test_gqa_cache_is_smaller_than_its_attention_heads_suggest(tiny_llama_dir):
    config, cache = _generate(tiny_llama_dir)
    with_all_heads = kv_cache_bytes(2, config.num_attention_heads, 8, cached_positions(PROMPT, NEW), BATCH, 4)
    assert measured_cache_bytes(cache).kv_bytes == with_all_heads // 2  # 2 KV heads of 4


def test_static_cache_measures_its_preallocation_and_says_so(tiny_gpt2_dir):
    config, cache = _generate(tiny_gpt2_dir, cache_implementation="static", max_cache_len=32)
    measured = measured_cache_bytes(cache)
    theory = cache_bytes_for(config, cached_positions(PROMPT, NEW), BATCH, "float32")
    assert measured.kv_bytes >= theory
    assert measured.kv_bytes == cache_bytes_for(config, 32, BATCH, "float32")
    assert "static cache" in measured.reason and "32 positions" in measured.reason
    assert measured.bookkeeping_bytes > 0  # its position counters, kept out of kv_bytes


def test_sliding_window_cache_holds_less_and_says_why(tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        sliding_window=4,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    config, cache = _generate(tmp_path)
    measured = measured_cache_bytes(cache)
    assert measured.kv_bytes < cache_bytes_for(config, cached_positions(PROMPT, NEW), BATCH, "float32")
    assert "sliding-window" in measured.reason and "4" in measured.reason


def test_uncached_generation_has_no_cache_to_measure(tiny_gpt2_dir):
    _, cache = _generate(tiny_gpt2_dir, use_cache=False)
    measured = measured_cache_bytes(cache)
    assert measured.kv_bytes is None and "use_cache=False" in measured.reason


def test_legacy_tuples_count_each_storage_once():
    import torch

    key = torch.zeros(1, 2, 10, 4)
    value = torch.zeros(1, 2, 10, 4)
    # The second layer's key is a view of the first's: the same memory, so counted once.
    legacy = ((key, value), (key[:, :, :5], torch.zeros(1, 2, 10, 4)))
    measured = measured_cache_bytes(legacy)
    assert measured.kv_bytes == 3 * 1 * 2 * 10 * 4 * 4
    assert measured.tensors == 3
    assert measured.positions_held is None


def test_quanto_cache_theory_worked_by_hand():
    from kvbench.model.caches.quantized import quantized_cache_bytes

    # 2 layers, 2 KV heads of 16: 32 values per position. 8 + 24 tokens hold 31 positions; of the 23 decode
    # steps, 23 % 2 = 1 waits at full precision, 30 positions are quantized: 960 values at 4 bits (480 bytes)
    # plus 960 / 16 = 60 groups of a float32 scale and zero point (480 bytes), and 1 × 32 × 4 = 128 bytes;
    # K and V in each of 2 layers: 4 × (960 + 128) = 4352.
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32)
    settings = {"backend": "quanto", "nbits": 4, "q_group_size": 16, "residual_length": 2}
    theory = quantized_cache_bytes(config, 8, 24, 1, "float32", settings)
    assert (theory.kv_bytes, theory.quantized_positions, theory.full_precision_positions) == (4352, 30, 1)
    # 2 bits: 240 bytes of values instead of 480.
    assert quantized_cache_bytes(config, 8, 24, 1, "float32", {**settings, "nbits": 2}).kv_bytes == 4352 - 4 * 240
    assert quantized_cache_bytes(config, 8, 24, 1, "float32", {"backend": "fp8"}).kv_bytes == 4 * 31 * 32
    assert quantized_cache_bytes(config, 8, 24, 1, "float32", {"backend": "hqq"}) is None
