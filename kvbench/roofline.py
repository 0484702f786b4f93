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

Bytes count only traffic that cannot be avoided (no score matrices, no re-reads when activations spill from
cache), and FLOPs only matrix products, so time >= max(bytes / bandwidth, FLOPs / throughput) per step is
a lower bound: a measured time can approach it, never beat it. A results file written before the parts
were recorded counts every parameter as body, which overstates an uncached step's FLOPs (for GPT-2 small,
whose tied head is 31% of its parameters, by up to 1.46x).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from kvbench.config import MODES
from kvbench.devices import is_gpu
from kvbench.errors import KvbenchError
from kvbench.kvsize import BYTES_PER_ELEMENT, kv_cache_bytes, kv_geometry


@dataclass(frozen=True)
class ModelCost:
    """What the cost model needs from a model: its size and attention shape."""

    parameters: int
    bytes_per_element: int
    layers: int
    hidden: int  # width of the residual stream (hidden states between layers)
    attention_width: int  # attention heads x head size: the width of Q.K and attention.V
    kv_heads: int
    head_dim: int
    lookup_parameters: int = 0  # embedding tables only looked up (a row per position), not the head's
    head_parameters: int = 0  # the output head, applied to the last position of each step only

    @property
    def weight_bytes(self) -> int:
        return (self.parameters - self.lookup_parameters) * self.bytes_per_element

    @property
    def body_parameters(self) -> int:
        """The weights every position multiplies through."""
        return self.parameters - self.lookup_parameters - self.head_parameters

    def kv_bytes(self, positions: int, batch: int) -> int:
        return kv_cache_bytes(self.layers, self.kv_heads, self.head_dim, positions, batch, self.bytes_per_element)


def model_cost(
    config: Any, parameters: int, dtype: str, lookup_parameters: int = 0, head_parameters: int = 0
) -> ModelCost:
    """ModelCost from a transformers config (GPT-2 and Llama attribute names), a parameter count, a dtype,
    and how many of the parameters are lookup tables and the output head (parameter_roles)."""
    if dtype not in BYTES_PER_ELEMENT:
        raise KvbenchError(f"unknown dtype {dtype!r} for the roofline; use one of {', '.join(BYTES_PER_ELEMENT)}")
    geometry = kv_geometry(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if geometry is None or not heads or not hidden:
        raise KvbenchError(
            f"{type(config).__name__} does not say its layers, heads and hidden size; the roofline needs them"
        )
    return ModelCost(
        parameters=parameters,
        bytes_per_element=BYTES_PER_ELEMENT[dtype],
        layers=geometry.layers,
        hidden=hidden,
        attention_width=heads * geometry.head_dim,
        kv_heads=geometry.kv_heads,
        head_dim=geometry.head_dim,
        lookup_parameters=lookup_parameters,
        head_parameters=head_parameters,
    )


def parameter_roles(model: Any) -> tuple[int, int]:
    """(lookup-table parameters, output-head parameters) of a loaded transformers model: every
    nn.Embedding's weight except one shared with the output head (GPT-2 ties them), and the head's weight."""
    import torch

    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    lookup = sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not head_weight
    )
    return lookup, head_weight.numel() if head_weight is not None else 0


@dataclass(frozen=True)
class StepCost:
    """The least memory traffic and arithmetic one forward pass needs."""

    bytes_moved: int
    flops: int


def _full_forward(model: ModelCost, tokens: int, batch: int) -> StepCost:
    activations = 2 * model.layers * tokens * model.hidden * batch * model.bytes_per_element
    return StepCost(
        bytes_moved=model.weight_bytes + model.kv_bytes(tokens, batch) + activations,
        flops=2 * (model.body_parameters * tokens + model.head_parameters) * batch
        + 4 * model.layers * model.attention_width * tokens**2 * batch,
    )


def step_cost(model: ModelCost, mode: str, step: int, prompt_tokens: int, batch: int) -> StepCost:
    """The cost of producing new token `step` (0-based): see the module docstring for the model."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    positions = prompt_tokens + step
    if mode == "uncached" or step == 0:
        return _full_forward(model, positions, batch)
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
) -> RooflineBound:
    """Bounded step by step (a generation switches from memory- to compute-bound as it grows uncached)."""
    if new_tokens < 1 or bandwidth_bytes_per_s <= 0 or flops_per_s <= 0:
        raise ValueError("need at least one new token and positive peaks")
    total_bytes = total_flops = 0
    bound_s = memory_s = 0.0
    memory_steps = 0
    for step in range(new_tokens):
        cost = step_cost(model, mode, step, prompt_tokens, batch)
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


# --- device peaks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasheetPeaks:
    """A GPU's published memory bandwidth and dense FP16 tensor-core throughput (docs/REFERENCE facts)."""

    name: str
    memory_bandwidth_bytes_per_s: float
    fp16_tensor_flops_per_s: float


