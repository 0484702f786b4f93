"""PNG figures of a results file: per-token latency against the roofline bound, latency across a sweep with
fitted curves, the cache's measured size against theory, memory over time, and each cache implementation's
memory saved against its output agreement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kvbench.analysis.cache_choice import Missing, cache_verdicts
from kvbench.analysis.explain import Explanation, explain_result, named_settings, step_bounds_ms, varying_axes
from kvbench.core.errors import KvbenchError
from kvbench.core.stats import per_token_curve_ms
from kvbench.model.cells import AXES, PARTIAL_AXES, SWEEP_AXES, shown_value
from kvbench.model.modes import CACHED, MODES, MODES_BY_NAME
from kvbench.model.records import BenchmarkResult, CellResult
from kvbench.storage.writer import remove_if_there

# One colour per mode in every figure.
# Panels per figure: beyond this a sweep's groups go on to further figures (name-2.png, ...), so each
# panel stays large enough to read.
MAX_PANELS = 6


def _colour(mode: str) -> str | None:
    """A mode's colour in every figure; None (matplotlib's next) for a mode this version does not know."""
    known = MODES_BY_NAME.get(mode)
    return known.colour if known is not None else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or assumed
    import matplotlib.pyplot as plt

    return plt


def _hardware(result: BenchmarkResult) -> str:
    environment = result.environment
    return f"{environment.get('device_name') or environment.get('device')} ({environment.get('device')})"


def _title(result: BenchmarkResult, what: str) -> str:
    """What a figure shows, on which hardware, and RANDOM weights when any cell had them."""
    weights = {cell.settings.model: (cell.model or {}).get("weights") for cell in result.cells if cell.model}
    randomised = [model for model, kind in weights.items() if kind == "random"]
    # Where only some models had random weights, the title names them: the others' outputs are real.
    named = f" ({', '.join(randomised)})" if randomised and len(randomised) < len(weights) else ""
    random = f" · RANDOM weights{named}" if randomised else ""
    models = dict.fromkeys(cell.settings.model for cell in result.cells)  # the cells say what ran
    return f"{what}: {', '.join(models)} on {_hardware(result)}{random}"


def _measured(result: BenchmarkResult, cell: CellResult) -> bool:
    return any(result.runs_of(cell.id, mode) for mode in MODES)


def _groups(result: BenchmarkResult, axis: str) -> dict[tuple, list[CellResult]]:
    """Measured cells grouped by every setting but `axis`, each group ordered along it."""
    groups: dict[tuple, list[CellResult]] = {}
    # Along the cache implementation, its bits are part of each value shown (shown_value), not a group.
    grouped_by = [a for a in SWEEP_AXES if a != axis and not (axis == "cache_implementation" and a in PARTIAL_AXES)]
    for cell in result.cells:
        if axis in PARTIAL_AXES and getattr(cell.settings, axis) is None:
            continue  # the axis does not apply to this cell: nowhere to draw it
        if _measured(result, cell):
            key = tuple(getattr(cell.settings, a) for a in grouped_by)
            groups.setdefault(key, []).append(cell)
    for cells in groups.values():
        cells.sort(key=lambda cell: _sort_key(getattr(cell.settings, axis)))
    return groups


def _sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _group_name(result: BenchmarkResult, cell: CellResult, without: str) -> str:
    axes = [axis for axis in varying_axes(result) if axis != without]
    return named_settings(cell.settings, axes) or cell.settings.model


def _panels(plt, count: int, width: float = 6.0, height: float = 4.0):
    """Figures of at most MAX_PANELS panels (two columns) holding `count` panels: [(figure, [axes])]."""
    pages = []
    for start in range(0, max(count, 1), MAX_PANELS):
        n = min(MAX_PANELS, count - start) or 1
        columns = 1 if n == 1 else 2
        rows = -(-n // columns)
        figure, grid = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
        axes = list(grid.flat)
        for spare in axes[n:]:
            spare.set_visible(False)
        pages.append((figure, axes[:n]))
    return pages


# A finished figure and where it goes.
Drawn = tuple[Path, Any]


def _save(plt, pages, directory: Path, name: str, title: str) -> list[Drawn]:
    """Each page finished, with the path it is to be written to (plot_result writes them all at once)."""
    drawn = []
    for index, (figure, axes) in enumerate(pages):
        for axis in axes:
            axis.grid(True, alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=8)
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        drawn.append((directory / (f"{name}.png" if index == 0 else f"{name}-{index + 1}.png"), figure))
    return drawn


def _write_figure(figure, path: Path) -> None:
    """Beside the target and renamed over it: a link there is replaced, never written through."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(temporary, dpi=110, format="png")
        os.replace(temporary, path)
    except OSError as error:
        remove_if_there(temporary)
        raise KvbenchError(f"cannot write {path} ({error.strerror or error}); free space or choose another --out-dir") from None


