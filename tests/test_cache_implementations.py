"""Cache implementations beside the dynamic cache: the settings each generate() call is given."""

from __future__ import annotations

import torch

from kvbench.config import BenchConfig, Cell, cache_config
from kvbench.measure import Generation, TokenClock


class PoppingModel:
    """generate() as transformers 5.17 has it for a quantized cache: it pops 'backend' from the cache_config
    it is given (`cache_config.pop("backend", "quanto")`), and records what each call received."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    def generate(self, *args, **kwargs):
        settings = kwargs["cache_config"]
        self.received.append(dict(settings))
        settings.pop("backend", "quanto")
        return None


def test_every_call_gets_the_whole_cache_config_even_when_generate_pops_from_it():
    settings = cache_config(BenchConfig(quantized_backend="hqq", quantized_nbits=2), "quantized")
    model = PoppingModel()
    ids = torch.ones(1, 3, dtype=torch.long)
    cell = Cell("tiny-gpt2", 4, 1, "auto", "quantized", "auto")
    generation = Generation(model, cell, ids, torch.ones_like(ids), 0, TokenClock(lambda: None), False, settings)
    for _ in range(3):
        generation("cached")
    assert [call["backend"] for call in model.received] == ["hqq"] * 3
    # What the theory of the cache's bytes reads afterwards (kvbench.measure.record_cache_size).
    assert generation.cache_config == {"backend": "hqq", "nbits": 2, "q_group_size": 64, "residual_length": 128}
