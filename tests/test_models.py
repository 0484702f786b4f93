import pytest

from kvbench.core.devices import resolve_device
from kvbench.core.errors import KvbenchError
from kvbench.measure.loading import build_model, prompt_ids
from kvbench.measure.models import check_causal_lm, locate, prepare_model, resolve_dtype, shipped_configs


def test_shipped_configs_include_gpt2_and_a_llama_architecture():
    shipped = shipped_configs()
    assert {"gpt2", "tinyllama-1.1b", "tiny-gpt2", "tiny-llama", "tiny-gqa-32k"} <= set(shipped)
    assert {"llama-3.1-8b", "qwen2.5-7b", "mistral-7b"} <= set(shipped)


# The real-size shipped configs: (layers, KV heads, head size, attention heads, position limit), and their
# bfloat16 cache bytes per token, 2 (K and V) x layers x KV heads x head size x 2 bytes.
REAL_SIZE = {
    "llama-3.1-8b": ((32, 8, 128, 32, 131072), 2 * 32 * 8 * 128 * 2),  # 131,072
    "qwen2.5-7b": ((28, 4, 128, 28, 131072), 2 * 28 * 4 * 128 * 2),  # 57,344
    "mistral-7b": ((32, 8, 128, 32, 32768), 2 * 32 * 8 * 128 * 2),  # 131,072
}


@pytest.mark.parametrize("name", sorted(REAL_SIZE))
def test_real_size_configs_have_their_models_kv_head_layout(name, monkeypatch):
    from kvbench.core.kvsize import cache_bytes_for, kv_geometry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (layers, kv_heads, head_dim, heads, limit), per_token = REAL_SIZE[name]
    prepared = prepare_model(name, "auto")  # offline: the shipped config, with random weights (not built here)
    config = prepared.resolved.config
    geometry = kv_geometry(config)
    assert (geometry.layers, geometry.kv_heads, geometry.head_dim) == (layers, kv_heads, head_dim)
    assert config.num_attention_heads == heads and prepared.max_positions == limit
    assert cache_bytes_for(config, 1, 1, "bfloat16") == per_token
    assert cache_bytes_for(config, 4096, 2, "bfloat16") == per_token * 4096 * 2
    assert str(config.dtype).endswith("bfloat16") and not config.tie_word_embeddings


def test_a_real_size_model_dry_runs_offline_without_building_its_weights(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from kvbench.cli import app
    from kvbench.measure import loading

    def never(*args, **kwargs):
        raise AssertionError("a dry run must not build the model")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "build_model", never)
    output = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", "-m", "llama-3.1-8b", "-n", "8", "-r", "1", "--dry-run", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing measured" in result.stdout and "llama-3.1-8b" in result.stdout
    assert not output.exists()


def test_the_long_context_model_takes_32768_positions_and_not_one_more():
    from kvbench.measure.loading import check_context

    prepared = prepare_model("tiny-gqa-32k", "random")
    assert prepared.resolved.config.num_key_value_heads == 1 < prepared.resolved.config.num_attention_heads
    check_context(prepared, 32768 - 32, 32)
    with pytest.raises(KvbenchError, match="exceeds its context of 32768 tokens"):
        check_context(prepared, 32768 - 32, 33)


def test_real_bert_checkpoint_is_refused_as_an_encoder(bert_dir):
    with pytest.raises(KvbenchError, match=r"model_type 'bert'\) is an encoder.*no KV cache"):
        prepare_model(str(bert_dir), "auto")


def test_encoder_decoder_is_refused():
    from transformers import T5Config

    with pytest.raises(KvbenchError, match="is an encoder-decoder: it has a KV cache"):
        check_causal_lm(T5Config(), "t5-small")


def test_unknown_model_offline_names_the_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KvbenchError) as error:
        prepare_model("no-such-org/no-such-model", "auto")
    message = str(error.value)
    assert "not found" in message and "local model directory" in message and "gpt2" in message


def test_missing_local_path_is_reported():
    with pytest.raises(KvbenchError, match="does not exist"):
        locate("./no/such/dir")


def test_gpt2_falls_back_to_random_weights_offline_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prepared = prepare_model("gpt2", "auto")
    assert prepared.resolved.weights == "random"
    assert any("random weights" in note.lower() for note in prepared.notes)
    assert prepared.max_positions == 1024


def test_pretrained_weights_required_but_missing_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KvbenchError, match="--weights random"):
        prepare_model("tiny-gpt2", "pretrained")


def test_local_checkpoint_loads_its_real_weights(tiny_gpt2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    loaded = build_model(
        prepare_model(str(tiny_gpt2_dir), "auto"), dtype="auto", attn_implementation="auto", device="cpu", seed=5
    )
    saved = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert loaded.info()["weights"] == "pretrained"
    for mine, theirs in zip(loaded.model.parameters(), saved.parameters()):
        assert torch.equal(mine, theirs)


def test_random_weights_are_seeded(tiny_llama_dir):
    import torch

    prepared = prepare_model(str(tiny_llama_dir), "random")
    one = build_model(prepared, dtype="float32", attn_implementation="eager", device="cpu", seed=1)
    same = build_model(prepared, dtype="float32", attn_implementation="eager", device="cpu", seed=1)
    other = build_model(prepared, dtype="float32", attn_implementation="eager", device="cpu", seed=2)
    weight = lambda loaded: next(loaded.model.parameters())  # noqa: E731
    assert torch.equal(weight(one), weight(same))
    assert not torch.equal(weight(one), weight(other))
    assert one.info()["attn_implementation"] == "eager"


def test_synthetic_prompt_is_deterministic_and_in_vocabulary(tiny_llama_dir):
    prepared = prepare_model(str(tiny_llama_dir), "auto")
    ids, how = prompt_ids(prepared, "ignored without a tokenizer", None, seed=3)
    again, _ = prompt_ids(prepared, "ignored without a tokenizer", None, seed=3)
    assert how == "synthetic"
    assert ids.tolist() == again.tolist()
    assert len(ids) == 6 and int(ids.max()) < 64


def test_missing_cuda_device_is_a_user_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(KvbenchError, match="device cuda:1 is not available.*--device cpu"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == "cpu"


def test_auto_dtype_is_float32_on_cpu_and_the_checkpoint_type_on_gpu():
    from transformers import LlamaConfig

    config = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype("auto", config, "cpu") == "float32"
    assert resolve_dtype("auto", config, "cuda:0") == "bfloat16"
    assert resolve_dtype("float16", config, "cpu") == "float16"