def _longest_cells(result: BenchmarkResult) -> list[CellResult]:
    """Per group of otherwise-equal settings, the longest generation: shorter ones are its prefix."""
    return [cells[-1] for cells in _groups(result, "max_new_tokens").values()]


def plot_per_token(result: BenchmarkResult, directory: Path, explanation: Explanation) -> list[Drawn]:
    """Each new token's time by position per mode, with the roofline bound on it as a dashed line."""
    plt = _pyplot()
    cells = _longest_cells(result)
    pages = _panels(plt, len(cells), width=7.0)
    panels = [axis for _, axes in pages for axis in axes]
    for axis, cell in zip(panels, cells):
        for mode in result.modes:
            curve = per_token_curve_ms([run.token_times_s for run in result.runs_of(cell.id, mode)])
            if not curve:
                continue
            colour = _colour(mode)
            # Position 0 is the prefill (the whole prompt), the rest one decode step each.
            axis.plot(range(len(curve)), curve, label=f"{mode}, measured", color=colour)
            bound = step_bounds_ms(cell, mode, explanation.peaks_for(cell))
            if bound:
                reached = explanation.bound_of(cell.id, mode)
                share = f" ({reached.reached()})" if reached else ""
                axis.plot(range(len(bound)), bound, linestyle="--", color=colour, label=f"{mode}, bound{share}")
        axis.set_yscale("log")
        axis.set_xlabel("new token position")
        axis.set_ylabel("ms for this token (median of runs)")
        axis.set_title(_group_name(result, cell, "max_new_tokens") + f", new={cell.settings.max_new_tokens}", fontsize=9)
    return _save(plt, pages, directory, "per-token", _title(result, "Per-token latency and the roofline bound"))


def sweep_axis(result: BenchmarkResult) -> str | None:
    """The first setting that varies across measured cells (new tokens first), or None."""
    axes = varying_axes(result)
    for axis in ("max_new_tokens", *[a for a in SWEEP_AXES if a != "max_new_tokens"]):
        if axis in axes:
            return axis
    return None


def _fit_for(explanation: Explanation, cells: list[CellResult]):
    ids = {cell.id for cell in cells}
    return next((fit.extrapolation for fit in explanation.fits if set(fit.cells) == ids and fit.extrapolation), None)


