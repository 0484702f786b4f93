"""The reference the benchmarks measure kvbench against: one greedy generate() of a fixed length, timed
with nothing of kvbench's measuring code. The model comes through kvbench.measure.models, so it is the very
architecture, weights (seeded, random) and prompt that kvbench times."""

from __future__ import annotations

import time

from kvbench.core.devices import is_gpu
from kvbench.measure.loading import build_model, prompt_ids
from kvbench.measure.models import prepare_model


class BareGenerate:
    def __init__(self, model: str, device: str, new_tokens: int) -> None:
        import torch
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        prepared = prepare_model(model, "random")
        self.model = build_model(prepared, dtype="float32", attn_implementation="auto", device=device, seed=0).model
        ids, _ = prompt_ids(prepared, "What is KV caching?", None, seed=0)
        self.input_ids = ids.unsqueeze(0).to(device)
        self.new_tokens = new_tokens
        self.pad_token_id = self.model.generation_config.eos_token_id or 0
        self._sync = (lambda: torch.cuda.synchronize(device)) if is_gpu(device) else (lambda: None)

    def __call__(self, mode: str) -> float:
        """Seconds for one generation in `mode` ("cached" or "uncached")."""
        self._sync()
        start = time.perf_counter()
        self.model.generate(
            self.input_ids,
            attention_mask=self.input_ids.new_ones(self.input_ids.shape),
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            use_cache=mode == "cached",
            pad_token_id=self.pad_token_id,
        )
        self._sync()
        return time.perf_counter() - start
