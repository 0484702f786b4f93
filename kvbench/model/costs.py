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
    """A GPU's published memory bandwidth and dense (not 2:4-sparse) matrix throughput by type: FP16 and
    BF16 on the tensor cores, FP32 on the CUDA cores (TF32 off) and TF32 on the tensor cores (TF32 on). A
    figure the GPU lacks (BF16 and TF32 before Ampere), or a file written before it was recorded, is None."""

    name: str
    memory_bandwidth_bytes_per_s: float
    fp16_tensor_flops_per_s: float
    bf16_tensor_flops_per_s: float | None = None
    fp32_flops_per_s: float | None = None
    tf32_tensor_flops_per_s: float | None = None


# (pattern on torch.cuda.get_device_name(), peaks). First match wins. The patterns keep variants with other
# peaks out: A10 is not A100 or A10G, the A100 80GB PCIe (1935 GB/s) is not the SXM part, "H100 80GB HBM3" is
# the SXM part while H100 PCIe and NVL are left out, as is H200 NVL. NVIDIA's sheets print TF32, FP16 and
# BF16 with sparsity; the dense figures here are half of those.
DATASHEET: tuple[tuple[str, DatasheetPeaks], ...] = (
    (r"\bT4\b", DatasheetPeaks("T4", 320e9, 65e12, None, 8.1e12, None)),
    (r"\bL4\b", DatasheetPeaks("L4", 300e9, 121e12, 121e12, 30.3e12, 60e12)),
    (r"\bA10\b", DatasheetPeaks("A10", 600e9, 125e12, 125e12, 31.2e12, 62.5e12)),
    (r"\bA100\b.*\b40GB\b", DatasheetPeaks("A100-40GB", 1555e9, 312e12, 312e12, 19.5e12, 156e12)),
    (r"\bA100-SXM\w*-80GB\b", DatasheetPeaks("A100-80GB SXM", 2039e9, 312e12, 312e12, 19.5e12, 156e12)),
    (
        r"\bH100\b(?!.*\b(PCIe|NVL)\b).*\b(SXM|HBM3)\b",
        DatasheetPeaks("H100 SXM", 3.35e12, 989e12, 989e12, 67e12, 494.5e12),
    ),
    (r"\bH200\b(?!.*\bNVL\b)", DatasheetPeaks("H200", 4.8e12, 989e12, 989e12, 67e12, 494.5e12)),
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


def datasheet_flops(sheet: DatasheetPeaks, dtype: str, tf32: bool) -> tuple[float, str] | None:
    """The sheet's matrix throughput for products in `dtype` (float32's on the tensor cores where `tf32`)
    and its name on the sheet; None where the sheet gives none. A row stored by an older kvbench, with its
    FP16 figure only, takes the others from this table's row of the same name: a datasheet does not change."""
    field_name, label = {
        "float16": ("fp16_tensor_flops_per_s", "FP16 tensor"),
        "bfloat16": ("bf16_tensor_flops_per_s", "BF16 tensor"),
        "float32": ("tf32_tensor_flops_per_s", "TF32 tensor") if tf32 else ("fp32_flops_per_s", "FP32"),
    }.get(dtype, (None, ""))
    if field_name is None:
        return None
    flops = getattr(sheet, field_name)
    if flops is None:
        current = next((row for _, row in DATASHEET if row.name == sheet.name), None)
        flops = getattr(current, field_name) if current is not None else None
    return (flops, label) if flops is not None else None


@dataclass(frozen=True)
class MeasuredPeaks:
    """What a short copy and matrix-multiply microbenchmark reached on one device (the best repeat)."""

    device: str
    copy_bandwidth_bytes_per_s: float  # bytes read + bytes written per second by tensor.copy_()
    copy_buffer_bytes: int
    matmul_flops_per_s: float  # 2 n^3 per n x n product, per second, in matmul_dtype
    matmul_dtype: str
    matmul_size: int  # n
    seconds_spent_s: float
    # The product's throughput in each type measured (matmul_dtype's among them), and whether float32
    # products were let use TF32 tensor cores when measured (None on a CPU); absent in older files, which
    # measured matmul_dtype alone.
    matmul_flops_by_dtype: dict[str, float] | None = None
    tf32: bool | None = None
    # When they were measured, and the cache file they were read from where a later run reused them (the
    # same machine, device, type and software: kvbench.hardware.peaks).
    measured_at: str | None = None
    cached_in: str | None = None