def plot_latency(result: BenchmarkResult, axis: str, directory: Path, explanation: Explanation) -> list[Drawn]:
    """Latency per generate() along the swept setting, a panel per group: points and error bars on a
    numeric axis (with the fitted curves for new tokens), bars side by side for a categorical one."""
    plt = _pyplot()
    groups = list(_groups(result, axis).values())
    pages = _panels(plt, len(groups))
    panels = [ax for _, axes in pages for ax in axes]
    numeric = AXES[axis]["numeric"]
    for ax, cells in zip(panels, groups):
        labels = [shown_value(cell.settings, axis) for cell in cells]
        for index, mode in enumerate(result.modes):
            summaries = [result.summary_of(cell.id, mode) for cell in cells]
            rows = [(cell, s) for cell, s in zip(cells, summaries) if s is not None]
            if not rows:
                continue
            colour = _colour(mode)
            if numeric:
                xs = [getattr(cell.settings, axis) for cell, _ in rows]
                runs = [
                    (run.new_tokens if axis == "max_new_tokens" else getattr(cell.settings, axis), run.latency_s)
                    for cell, _ in rows
                    for run in result.runs_of(cell.id, mode)
                ]
                ax.scatter([x for x, _ in runs], [y for _, y in runs], s=10, alpha=0.4, color=colour)
                ax.errorbar(
                    xs,
                    [s.mean_s for _, s in rows],
                    yerr=[s.std_s or 0 for _, s in rows],
                    fmt="o",
                    capsize=3,
                    color=colour,
                    label=f"{mode} (mean ± std)",
                )
            else:
                width = 0.8 / len(result.modes)
                positions = [labels.index(shown_value(cell.settings, axis)) + (index - 0.5) * width for cell, _ in rows]
                ax.bar(
                    positions,
                    [s.mean_s for _, s in rows],
                    width,
                    yerr=[s.std_s or 0 for _, s in rows],
                    capsize=3,
                    color=colour,
                    label=mode,
                )
        fitted = _fit_for(explanation, cells) if axis == "max_new_tokens" else None
        if fitted is not None:
            import numpy as np

            lengths = np.geomspace(max(1, fitted.cached.min_new_tokens / 2), 2 * fitted.longest_new_tokens, 100)
            for power in (fitted.cached, fitted.uncached):
                error = f" ± {power.exponent_stderr:.2f}" if power.exponent_stderr is not None else ""
                ax.plot(
                    lengths,
                    [power.predict_s(n) for n in lengths],
                    color=_colour(power.mode),
                    linestyle=":",
                    label=f"{power.mode} fit: a + b·n^{power.exponent:.2f}{error}",
                )
            if fitted.crossover_new_tokens is not None:
                ax.axvline(
                    fitted.crossover_new_tokens,
                    color="grey",
                    linewidth=0.8,
                    label=f"crossover {fitted.crossover_new_tokens:.1f} tokens",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(AXES[axis]["label"])
        ax.set_ylabel("latency per generate() (s)")
        ax.set_title(_group_name(result, cells[0], axis), fontsize=9)
    return _save(plt, pages, directory, f"latency-vs-{axis}", _title(result, f"Latency vs {AXES[axis]['label']}"))


def plot_cache_size(result: BenchmarkResult, axis: str, directory: Path) -> list[Drawn]:
    """The cache object's measured bytes against the theory at the positions it held, along the swept
    setting: what can be measured on any device (a CPU's RSS cannot see a cache beside the model)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 5))
    numeric = AXES[axis]["numeric"]
    markers = "osD^v<>px*"
    for index, cells in enumerate(_groups(result, axis).values()):
        cells = [cell for cell in cells if cell.kv_cache_theory_bytes]
        if not cells:
            continue
        xs = [getattr(cell.settings, axis) if numeric else shown_value(cell.settings, axis) for cell in cells]
        name = _group_name(result, cells[0], axis)
        line = ax.plot(
            xs, [(cell.kv_cache_theory_bytes or 0) / 2**20 for cell in cells], linestyle="--", label=f"theory, {name}"
        )[0]
        measured = [(x, cell.kv_cache_measured_bytes / 2**20) for x, cell in zip(xs, cells) if cell.kv_cache_measured_bytes]
        if measured:
            ax.plot(
                *zip(*measured),
                linestyle="none",
                marker=markers[index % len(markers)],
                color=line.get_color(),
                label=f"measured cache object, {name}",
            )
    if numeric:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(AXES[axis]["label"])
    ax.set_ylabel("KV cache after the run (MiB)")
    return _save(
        plt,
        [(figure, [ax])],
        directory,
        f"cache-size-vs-{axis}",
        _title(result, "KV cache: measured bytes vs 2·layers·kv_heads·head_dim·positions·batch·bytes"),
    )


def plot_memory_over_time(result: BenchmarkResult, directory: Path) -> list[Drawn]:
    """Sampled memory against time for each mode's runs, in the longest cell of each group; on a GPU also
    torch's allocated bytes against position, which grows with the cache."""
    plt = _pyplot()
    cells = [
        cell
        for cell in _longest_cells(result)
        if any(run.memory_timeline for mode in result.modes for run in result.runs_of(cell.id, mode))
    ]
    if not cells:
        return []
    pages = _panels(plt, len(cells))
    panels = [ax for _, axes in pages for ax in axes]
    source = ""
    for ax, cell in zip(panels, cells):
        for mode in result.modes:
            for index, run in enumerate(result.runs_of(cell.id, mode)):
                if run.memory_timeline:
                    source = run.memory_timeline_source or source
                    ax.plot(
                        [t for t, _ in run.memory_timeline],
                        [b / 2**20 for _, b in run.memory_timeline],
                        color=_colour(mode),
                        alpha=0.7,
                        linewidth=1,
                        label=mode if index == 0 else None,
                    )
        ax.set_xlabel("seconds since generate() began")
        ax.set_ylabel(f"{source or 'memory'} (MiB)")
        ax.set_title(_group_name(result, cell, "max_new_tokens") + f", new={cell.settings.max_new_tokens}", fontsize=9)
    drawn = _save(plt, pages, directory, "memory-over-time", _title(result, f"Memory over time ({source})"))
    allocated = [cell for cell in cells if any(run.allocated_by_position for run in result.runs_of(cell.id, CACHED.name))]
    if allocated:
        pages = _panels(plt, len(allocated))
        for ax, cell in zip([ax for _, axes in pages for ax in axes], allocated):
            for mode in result.modes:
                runs = [run for run in result.runs_of(cell.id, mode) if run.allocated_by_position]
                if runs:
                    points = runs[0].allocated_by_position or []
                    ax.plot([p for p, _ in points], [b / 2**20 for _, b in points], color=_colour(mode), label=mode)
            ax.set_xlabel("new token position")
            ax.set_ylabel("torch allocated (MiB)")
            ax.set_title(_group_name(result, cell, "max_new_tokens"), fontsize=9)
        drawn += _save(
            plt, pages, directory, "allocated-by-position", _title(result, "GPU memory allocated by torch as the cache grows")
        )
    return drawn


def plot_cache_choice(result: BenchmarkResult, directory: Path) -> list[Drawn]:
    """Per group of cells that differ only in their cache implementation, a point per implementation: the
    measured cache bytes it saves against the dynamic cache, and the share of its greedy tokens that agree
    with the dynamic cache's; the dynamic cache sits at (0%, 100%). An implementation missing either figure
    is named in the panel with the reason."""
    groups = cache_verdicts(result)
    if not groups:
        return []
    plt = _pyplot()
    pages = _panels(plt, len(groups), width=8.0)
    for ax, group in zip([ax for _, axes in pages for ax in axes], groups):
        left_out = []
        points: dict[tuple[float, float], list[str]] = {}
        for verdict in group.verdicts:
            point: tuple[float, float] | str
            if verdict.is_reference:
                # Measured, the reference saves nothing and agrees with itself; failed, its reason.
                point = verdict.missing()[0][1] if verdict.missing() else (0.0, 100.0)
            else:
                share, agreement = verdict.memory_saved_share, verdict.agreement
                if isinstance(share, Missing):
                    point = share.reason
                elif isinstance(agreement, Missing) or agreement.agreement_token_share is None:
                    point = agreement.reason if isinstance(agreement, Missing) else "no token agreement"
                else:
                    point = (share * 100, agreement.agreement_token_share * 100)
            if isinstance(point, str):
                left_out.append(f"{verdict.cache}: {point}")
            else:
                points.setdefault(point, []).append(verdict.cache)
        # Implementations at the same point (a static cache saves nothing and agrees fully) share one label.
        for point, caches in points.items():
            ax.scatter(*point, s=30)
            ax.annotate(", ".join(caches), point, textcoords="offset points", xytext=(5, 5), fontsize=8)
        if left_out:
            ax.text(0.01, 0.01, "not plotted: " + "; ".join(left_out), transform=ax.transAxes, fontsize=6, wrap=True)
        ax.set_xlabel("KV cache saved against the dynamic cache (% of its measured bytes)")
        ax.set_ylabel("greedy tokens agreeing (%)")
        ax.set_title(group.title(), fontsize=9)
    return _save(plt, pages, directory, "cache-choice", _title(result, "Which KV cache: memory saved vs output agreement"))


def plot_result(result: BenchmarkResult, directory: str | Path, replace: bool = False) -> list[Path]:
    """Write the figures a results file supports into a directory; returns their paths. A file already
    there is replaced only with `replace`, and then nothing is written until every figure is drawn."""
    directory = Path(directory).expanduser()
    if not result.runs:
        raise KvbenchError("this results file holds no measured runs to plot; run kvbench run first")
    made = [parent for parent in (directory, *directory.parents) if not parent.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KvbenchError(f"cannot create {directory} ({error.strerror}); choose another --out-dir") from None
    drawn: list[Drawn] = []
    try:
        explanation = explain_result(result)
        drawn = plot_per_token(result, directory, explanation)
        axis = sweep_axis(result)
        if axis is not None:
            drawn += plot_latency(result, axis, directory, explanation)
            drawn += plot_cache_size(result, axis, directory)
        drawn += plot_memory_over_time(result, directory)
        drawn += plot_cache_choice(result, directory)
        existing = [path for path, _ in drawn if path.exists() or path.is_symlink()]
        if existing and not replace:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise KvbenchError(
                f"{existing[0]} already exists{more}; pass --force to replace the figures, or choose another --out-dir"
            )
        for path, figure in drawn:
            _write_figure(figure, path)
    except BaseException:
        # No empty folder left behind by a plot that failed.
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        plt = _pyplot()
        for _, figure in drawn:
            plt.close(figure)
    return [path for path, _ in drawn]
