"""A measuring process's own code, run in this process: what it sends when its cell fails."""

import pytest

from kvbench.launch.worker import measure
from kvbench.measure.measurer import Measurer
from kvbench.model.cells import expand
from kvbench.model.events import Failed
from kvbench.model.jobs import CellJob
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "error, status",
    [
        (lambda torch: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (lambda torch: MemoryError(), "oom"),
        (lambda torch: RuntimeError("CUDA error: an illegal memory access was encountered"), "error"),
    ],
)
def test_a_failure_that_escapes_the_measuring_loop_is_filed_by_its_kind(tiny_gpt2_dir, monkeypatch, error, status):
    """torch's OutOfMemoryError is a RuntimeError: escaping while the model loads, it is still out of memory."""
    import torch

    def fail(self, cells):
        raise error(torch)

    monkeypatch.setattr(Measurer, "prepare", fail)
    config = tiny_config(tiny_gpt2_dir, runs=1)
    events = []
    measure(CellJob(config, expand(config)[0], runs=1), events.append)
    (failed,) = [event for event in events if isinstance(event, Failed)]
    assert failed.status == status
