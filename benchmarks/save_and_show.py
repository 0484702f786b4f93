"""What a save after each generation and one `show` cost on committed results files.

A save mid-run should only write what was measured; `show` should explain each file once. Run it from the
repository root: `python benchmarks/save_and_show.py`. Both figures count calls as well as time them, so
the counts hold on any machine and the times say what they cost on this one."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import kvbench.analysis.explain
import kvbench.core.stats
from kvbench.render.report import print_result
from kvbench.render.text import output_console
from kvbench.storage.document import read_result
from kvbench.storage.writer import ResultsFile

# What computes an explanation: explain_result until it kept its answer, then the function it calls once.
EXPLAIN = "_explain" if hasattr(kvbench.analysis.explain, "_explain") else "explain_result"


@contextlib.contextmanager
def counting(module, name: str, counts: dict[str, int]):
    """Count the calls of `module.name`, wherever it was imported from."""
    original = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    patched = [m for m in list(__import__("sys").modules.values()) if m and getattr(m, name, None) is original]
    for m in patched:
        setattr(m, name, counted)
    try:
        yield
    finally:
        for m in patched:
            setattr(m, name, original)


def mid_run_save_s(path: Path, saves: int) -> tuple[float, dict[str, int]]:
    """The median time of a save made after a generation (one run added each time), and what ran."""
    result = read_result(path)
    runs = list(result.runs)
    result.runs = runs[:-saves]
    counts: dict[str, int] = {}
    times = []
    mid_run = {"derived": False} if "derived" in inspect.signature(ResultsFile.save).parameters else {}
    with tempfile.TemporaryDirectory() as folder:
        file = ResultsFile(Path(folder) / "save.json")
        file.open()
        try:
            with counting(kvbench.core.stats, "summarize", counts), counting(kvbench.analysis.explain, EXPLAIN, counts):
                for run in runs[-saves:]:
                    result.runs = [*result.runs, replace(run)]
                    start = time.perf_counter()
                    file.save(result, **mid_run)
                    times.append(time.perf_counter() - start)
        finally:
            file.close()
    return statistics.median(times), counts


def show_s(path: Path) -> tuple[float, dict[str, int]]:
    counts: dict[str, int] = {}
    console = output_console()
    console.file = io.StringIO()
    with counting(kvbench.core.stats, "summarize", counts), counting(kvbench.analysis.explain, EXPLAIN, counts):
        start = time.perf_counter()
        print_result(read_result(path), console)
        elapsed = time.perf_counter() - start
    return elapsed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("results/explain-cpu-sweep.json"))
    parser.add_argument("--long", type=Path, default=Path("results/explain-cpu-long.json"))
    parser.add_argument("--saves", type=int, default=8)
    args = parser.parse_args()
    seconds, counts = mid_run_save_s(args.sweep, args.saves)
    print(
        f"save after a generation ({args.sweep.name}, median of {args.saves}): {seconds * 1000:.1f} ms,"
        f" summaries {counts.get('summarize', 0)}, explanations {counts.get(EXPLAIN, 0)}"
    )
    seconds, counts = show_s(args.long)
    print(
        f"show {args.long.name}: {seconds:.2f} s, summaries {counts.get('summarize', 0)}, explanations {counts.get(EXPLAIN, 0)}"
    )


if __name__ == "__main__":
    main()
