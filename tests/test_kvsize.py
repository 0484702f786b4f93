from transformers import GPT2Config, LlamaConfig

from kvbench.kvsize import cache_bytes_for, kv_cache_bytes, kv_geometry


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
