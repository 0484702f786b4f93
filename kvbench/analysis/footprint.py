"""What one generation holds in memory at its peak, as the what-fits figures count it: the weights, the KV cache
at its measured bytes per position, a quantized cache's full-precision residual window, the last position's
logits and the prefill's largest activations; and the longest context and largest batch whose count fits a
memory size. An estimate: the allocator's overhead, the CUDA context and the interpreter are not counted."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from kvbench.analysis.explain import model_cost_of
from kvbench.model.caches import implementation
from kvbench.model.records import CellResult

# What generate() holds for the last position of each sequence (transformers 5.25, GenerationMixin._sample):
# the model's logits in its dtype (logits_to_keep=1 computes that position only), generate()'s float32 copy of
# them and the float32 clone the min-new-tokens processor returns.
FLOAT32_LOGIT_COPIES = 2
FLOAT32_BYTES = 4
# The prefill's widest moment in a layer, per prompt position: the residual stream and its normalised copy,
# each hidden_size wide, beside the MLP's gate and up projections and their product, each intermediate_size
# wide (GPT-2's two, c_fc and its GELU, are counted as three too).
STREAM_TENSORS = 2
MLP_TENSORS = 3
# Attention implementations whose prefill builds the whole (prompt x prompt) score matrix per head; the others
# (sdpa, flash) work through it in blocks, within the hidden-size tensors above.
QUADRATIC_ATTENTION = ("eager",)


@dataclass(frozen=True)
class Footprint:
    """The bytes a generation holds at its peak, as a function of its positions and batch: the weights, and per
    sequence the cache, the window, the logits and the prefill's activations (linear in the prompt, and
    quadratic where eager attention builds the score matrix). Exact fractions, so a figure on a whole number
    is not a float's rounding below it."""

    weight_bytes: int
    cache_per_position: Fraction  # per sequence, at the cache's own precision
    window_per_sequence: Fraction  # a quantized cache's residual window, beyond its quantized bytes
    logits_per_sequence: int
    activations_per_position: int  # per prompt position per sequence
    scores_per_position_squared: int  # eager attention's score matrix, per prompt position squared
    uncounted: tuple[str, ...] = ()  # what could not be counted for this cell, in words

    def per_sequence(self, positions: int, prompt: int | None = None) -> Fraction:
        """One sequence's bytes beside the weights at `positions` cached, after a `prompt` (default: all of them)."""
        prompt = positions if prompt is None else prompt
        return (
            positions * self.cache_per_position
            + self.window_per_sequence
            + self.logits_per_sequence
            + prompt * self.activations_per_position
            + prompt * prompt * self.scores_per_position_squared
        )

    def total(self, positions: int, batch: int, prompt: int | None = None) -> Fraction:
        return self.weight_bytes + batch * self.per_sequence(positions, prompt)

    def longest_context(self, memory: int, limit: int | None = None) -> int:
        """The most positions at batch 1 whose count fits `memory` (the prompt taken as all of them), at most
        `limit`; 0 when not even one fits. Found by search on whole positions: the count grows with the square
        of the prompt under eager attention, so no division gives it."""
        if self.total(1, 1) > memory:
            return 0
        low, high = 1, 2
        while self.total(high, 1) <= memory and (limit is None or high < limit):
            low, high = high, high * 2
        if limit is not None and high >= limit and self.total(limit, 1) <= memory:
            return limit
        while high - low > 1:  # total(low) fits, total(high) does not
            middle = (low + high) // 2
            low, high = (middle, high) if self.total(middle, 1) <= memory else (low, middle)
        return low

    def largest_batch(self, memory: int, positions: int, prompt: int | None = None) -> int:
        """The most sequences of `positions` (after `prompt`) whose count fits `memory`: every term but the
        weights grows with the batch, so it is what is left after the weights over one sequence's bytes."""
        room = memory - self.weight_bytes
        return max(int(room // self.per_sequence(positions, prompt)), 0) if room > 0 else 0


def footprint_of(cell: CellResult, residual_length: int | None = None) -> Footprint | str:
    """The footprint of a measured cell, from its measured cache bytes and its model's recorded cost;
    `residual_length` the quantized cache's window (the run's quantized_residual_length). A string says why
    there is none."""
    measured, positions = cell.kv_cache_measured_bytes, cell.kv_cache_positions
    if measured is None or positions is None or measured <= 0 or positions <= 0:
        return "the cache object was not measured"
    cost = model_cost_of(cell)
    if cost is None:
        return "the model's parameter count was not recorded"
    settings = cell.settings
    batch, element = settings.batch_size, cost.bytes_per_element
    cache = implementation(settings.cache_implementation)
    full_precision = cost.kv_bytes(1, 1)  # one position of one sequence, every layer
    at_end, at_most = cache.full_precision_window(settings.quantized_nbits, settings.max_new_tokens, residual_length)
    uncounted = []
    per_position, window = Fraction(measured, positions * batch), Fraction(0)
    if at_end < positions:
        # The measured bytes hold (positions - at_end) positions in the cache's own precision and at_end at full
        # precision; bytes that do not fit that reading (fewer than the window holds, or more per position than
        # full precision) are taken as an average.
        own = Fraction(measured - at_end * full_precision * batch, (positions - at_end) * batch)
        if 0 < own <= full_precision:
            per_position, window = own, at_most * (full_precision - own)
    vocabulary = cost.head_parameters // cost.hidden if cost.head_parameters else 0
    if not vocabulary:
        uncounted.append("the logits (this file does not record the output head's size)")
    if not cost.intermediate_size:
        uncounted.append("the MLP's activations (this file does not record the model's intermediate size)")
    layer_copies = cache.full_precision_layer_copies * full_precision // cost.layers
    activations = (STREAM_TENSORS * cost.hidden + MLP_TENSORS * cost.intermediate_size) * element + layer_copies
    attention = (cell.model or {}).get("attn_implementation")
    heads = cost.attention_width // cost.head_dim
    scores = heads * (element + FLOAT32_BYTES) if attention in QUADRATIC_ATTENTION else 0
    return Footprint(
        weight_bytes=cost.parameters * element,
        cache_per_position=per_position,
        window_per_sequence=window,
        logits_per_sequence=vocabulary * (element + FLOAT32_LOGIT_COPIES * FLOAT32_BYTES),
        activations_per_position=activations,
        scores_per_position_squared=scores,
        uncounted=tuple(uncounted),
    )
