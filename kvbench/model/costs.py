"""What the roofline reads, as stored in a results file: a model's cost (its size and attention shape)
and a device's peaks, measured or from its datasheet."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvbench.core.kvsize import kv_cache_bytes


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
    # The MLP's width (intermediate_size; GPT-2's 4 x hidden); 0 in a file written before it was recorded.
    intermediate_size: int = 0

    @property
    def weight_bytes(self) -> int:
        return (self.parameters - self.lookup_parameters) * self.bytes_per_element

    @property
    def body_parameters(self) -> int:
        """The weights every position multiplies through."""
        return self.parameters - self.lookup_parameters - self.head_parameters

    def kv_bytes(self, positions: int, batch: int) -> int:
        return kv_cache_bytes(self.layers, self.kv_heads, self.head_dim, positions, batch, self.bytes_per_element)


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
    # A MIG instance ("NVIDIA A100-SXM4-40GB MIG 3g.20gb") has a share of the GPU's SMs and memory bandwidth,
    # not the full GPU's datasheet figures; its own are not published.
    if re.search(r"\bMIG\b", device_name):
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
    # When they were measured, and the cache file they were read from where a later run reused them (the
    # same machine, device, type and software: kvbench.hardware.peaks).
    measured_at: str | None = None
    cached_in: str | None = None
