"""A cell's batch of prompts as real requests look: a different prompt per row (the prompt text made
different, seeded synthetic ids, or the lines of a prompts file), of different lengths with --ragged (left-
padded, with an attention mask), and every row starting with the same shared prefix with --prefix-tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import read_bounded_text

# A prompts file is text: a book's worth of lines is still far below this.
MOST_PROMPTS_BYTES = 64 * 2**20


@dataclass
class PromptBatch:
    """(batch, positions) input ids, left-padded, with the mask generate() needs, and each row's real length."""

    input_ids: Any
    attention_mask: Any
    lengths: list[int]

    @property
    def positions(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def padded(self) -> bool:
        return any(length != self.positions for length in self.lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padding_share(self) -> float:
        return 1 - self.real_tokens / (self.positions * len(self.lengths))


def ragged_lengths(longest: int, batch_size: int) -> list[int]:
    """Row r's length in a ragged batch: the longest less r steps of longest / (2 x batch), so the batch's
    lengths spread over about half the longest, and every row keeps a token at least."""
    step = max(1, longest // (2 * batch_size))
    return [max(1, longest - row * step) for row in range(batch_size)]


def read_prompt_lines(path: str, rows: int) -> list[str]:
    """The first `rows` non-blank lines of a prompts file; one line naming the fix where it has fewer."""
    text = read_bounded_text(Path(path).expanduser(), MOST_PROMPTS_BYTES, "prompts file")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < rows:
        raise KvbenchError(
            f"{path} has {len(lines)} prompt line(s), fewer than the batch of {rows}; add lines or lower --batch-size"
        )
    return lines[:rows]


def distinct_rows(first: Any, batch_size: int, synthetic: bool, vocab_size: int, seed: int) -> list[Any]:
    """`batch_size` prompts of `first`'s length, row 0 `first` itself (so a batch of one is the prompt as it
    always was): seeded synthetic ids for the other rows where `first` is synthetic, else `first` rotated by
    the row's number, the same real tokens in another order."""
    import torch

    rows = [first]
    for row in range(1, batch_size):
        if synthetic:
            generator = torch.Generator().manual_seed(seed + row)
            rows.append(torch.randint(0, vocab_size, first.shape, generator=generator))
        else:
            rows.append(first.roll(-row))
    return rows


def build_batch(
    rows: list[Any],
    *,
    prefix_tokens: int | None,
    ragged: bool,
    pad_token_id: int,
) -> PromptBatch:
    """The rows (1-D id tensors) as one left-padded batch: cut to ragged lengths where asked, then every row's
    first `prefix_tokens` made the first row's."""
    import torch

    if ragged:
        rows = [row[:length] for row, length in zip(rows, ragged_lengths(max(len(row) for row in rows), len(rows)))]
    if prefix_tokens is not None:
        rows = [torch.cat([rows[0][:prefix_tokens], row[prefix_tokens:]]) for row in rows]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=rows[0].dtype)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        # Left padding: every row's next token goes in the same last column.
        input_ids[index, width - len(row) :] = row
        attention_mask[index, width - len(row) :] = 1
    return PromptBatch(input_ids, attention_mask, [len(row) for row in rows])
