"""The roofline's compute peak is the one for each cell's type: float32 on a GPU is an order of magnitude
slower than float16, so bounding a float32 run by float16's throughput understates its share tenfold."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from transformers import GPT2Config

from kvbench.analysis.explain import explain_result, peaks_of
from kvbench.hardware.peaks import measure_device_peaks, peak_dtypes, peaks_key
from kvbench.measure.cost import model_cost
from kvbench.model.costs import DatasheetPeaks, datasheet_flops, datasheet_peaks
from kvbench.render.cells import metric_lines
from kvbench.storage.validation import measured_peaks_problem
from tests.conftest import make_result

RESULTS = Path(__file__).resolve().parents[1] / "results"
H200_ROW = {"name": "H200", "memory_bandwidth_bytes_per_s": 4.8e12, "fp16_tensor_flops_per_s": 989e12}  # as stored before
MEASURED = {
    "device": "cuda:0",
    "copy_bandwidth_bytes_per_s": 4e12,
    "copy_buffer_bytes": 2**28,
    "matmul_flops_per_s": 700e12,
    "matmul_dtype": "float16",
    "matmul_size": 4096,
    "seconds_spent_s": 2.0,
}


def test_each_type_the_cells_run_in_is_measured():
    assert peak_dtypes("cuda:0") == ("float16", "bfloat16", "float32")
    assert peak_dtypes("cuda:0", ["float32"]) == ("float32",)
    # "auto" on a GPU is the checkpoint's 16-bit type, not known before the model loads.
    assert peak_dtypes("cuda:0", ["auto", "float32"]) == ("float16", "bfloat16", "float32")
    assert peak_dtypes("cpu", ["auto"]) == ("float32",)
    assert peak_dtypes("cpu", ["bfloat16", "auto"]) == ("float32", "bfloat16")


def test_the_measured_peaks_name_each_type_and_tf32():
    peaks = measure_device_peaks("cpu", seconds=0.05, dtypes=("float32",))
    assert list(peaks.matmul_flops_by_dtype or {}) == ["float32"] and peaks.matmul_dtype == "float32"
    assert peaks.matmul_flops_by_dtype["float32"] == peaks.matmul_flops_per_s > 0
    assert peaks.tf32 is None  # a CPU has no TF32
    assert measured_peaks_problem(asdict(peaks)) is None


def test_peaks_kept_for_other_types_are_not_reused():
    environment = {"cpu": "x", "device_name": "GPU", "torch": "2"}
    assert peaks_key(environment, "cpu", ("float32",)) != peaks_key(environment, "cpu", ("float32", "bfloat16"))


def test_a_damaged_figure_by_type_is_refused():
    problem = measured_peaks_problem({**MEASURED, "matmul_flops_by_dtype": {"float32": -1.0}})
    assert problem is not None and "matmul_flops_by_dtype.float32" in problem


def test_the_datasheet_figure_is_the_cells_type():
    h200, t4 = datasheet_peaks("NVIDIA H200"), datasheet_peaks("Tesla T4")
    assert datasheet_flops(h200, "float16", False) == (989e12, "FP16 tensor")
    assert datasheet_flops(h200, "float32", False) == (67e12, "FP32")
    assert datasheet_flops(h200, "float32", True) == (494.5e12, "TF32 tensor")
    assert datasheet_flops(t4, "bfloat16", False) is None and datasheet_flops(t4, "float32", True) is None
    # A row stored before the other types were: the same GPU's figures from the table.
    assert datasheet_flops(DatasheetPeaks(**H200_ROW), "float32", False) == (67e12, "FP32")


def test_a_float32_cell_is_bounded_by_float32s_throughput_not_float16s():
    """A file whose measuring timed float16 alone (every file before this): float32 takes the datasheet's
    FP32 figure, TF32 taken as off and said to be."""
    environment = {"device_peaks": MEASURED, "datasheet_peaks": H200_ROW}
    half, single = peaks_of(environment, "float16"), peaks_of(environment, "float32")
    assert (half.flops_per_s, half.dtype) == (700e12, "float16")
    assert (single.flops_per_s, single.dtype, single.tf32) == (67e12, "float32", False)
    assert single.bandwidth_bytes_per_s == 4e12  # the measured copy still bounds the bytes
    assert "float32 matmul not measured" in single.source and "TF32 taken as off" in single.source
    measured_both = {**MEASURED, "matmul_flops_by_dtype": {"float16": 700e12, "float32": 50e12}, "tf32": True}
    on = peaks_of({"device_peaks": measured_both}, "float32")
    assert (on.flops_per_s, on.label()) == (50e12, "float32 peaks, TF32 on")
    assert "(TF32 on)" in on.source
    assert peaks_of({"device_peaks": MEASURED}, "bfloat16") is None  # neither measured nor on a sheet


def _with_cost(result, dtype):
    cost = asdict(model_cost(GPT2Config(), 124_439_808, dtype))
    cell = result.cells[0]
    result.cells[0] = replace(cell, model={"dtype": dtype, "cost": cost})
    return result


def test_each_cells_bound_and_show_line_name_the_type_of_its_peaks():
    measured = {**MEASURED, "matmul_flops_by_dtype": {"float16": 700e12, "float32": 50e12}, "tf32": False}
    result = _with_cost(make_result(device_peaks=measured), "float32")
    explanation = explain_result(result)
    assert [(p.dtype, p.flops_per_s, p.tf32) for p in explanation.peaks] == [("float32", 50e12, False)]
    bound = explanation.bound_of(result.cells[0].id, "uncached")
    assert bound.peaks_for == "float32 peaks, TF32 off"
    stored = explanation.to_dict()
    assert stored["peaks"][0]["dtype"] == "float32" and stored["roofline"][0]["peaks_for"] == "float32 peaks, TF32 off"
    lines = [line.plain for line in metric_lines(result, result.cells[0])]
    assert any(line.startswith("roofline (float32 peaks, TF32 off): cached at") for line in lines)


def test_the_h200_float32_reference_reads_against_float32s_peak():
    """The committed GPT-2 float32 run on an H200: against the float16 matmul peak the uncached mode read
    2.4% of the compute bound; against FP32's 67 TFLOP/s (datasheet; the file measured float16 only) about 20%."""
    from kvbench.storage.document import read_result

    result = read_result(RESULTS / "gpt2-h200-reference.json")
    explanation = explain_result(result)
    bound = explanation.bound_of(result.cells[0].id, "uncached")
    assert bound.limited_by == "compute" and bound.peaks_for == "float32 peaks, TF32 off"
    assert bound.fraction_of_bound == pytest.approx(0.20, abs=0.01)
    stored = json.loads((RESULTS / "gpt2-h200-reference.json").read_text())
    assert stored["explained"]["peaks"][0]["dtype"] == "float32"
