"""The physical limit of a generation: bytes and FLOPs each token needs, the device's peaks, and the time bound.

The cost model, per generated token (step t = 0 .. new_tokens - 1, prompt of P tokens, batch B, e bytes
per element, L layers, A = attention heads x head size). The parameters fall in three parts: lookup tables
(input token and position embeddings, each position reading one row), the output head (vocab x hidden,
which generate() applies to the last position only: transformers passes logits_to_keep=1), and the body
(every other weight, a multiply-add per weight per position). A head tied to the token embedding counts
as the head. W = (parameters - lookup tables) x e: the weights a forward pass must read.

- Cached. Step 0 is the prefill (a full forward over the P prompt tokens, as below). Step t >= 1 feeds one
  token per sequence and attends over the n = P + t positions held (the cache so far plus itself):
  bytes = W (every weight read once, shared by the batch) + KV(n) (the cache read, the new position written);
  FLOPs = 2 x (body + head) x B + 4 x L x A x n x B (Q.K and attention.V).
- Uncached. Step t runs a full forward over n = P + t tokens:
  bytes = W + KV(n) + 2 x L x n x hidden x B x e (each layer's hidden states read in and written out once);
  FLOPs = 2 x body x n x B + 2 x head x B + 4 x L x A x n^2 x B (the full n x n score square: eager and SDPA
  attention compute it and mask, they do not skip the upper triangle).
- Prefix (the first S prompt tokens' cache reused). Step 0 copies the prefix's cache (2 x KV(S): read, then
  written) and computes the other P - S tokens, each attending over the P positions: bytes = W + KV(P) +
  2 x L x (P - S) x hidden x B x e + 2 x KV(S); FLOPs = 2 x body x (P - S) x B + 2 x head x B +
  4 x L x A x (P - S) x P x B. Steps t >= 1 are the cached mode's.

Bytes count only traffic that cannot be avoided (no score matrices, no re-reads when activations spill from
cache), and FLOPs only matrix products, so time >= max(bytes / bandwidth, FLOPs / throughput) per step is
a lower bound: a measured time can approach it, never beat it. A results file written before the parts
were recorded counts every parameter as body, which overstates an uncached step's FLOPs (for GPT-2 small,
whose tied head is 31% of its parameters, by up to 1.46x).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.model.costs import ModelCost
from kvbench.model.modes import MODES, MODES_BY_NAME


@dataclass(frozen=True)
class StepCost:
    """The least memory traffic and arithmetic one forward pass needs."""

    bytes_moved: int
    flops: int


def _forward(model: ModelCost, computed: int, positions: int, batch: int) -> StepCost:
    """A forward pass over the last `computed` of `positions` tokens, each attending to every position
    before it (all of them: a prompt's prefill, or an uncached step)."""
    activations = 2 * model.layers * computed * model.hidden * batch * model.bytes_per_element
    return StepCost(
        bytes_moved=model.weight_bytes + model.kv_bytes(positions, batch) + activations,
        flops=2 * (model.body_parameters * computed + model.head_parameters) * batch
        + 4 * model.layers * model.attention_width * computed * positions * batch,
    )


def step_cost(model: ModelCost, mode: str, step: int, prompt_tokens: int, batch: int, prefix_tokens: int = 0) -> StepCost:
    """The cost of producing new token `step` (0-based): see the module docstring for the model. In the prefix
    mode, the first step computes only the tokens after the `prefix_tokens` whose cache it copied (read and
    written once more)."""
    if mode not in MODES_BY_NAME:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    positions = prompt_tokens + step
    if step == 0 and MODES_BY_NAME[mode].reuses_prefix and prefix_tokens:
        forward = _forward(model, positions - prefix_tokens, positions, batch)
        copy = 2 * model.kv_bytes(prefix_tokens, batch)
        return StepCost(bytes_moved=forward.bytes_moved + copy, flops=forward.flops)
    if not MODES_BY_NAME[mode].use_cache or step == 0:
        return _forward(model, positions, positions, batch)
    return StepCost(
        bytes_moved=model.weight_bytes + model.kv_bytes(positions, batch),
        flops=2 * (model.body_parameters + model.head_parameters) * batch
        + 4 * model.layers * model.attention_width * positions * batch,
    )


def step_bound_s(cost: StepCost, bandwidth_bytes_per_s: float, flops_per_s: float) -> float:
    """The least time a step can take: it cannot move its bytes faster than the memory, nor compute faster
    than the arithmetic units (the roofline, with no overlap assumed lost)."""
    return max(cost.bytes_moved / bandwidth_bytes_per_s, cost.flops / flops_per_s)


@dataclass(frozen=True)
class RooflineBound:
    """The lower bound on one mode's generation time on a device, and what limits it."""

    mode: str
    bytes_moved: int  # over the whole generation
    flops: int
    bound_s: float  # sum over steps of max(bytes / bandwidth, FLOPs / throughput)
    bound_per_token_s: float  # bound_s / new_tokens
    memory_bound_steps: int  # steps whose bound is set by bandwidth rather than arithmetic
    steps: int
    limited_by: str  # "memory bandwidth" or "compute": whichever sets most of bound_s


def roofline_bound(
    model: ModelCost,
    mode: str,
    prompt_tokens: int,
    new_tokens: int,
    batch: int,
    bandwidth_bytes_per_s: float,
    flops_per_s: float,
    prefix_tokens: int = 0,
) -> RooflineBound:
    """Bounded step by step (a generation switches from memory- to compute-bound as it grows uncached)."""
    if new_tokens < 1 or bandwidth_bytes_per_s <= 0 or flops_per_s <= 0:
        raise ValueError("need at least one new token and positive peaks")
    total_bytes = total_flops = 0
    bound_s = memory_s = 0.0
    memory_steps = 0
    for step in range(new_tokens):
        cost = step_cost(model, mode, step, prompt_tokens, batch, prefix_tokens)
        total_bytes += cost.bytes_moved
        total_flops += cost.flops
        memory_time = cost.bytes_moved / bandwidth_bytes_per_s
        step_s = step_bound_s(cost, bandwidth_bytes_per_s, flops_per_s)
        bound_s += step_s
        if memory_time >= cost.flops / flops_per_s:
            memory_steps += 1
            memory_s += step_s
    return RooflineBound(
        mode=mode,
        bytes_moved=total_bytes,
        flops=total_flops,
        bound_s=bound_s,
        bound_per_token_s=bound_s / new_tokens,
        memory_bound_steps=memory_steps,
        steps=new_tokens,
        limited_by="memory bandwidth" if memory_s >= bound_s / 2 else "compute",
    )
