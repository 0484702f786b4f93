from collections import deque

import pytest

from kvbench.launch.scheduling import DevicePool, device_slots, split_runs, startable

FOUR_GPUS = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_runs_split_evenly_over_processes_larger_shares_first():
    assert split_runs(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert split_runs(6, 3) == [(0, 2), (2, 2), (4, 2)]
    assert split_runs(5, 1) == [(0, 5)]
    with pytest.raises(ValueError):
        split_runs(2, 3)


def test_only_auto_on_several_gpus_spreads_cells():
    assert device_slots("auto", "cuda:0", 4, None) == FOUR_GPUS
    assert device_slots("cuda:2", "cuda:2", 4, None) == ["cuda:2"]
    assert device_slots("auto", "cpu", 0, None) == ["cpu"]
    assert device_slots("auto", "cuda:0", 1, None) == ["cuda:0"]
    # A model spread over every GPU: one cell at a time.
    assert device_slots("auto", "cuda:0", 4, "auto") == ["cuda:0"]


def test_cells_run_at_once_only_as_far_as_the_host_has_two_cores_for_each():
    # Each cell's decode loop launches its kernels from one Python thread: two cells on one core slow each other.
    assert device_slots("auto", "cuda:0", 4, None, cpu_cores=16) == FOUR_GPUS
    assert device_slots("auto", "cuda:0", 4, None, cpu_cores=8) == FOUR_GPUS
    assert device_slots("auto", "cuda:0", 4, None, cpu_cores=5) == ["cuda:0", "cuda:1"]
    assert device_slots("auto", "cuda:0", 4, None, cpu_cores=2) == ["cuda:0"]
    assert device_slots("auto", "cuda:0", 4, None, cpu_cores=1) == ["cuda:0"]


def test_pool_hands_out_free_gpus_and_takes_them_back():
    pool = DevicePool(FOUR_GPUS)
    assert pool.take() == ("cuda:0",)
    assert pool.take() == ("cuda:1",)
    pool.give_back(("cuda:0",))
    assert pool.take() == ("cuda:0",)
    assert pool.take(every_device=True) is None  # two are busy
    for taken in (("cuda:0",), ("cuda:1",)):
        pool.give_back(taken)
    assert pool.take(every_device=True) == tuple(FOUR_GPUS)
    assert pool.take() is None


def test_cells_start_in_order_and_a_cell_needing_every_gpu_is_not_overtaken():
    pool = DevicePool(["cuda:0", "cuda:1"])
    waiting = deque([("a", False), ("b", False), ("spread", True), ("c", False)])
    assert startable(waiting, pool) == [("a", ("cuda:0",)), ("b", ("cuda:1",))]
    pool.give_back(("cuda:0",))
    assert startable(waiting, pool) == []  # "spread" waits for both; "c" waits behind it
    pool.give_back(("cuda:1",))
    assert startable(waiting, pool) == [("spread", ("cuda:0", "cuda:1"))]
    pool.give_back(("cuda:0", "cuda:1"))
    assert startable(waiting, pool) == [("c", ("cuda:0",))]
    assert not waiting


def test_duplicate_slot_names_are_separate_slots():
    """Two cells on the same device name at once (a test's stand-in for two GPUs on a CPU machine)."""
    pool = DevicePool(["cpu", "cpu"])
    assert pool.take() == ("cpu",) and pool.take() == ("cpu",)
    assert pool.take() is None
    pool.give_back(("cpu",))
    assert pool.take() == ("cpu",)
