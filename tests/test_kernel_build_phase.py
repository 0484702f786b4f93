"""A cache backend building its kernels on first use (optimum-quanto's CPU extension, minutes on a small
machine) is a phase of its own: announced, kept alive on the display, counted in the time left while it runs
and not charged to every later cell once done. Scripted clocks and a fake extension: nothing is compiled."""

from __future__ import annotations

import io
import pickle
import threading

import pytest
from rich.console import Console

from kvbench.core.eta import Planned, TimeLeft
from kvbench.measure import kernels
from kvbench.measure.kernels import KERNEL_BUILD_GUESS_S, KernelBuild, build_kernels, pending_build
from kvbench.model.cells import Cell
from kvbench.model.events import Observer, PhaseAlive, PhaseStarted
from kvbench.model.phases import KERNEL_BUILD, PHASES
from kvbench.render.progress import LineProgress, LiveProgress
from tests.conftest import tiny_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def three_cells() -> tuple[list[Planned], list[str]]:
    cells = ["dynamic", "quantized int4", "quantized int2"]
    return [Planned("cached", 10, 0, "m", cell) for cell in cells for _ in range(2)], cells


def test_a_build_counts_in_the_time_left_while_it_runs_and_is_not_charged_to_later_cells():
    clock = Clock()
    planned, cells = three_cells()
    left = TimeLeft(planned, clock, starting=set())
    for cell in cells[:2]:
        left.cell_started(cell)
        if cell == "quantized int4":
            left.phase_started(cell, 100.0)
            clock.now += 40
            # Two generations of 1 s left in each of two cells, and the build's guessed 60 s still to come.
            assert left.seconds_left() == pytest.approx(4.0 + 60.0)
            clock.now += 80  # it took longer than guessed: nothing of it is left, never a negative time
            assert left.seconds_left() == pytest.approx(4.0)
            left.phase_finished(cell, 120.0)
        for _ in range(2):
            clock.now += 1.0
            left.finished(Planned("cached", 10, 0, "m", cell), 1.0)
        left.cell_finished(cell)
    # The last cell: its two generations, and no share of the 120 s build (the cells cost nothing beyond).
    assert left.seconds_left() == pytest.approx(2.0)


def test_other_phases_do_not_end_the_build():
    clock = Clock()
    planned, cells = three_cells()
    left = TimeLeft(planned, clock, starting=set())
    left.cell_started(cells[0])
    clock.now += 1.0
    left.finished(planned[0], 1.0)
    left.phase_started(cells[0], 50.0)
    left.phase_finished(cells[1], 1.0)  # another cell's phase
    assert left.seconds_left() == pytest.approx(5.0 + 50.0)


def test_the_build_runs_in_a_thread_while_the_measuring_thread_says_it_goes_on():
    events: list = []
    may_end = threading.Event()

    def emit(event) -> None:
        events.append(event)
        if sum(isinstance(e, PhaseAlive) for e in events) >= 3:
            may_end.set()

    built = []
    build_kernels(KernelBuild("building", lambda: built.append(may_end.wait(60))), emit, alive_every_s=0.001)
    assert built == [True]
    assert events[0] == PhaseStarted(KERNEL_BUILD, "building", KERNEL_BUILD_GUESS_S)
    assert all(isinstance(event, PhaseAlive) for event in events[1:]) and len(events) >= 4
    assert KERNEL_BUILD in PHASES
    # They cross a measuring process's pipe as every other event does.
    assert [pickle.loads(pickle.dumps(event)) for event in events[:2]] == events[:2]


def test_a_failing_build_raises_in_the_measuring_thread():
    def fail() -> None:
        raise RuntimeError("no compiler")

    with pytest.raises(RuntimeError, match="no compiler"):
        build_kernels(KernelBuild("building", fail), lambda event: None, alive_every_s=0.001)


class FakeExtension:
    def __init__(self, build_directory: str) -> None:
        self.build_directory = build_directory
        self._lib = None

    @property
    def lib(self) -> str:
        self._lib = "built"
        return self._lib


def test_a_build_is_pending_only_for_quantos_cpu_kernels_not_yet_built_for_this_torch(tmp_path, monkeypatch):
    import torch

    extension = FakeExtension(str(tmp_path))
    monkeypatch.setattr(kernels, "_quanto_cpu_extension", lambda: extension)
    quantized = Cell("tiny-milton", 16, 1, "auto", "quantized", "auto", quantized_nbits=4)
    build = pending_build(quantized, "quanto", "cpu")
    assert build is not None and "optimum-quanto" in build.what
    assert build.build() == "built"
    extension._lib = None
    assert pending_build(Cell("tiny-milton", 16, 1, "auto", "dynamic", "auto"), "quanto", "cpu") is None
    assert pending_build(quantized, "hqq", "cpu") is None
    assert pending_build(quantized, "quanto", "cuda") is None
    # Built before for another torch: quanto rebuilds it; for this one, nothing to build.
    (tmp_path / "pytorch_version.txt").write_text("1.0.0\n")
    assert pending_build(quantized, "quanto", "cpu") is not None
    (tmp_path / "pytorch_version.txt").write_text(torch.__version__ + "\n")
    assert pending_build(quantized, "quanto", "cpu") is None


