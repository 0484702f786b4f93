"""PNG figures of a results file: per-token latency by position, and latency and memory across a sweep."""

from __future__ import annotations

from pathlib import Path

from kvbench.config import SWEEP_AXES
from kvbench.errors import KvbenchError
from kvbench.results import BenchmarkResult, CellResult
from kvbench.stats import per_token_curve_ms

MODE_COLOURS = {"cached": "tab:blue", "uncached": "tab:red"}
NUMERIC_AXES = ("max_new_tokens", "batch_size")
AXIS_LABELS = {
    "max_new_tokens": "new tokens generated",
    "batch_size": "batch size",
    "dtype": "dtype",
    "cache_implementation": "cache implementation",
    "attn_implementation": "attention implementation",
    "model": "model",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or assumed
    import matplotlib.pyplot as plt

    return plt


def _hardware(result: BenchmarkResult) -> str:
    environment = result.environment
    return f"{environment.get('device_name') or environment.get('device')} ({environment.get('device')})"


def _longest_cells(result: BenchmarkResult) -> list[CellResult]:
    """Per group of otherwise-equal settings, the longest generation: shorter ones are its prefix."""
    longest: dict[tuple, CellResult] = {}
    for cell in result.cells:
        if not result.runs_of(cell.id, "cached") and not result.runs_of(cell.id, "uncached"):
            continue
        settings = cell.settings
        group = tuple(getattr(settings, axis) for axis in SWEEP_AXES if axis != "max_new_tokens")
        if group not in longest or settings.max_new_tokens > longest[group].settings.max_new_tokens:
            longest[group] = cell
    return list(longest.values())


def plot_per_token(result: BenchmarkResult, path: Path) -> Path:
    plt = _pyplot()
    cells = _longest_cells(result)
    figure, axes = plt.subplots(len(cells), 1, figsize=(9, 4 * len(cells)), squeeze=False)
    for axis, cell in zip(axes[:, 0], cells):
        for mode in result.modes:
            curve = per_token_curve_ms([run.token_times_s for run in result.runs_of(cell.id, mode)])
            if curve:
                # Position 0 is the prefill (the whole prompt), the rest one decode step each.
                axis.plot(range(len(curve)), curve, label=mode, color=MODE_COLOURS.get(mode))
        axis.set_xlabel("new token position")
        axis.set_ylabel("time for this token (ms, median of runs)")
        axis.set_title(f"{cell.id}", fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(f"Per-token latency: {', '.join(result.config['model'])} on {_hardware(result)}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def sweep_axis(result: BenchmarkResult) -> str | None:
    """The first setting that varies across measured cells (new tokens first), or None."""
    measured = [cell for cell in result.cells if cell.status == "measured" or result.runs_of(cell.id, "cached")]
    for axis in ("max_new_tokens", *[a for a in SWEEP_AXES if a != "max_new_tokens"]):
        if len({getattr(cell.settings, axis) for cell in measured}) > 1:
            return axis
    return None


def _series(result: BenchmarkResult, axis: str) -> dict[tuple, list[tuple[object, CellResult]]]:
    """Cells grouped by every setting but the swept one, each group ordered along the swept axis."""
    groups: dict[tuple, list[tuple[object, CellResult]]] = {}
    for cell in result.cells:
        rest = tuple(getattr(cell.settings, a) for a in SWEEP_AXES if a != axis)
        groups.setdefault(rest, []).append((getattr(cell.settings, axis), cell))
    return groups


def _position(axis: str, value: object) -> object:
    """Numeric settings sit on a numeric axis; the others (dtype, implementation names) are categories."""
    return value if axis in NUMERIC_AXES else str(value)


def plot_sweep(result: BenchmarkResult, axis: str, directory: Path) -> list[Path]:
    plt = _pyplot()
    groups = _series(result, axis)
    latency_figure, latency_axis = plt.subplots(figsize=(8, 5))
    memory_figure, memory_axis = plt.subplots(figsize=(8, 5))
    many = len(groups) > 1
    for rest, points in groups.items():
        suffix = f" ({', '.join(str(v) for v in rest)})" if many else ""
        for mode in result.modes:
            rows = [(_position(axis, x), result.summary_of(cell.id, mode)) for x, cell in points]
            rows = [(x, summary) for x, summary in rows if summary is not None]
            if not rows:
                continue
            latency_axis.errorbar(
                [x for x, _ in rows], [s.mean_s for _, s in rows], yerr=[s.std_s or 0 for _, s in rows],
                marker="o", capsize=3, label=f"{mode}{suffix}", color=None if many else MODE_COLOURS.get(mode),
            )
            memory = [(x, *summary.peak_memory()) for x, summary in rows]
            memory = [(x, value / 2**20, source) for x, value, source in memory if value is not None]
            if memory:
                memory_axis.plot(
                    [x for x, _, _ in memory], [m for _, m, _ in memory], marker="o",
                    label=f"peak {memory[0][2]}, {mode}{suffix}",
                )
        kv = [(_position(axis, x), cell.kv_cache_bytes / 2**20) for x, cell in points if cell.kv_cache_bytes]
        if kv:
            memory_axis.plot(*zip(*kv), linestyle="--", marker="x", label=f"theoretical KV cache{suffix}")
    title = f"{', '.join(result.config['model'])} on {_hardware(result)}"
    latency_axis.set_xlabel(AXIS_LABELS[axis])
    latency_axis.set_ylabel("latency per generate() (s, mean ± std)")
    latency_axis.set_title(f"Latency vs {AXIS_LABELS[axis]}: {title}", fontsize=10)
    memory_axis.set_xlabel(AXIS_LABELS[axis])
    memory_axis.set_ylabel("MiB")
    memory_axis.set_title(f"Memory vs {AXIS_LABELS[axis]}: {title}", fontsize=10)
    paths = []
    for figure, ax, name in ((latency_figure, latency_axis, "latency"), (memory_figure, memory_axis, "memory")):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        figure.tight_layout()
        path = directory / f"{name}-vs-{axis}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_result(result: BenchmarkResult, directory: str | Path) -> list[Path]:
    """Write the figures a results file supports into a directory; returns their paths."""
    directory = Path(directory)
    if not result.runs:
        raise KvbenchError("this results file holds no measured runs to plot; run kvbench run first")
    made = [parent for parent in (directory, *directory.parents) if not parent.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KvbenchError(f"cannot create {directory} ({error.strerror}); choose another --out-dir") from None
    try:
        paths = [plot_per_token(result, directory / "per-token.png")]
        axis = sweep_axis(result)
        if axis is not None:
            paths += plot_sweep(result, axis, directory)
    except BaseException:
        # No empty folder left behind by a plot that failed.
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return paths
