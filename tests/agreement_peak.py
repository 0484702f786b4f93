"""Run as a script by tests/test_workloads.py: the peak memory a cache's comparison with the dynamic cache
takes over a Llama 3-sized vocabulary, in a process of its own: a short comparison warms everything up, then
the peak is reset and a long one runs. Prints how far the long one's peak rose above where it started, in
bytes. Run it with MALLOC_MMAP_THRESHOLD_ fixed: glibc otherwise raises its threshold as large blocks are
freed and keeps later ones in its heap, whose pages it holds on to, which would count the allocator's habits
as memory the comparison keeps."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvbench.measure.agreement import Comparison
from kvbench.measure.generation import Generation, TokenClock
from kvbench.measure.prompts import PromptBatch
from kvbench.model.cells import Cell
from kvbench.model.records import CellResult

VOCABULARY = 128_256  # Llama 3's
SHORT, LONG = 4, 64  # steps: the long generation's logits, kept, are 31 MiB a pass


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kilobytes
    raise LookupError(field)


def reset_peak() -> None:
    """Linux resets the process's peak resident memory (VmHWM) to its current size on "5"; the short pass
    warms everything up first, so the long pass's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def compare(model, steps: int, streamed: bool) -> CellResult:
    cell = Cell("wide-vocabulary", steps, 1, "float32", "static", "auto")
    ids = torch.arange(3, 19).unsqueeze(0)
    generation = Generation(model, cell, PromptBatch(ids, torch.ones_like(ids), [16]), 0, TokenClock(lambda: None))
    result = CellResult(settings=cell)
    Comparison(streamed=streamed).record(result, generation, torch.zeros((1, steps), dtype=torch.long))
    return result


def main() -> None:
    streamed = sys.argv[1] == "streamed"
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=VOCABULARY, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    compare(model, SHORT, streamed)
    reset_peak()
    before = status_bytes("VmRSS")
    result = compare(model, LONG, streamed)
    assert result.agreement_top1_share == 1.0, result
    print(status_bytes("VmHWM") - before)


if __name__ == "__main__":
    main()
