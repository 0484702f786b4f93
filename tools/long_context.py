"""Predict uncached generation at prompts too long to measure it, from the cached mode's first-token times.

Without a cache, every step of a generation is a prefill of the sequence so far: step t of a P-token prompt
costs about what the first token costs at P + t tokens. So N new tokens take

    uncached(P, N) ~ TTFT(P) + TTFT(P + 1) + ... + TTFT(P + N - 1)

with TTFT the cached mode's time to first token (one prefill and one sampling step). TTFT(P) is fitted as
a + b P + c P^2 (the weights' work grows with the tokens, attention's with their square), by least squares
on relative error, over every cached batch-1 run of the files given. Where a file measured the uncached mode
too, the prediction is set against the measurement; elsewhere it is printed marked "predicted".

    python tools/long_context.py results/long-context-cpu.json results/long-context-uncached-cpu.json \\
        --plot results/long-context-cpu-plots/prediction.png
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvbench.model.records import RunRecord  # noqa: E402
from kvbench.storage.document import read_result  # noqa: E402


@dataclass(frozen=True)
class Quadratic:
    """TTFT(P) = a + b P + c P^2, in seconds."""

    a: float
    b: float
    c: float

    def __call__(self, tokens: float) -> float:
        return self.a + self.b * tokens + self.c * tokens * tokens

    def uncached_s(self, prompt_tokens: int, new_tokens: int) -> float:
        return sum(self(prompt_tokens + step) for step in range(new_tokens))


def fit_first_token(points: Sequence[tuple[int, float]]) -> Quadratic:
    """Least squares on relative error: each point weighs 1 / its time, so a 1k prompt's few milliseconds
    count as much as a 32k prompt's seconds."""
    import numpy

    if len({tokens for tokens, _ in points}) < 3:
        raise SystemExit("error: the fit needs cached runs at three prompt lengths at least")
    tokens = numpy.array([p for p, _ in points], dtype=float)
    seconds = numpy.array([s for _, s in points], dtype=float)
    c, b, a = numpy.polyfit(tokens, seconds, 2, w=1.0 / seconds)
    return Quadratic(float(a), float(b), float(c))


@dataclass
class Row:
    prompt_tokens: int
    new_tokens: int
    cached_ttft_s: float | None
    cached_s: float | None
    prefix_ttft_s: dict[int, float]  # by the shared prefix's tokens
    uncached_measured_s: float | None
    uncached_predicted_s: float


def _batch_one(runs: Iterable[RunRecord], mode: str) -> dict[tuple[int, int], list[RunRecord]]:
    grouped: dict[tuple[int, int], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.mode == mode and run.batch_size == 1:
            grouped[(run.prompt_tokens, run.new_tokens)].append(run)
    return grouped


def _shared_tokens(run: RunRecord) -> int:
    """The prefix a prefix-mode run reused, from its cell's id (runs record the prompt, not the prefix)."""
    found = re.search(r" prefix=(\d+)", run.cell)
    return int(found.group(1)) if found else 0


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def table(paths: Sequence[Path]) -> tuple[Quadratic, list[Row]]:
    return table_of([run for path in paths for run in read_result(path).runs])


def table_of(runs: Sequence[RunRecord]) -> tuple[Quadratic, list[Row]]:
    cached, uncached, prefix = (_batch_one(runs, mode) for mode in ("cached", "uncached", "prefix"))
    points = [(p, r.time_to_first_token_s) for (p, _), rs in cached.items() for r in rs if r.time_to_first_token_s]
    fit = fit_first_token(points)
    rows = []
    for prompt_tokens, new_tokens in sorted(set(cached) | set(uncached)):
        key = (prompt_tokens, new_tokens)
        rows.append(
            Row(
                prompt_tokens,
                new_tokens,
                _mean(r.time_to_first_token_s for r in cached.get(key, [])),
                _mean(r.latency_s for r in cached.get(key, [])),
                _prefix_means(prefix.get(key, [])),
                _mean(r.latency_s for r in uncached.get(key, [])),
                fit.uncached_s(prompt_tokens, new_tokens),
            )
        )
    return fit, rows


def _prefix_means(runs: Sequence[RunRecord]) -> dict[int, float]:
    by_prefix: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        if run.time_to_first_token_s is not None:
            by_prefix[_shared_tokens(run)].append(run.time_to_first_token_s)
    return {shared: statistics.fmean(values) for shared, values in sorted(by_prefix.items())}


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(fit: Quadratic, rows: Sequence[Row]) -> str:
    lines = [
        f"TTFT(P) = {fit.a:.4g} + {fit.b:.4g}·P + {fit.c:.4g}·P² s (fitted on the cached runs)",
        "",
        "| prompt tokens | new tokens | cached TTFT s | prefix TTFT s | cached s | uncached s | uncached / cached |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.uncached_measured_s is not None:
            error = row.uncached_predicted_s / row.uncached_measured_s - 1
            uncached = f"{row.uncached_measured_s:.3f} measured (predicted {row.uncached_predicted_s:.3f}, {error:+.0%})"
            against = row.uncached_measured_s
        else:
            uncached = f"{row.uncached_predicted_s:.3f} **predicted**"
            against = row.uncached_predicted_s
        ratio = "—" if row.cached_s is None else f"{against / row.cached_s:.1f}×"
        prefix = "; ".join(f"{s:.3f} ({shared} shared)" for shared, s in row.prefix_ttft_s.items()) or "—"
        lines.append(
            f"| {row.prompt_tokens} | {row.new_tokens} | {_seconds(row.cached_ttft_s)} | {prefix} "
            f"| {_seconds(row.cached_s)} | {uncached} | {ratio} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))

    def series(values: Sequence[tuple[int, float | None]], **style: object) -> None:
        shown = [(p, v) for p, v in values if v is not None]
        if shown:
            axes.plot(*zip(*shown, strict=True), **style)  # type: ignore[arg-type]

    series([(r.prompt_tokens, r.cached_s) for r in rows], marker="o", color="tab:blue", label="cached, end to end")
    series(
        [(r.prompt_tokens, r.cached_ttft_s) for r in rows], marker=".", color="tab:blue", ls=":", label="cached, first token"
    )
    prefixes = sorted({shared for r in rows for shared in r.prefix_ttft_s})
    for shared, colour in zip(prefixes, ["tab:green", "tab:orange", "tab:purple", "tab:olive"], strict=False):
        series(
            [(r.prompt_tokens, r.prefix_ttft_s.get(shared)) for r in rows],
            marker="^",
            color=colour,
            ls=":",
            label=f"first token, a {shared}-token prefix reused",
        )
    series(
        [(r.prompt_tokens, r.uncached_measured_s) for r in rows], marker="s", color="tab:red", ls="", label="uncached, measured"
    )
    series(
        [(r.prompt_tokens, r.uncached_predicted_s) for r in rows],
        marker="s",
        mfc="none",
        color="tab:red",
        ls="--",
        label="uncached, predicted (sum of first-token times)",
    )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("prompt tokens")
    axes.set_ylabel("seconds (mean of runs)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results files with cached runs (and uncached ones)")
    parser.add_argument("--plot", type=Path, help="write the measured and predicted times as a PNG here")
    arguments = parser.parse_args(argv)
    fit, rows = table(arguments.results)
    print(markdown(fit, rows))
    if arguments.plot:
        plot(rows, arguments.plot)


if __name__ == "__main__":
    main()