def started_display(display, clock: Clock):
    planned, cells = three_cells()
    display.planned({generation: 1 for generation in planned}, starting=set())
    display.time_left.cell_started(cells[0])
    display.generation_started("cached 1/2", planned[0])
    clock.now += 1.0
    display.generation_finished(1.0, planned[0])
    display.phase_started(cells[1], "building optimum-quanto's CPU kernels (first use)", 100.0)
    return cells


def test_a_terminal_shows_the_build_and_its_time_left_counting_down():
    clock = Clock()
    out = io.StringIO()
    display = LiveProgress(Console(file=out, force_terminal=True, width=120, color_system=None), clock)
    with display:
        started_display(display, clock)
        shown = out.getvalue()
        assert "building optimum-quanto's CPU kernels" in shown
        overall = display.progress.tasks[0]
        assert overall.fields["left"] == "about 1:42 left"  # 2 generations of 1 s and the 100 s guessed
        drawn = len(out.getvalue())
        clock.now += 30
        display.phase_alive()
        assert len(out.getvalue()) > drawn  # redrawn: the clocks move
        assert overall.fields["left"] == "about 1:12 left"


def test_a_log_says_the_build_began_goes_on_and_ended():
    clock = Clock()
    log = io.StringIO()
    display = LineProgress(Console(file=log, force_terminal=False, width=200), clock)
    cells = started_display(display, clock)
    clock.now += 10
    display.phase_alive()  # too soon for another line
    clock.now += 25
    display.phase_alive()
    display.phase_finished(cells[1], KERNEL_BUILD, 35.0)
    lines = log.getvalue().splitlines()[-3:]
    assert lines[0] == ("building optimum-quanto's CPU kernels (first use): guessed at 1:40 · elapsed 0:01 · about 1:42 left")
    assert lines[1].startswith("building optimum-quanto's CPU kernels (first use): 0:35 so far · about 1:07 left")
    assert lines[2] == "building optimum-quanto's CPU kernels (first use): done in 0:35"


class PhaseRecorder(Observer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def phase_started(self, cell, what, expected_s):
        self.seen.append(f"started {what}")

    def phase_alive(self):
        if self.seen[-1] != "alive":
            self.seen.append("alive")

    def generation_started(self, label, generation):
        self.seen.append(label)

    def phase_finished(self, cell, phase, seconds):
        if phase == KERNEL_BUILD:
            self.seen.append("built")


def test_a_run_builds_before_the_first_generation_and_records_the_phase(tiny_gpt2_dir, monkeypatch):
    """A real tiny run, its cache's build faked (the real one needs optimum-quanto and a compiler)."""
    from kvbench.measure import measurer
    from kvbench.runner.benchmark import run_benchmark

    calls: list[str] = []
    fake = KernelBuild("building fake kernels", lambda: calls.append("built"))
    monkeypatch.setattr(measurer, "pending_build", lambda cell, backend, device: fake if not calls else None)
    recorder = PhaseRecorder()
    result = run_benchmark(tiny_config(tiny_gpt2_dir, runs=1, warmup=1), observer=recorder)
    assert calls == ["built"]
    seen = [event for event in recorder.seen if event != "alive"]  # a build this quick may end before one
    assert seen[:2] == ["started building fake kernels", "built"] and seen[2].startswith("warmup")
    assert KERNEL_BUILD in result.cells[0].phases_s


def test_the_plans_estimate_counts_a_build_still_to_do(tiny_gpt2_dir, tmp_path, monkeypatch, quanto_planned):
    """Earlier runs predict the generations; a quantized cell whose kernels are not built adds the guess."""
    from kvbench.runner import benchmark
    from kvbench.runner.benchmark import Benchmark
    from tests.test_runner import _earlier_run_here

    folder = tmp_path / "results"
    _earlier_run_here(tiny_gpt2_dir, folder)
    new = tiny_config(
        tiny_gpt2_dir,
        max_new_tokens=[6],
        runs=3,
        warmup=1,
        cache_implementation=["dynamic", "quantized"],
        output=str(folder / "new.json"),
    )
    generations_s = 2 * 4 * (6 * 0.01 + 6 * 0.03)
    monkeypatch.setattr(benchmark, "pending_build", lambda cell, backend, device: None)
    assert Benchmark(new).plan().estimate.seconds == pytest.approx(generations_s)
    fake = KernelBuild("building optimum-quanto's CPU kernels (first use)", lambda: None)
    monkeypatch.setattr(
        benchmark, "pending_build", lambda cell, backend, device: fake if cell.cache_implementation == "quantized" else None
    )
    estimate = Benchmark(new).plan().estimate
    assert estimate.seconds == pytest.approx(generations_s + KERNEL_BUILD_GUESS_S)  # once, however many cells
    assert estimate.text().endswith(
        "; it includes about 2:17 building optimum-quanto's CPU kernels (first use), guessed from a 2-core CPU"
    )