# (pattern on torch.cuda.get_device_name(), peaks). First match wins. The patterns keep variants with other
# peaks out: A10 is not A100 or A10G, the A100 80GB PCIe (1935 GB/s) is not the SXM part, "H100 80GB HBM3" is
# the SXM part while H100 PCIe and NVL are left out, as is H200 NVL.
DATASHEET: tuple[tuple[str, DatasheetPeaks], ...] = (
    (r"\bT4\b", DatasheetPeaks("T4", 320e9, 65e12)),
    (r"\bL4\b", DatasheetPeaks("L4", 300e9, 121e12)),
    (r"\bA10\b", DatasheetPeaks("A10", 600e9, 125e12)),
    (r"\bA100\b.*\b40GB\b", DatasheetPeaks("A100-40GB", 1555e9, 312e12)),
    (r"\bA100-SXM\w*-80GB\b", DatasheetPeaks("A100-80GB SXM", 2039e9, 312e12)),
    (r"\bH100\b(?!.*\b(PCIe|NVL)\b).*\b(SXM|HBM3)\b", DatasheetPeaks("H100 SXM", 3.35e12, 989e12)),
    (r"\bH200\b(?!.*\bNVL\b)", DatasheetPeaks("H200", 4.8e12, 989e12)),
)


def datasheet_peaks(device_name: str | None) -> DatasheetPeaks | None:
    """The datasheet row for a torch device name ("Tesla T4", "NVIDIA H100 80GB HBM3"); None if unknown."""
    if not device_name:
        return None
    for pattern, peaks in DATASHEET:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peaks
    return None


@dataclass(frozen=True)
class MeasuredPeaks:
    """What a short copy and matrix-multiply microbenchmark reached on one device (the best repeat)."""

    device: str
    copy_bandwidth_bytes_per_s: float  # bytes read + bytes written per second by tensor.copy_()
    copy_buffer_bytes: int
    matmul_flops_per_s: float  # 2 n^3 per n x n product, per second
    matmul_dtype: str
    matmul_size: int  # n
    seconds_spent_s: float


def _best_rate(work: Any, amount: float, budget_s: float, synchronize: Any) -> float:
    """Best amount/time over repeats within the budget: the reachable rate, not a noisy average."""
    work()  # warm up (allocator, kernels, thread pool)
    synchronize()
    best = 0.0
    deadline = time.perf_counter() + budget_s
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        work()
        synchronize()
        elapsed = time.perf_counter() - start
        if elapsed > 0:
            best = max(best, amount / elapsed)
        repeats += 1
    return best


def measure_device_peaks(device: str = "cpu", seconds: float = 2.0) -> MeasuredPeaks:
    """Copy bandwidth and GEMM throughput reachable from torch on `device`, in about `seconds`: float32 on a
    CPU, float16 on CUDA (the tensor cores' type). Copy buffers are far larger than any CPU cache."""
    import torch

    cuda = is_gpu(device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    started = time.perf_counter()

    buffer_bytes = (256 if cuda else 64) * 2**20
    source = torch.ones(buffer_bytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    copy_rate = _best_rate(lambda: target.copy_(source), 2 * buffer_bytes, seconds / 2, synchronize)  # noqa: F821 - run before the del
    del source, target

    dtype = torch.float16 if cuda else torch.float32
    size = 4096 if cuda else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    matmul_rate = _best_rate(lambda: torch.matmul(a, b, out=out), 2 * size**3, seconds / 2, synchronize)

    return MeasuredPeaks(
        device=device,
        copy_bandwidth_bytes_per_s=copy_rate,
        copy_buffer_bytes=buffer_bytes,
        matmul_flops_per_s=matmul_rate,
        matmul_dtype=str(dtype).removeprefix("torch."),
        matmul_size=size,
        seconds_spent_s=time.perf_counter() - started,
    )
