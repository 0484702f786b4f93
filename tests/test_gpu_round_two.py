"""The GPU path, round two: decisions a run makes about the GPU, tested on a CPU with torch.cuda's and
NVML's answers faked (tests/fakes.py) and real tiny models."""

import pytest

from kvbench.runner import Benchmark, plan
from tests.conftest import tiny_config
from tests.fakes import cuda_properties


@pytest.fixture
def an_h200(monkeypatch, fake_nvml):
    """torch answering like a machine with one GPU of compute capability 9.0, NVML like its driver."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    properties = cuda_properties()
    properties.name, properties.major, properties.minor = "Fake H200", 9, 0
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    fake_nvml()


def test_a_dry_run_on_a_gpu_that_runs_flash_attention_plans_to_measure_it(tiny_gpt2_dir, an_h200, tmp_path, monkeypatch):
    config = tiny_config(tiny_gpt2_dir, device="cuda", attn_implementation=["flash_attention_2", "sdpa"])
    [(_, without_package), _] = plan(Benchmark(config)).cells
    assert without_package == "skip: attn_implementation=flash_attention_2 needs the flash-attn package"
    # The package installed (an empty one: the plan only looks for it).
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    steps = [what for _, what in plan(Benchmark(config)).cells]
    assert steps == ["measure", "measure"]


def test_a_dry_run_on_a_cpu_still_skips_flash_attention(tiny_gpt2_dir):
    config = tiny_config(tiny_gpt2_dir, attn_implementation=["flash_attention_2"])
    [(_, what)] = plan(Benchmark(config)).cells
    assert what.startswith("skip: attn_implementation=flash_attention_2 needs a GPU of compute capability 8.0")
