"""kvbench: measure what the KV cache buys a causal language model's generate().

    import kvbench
    result = kvbench.run_benchmark(kvbench.BenchConfig(model=["gpt2"], max_new_tokens=[200], runs=3))
    result.summary_frame()
    kvbench.read_result("results/run.json")

torch and transformers load only when a benchmark runs, so reading and comparing results stays fast. The
names below load when first used: `import kvbench`, which the `kvbench` command does before anything else,
then takes no time a Ctrl-C could land in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvbench.core.errors import KvbenchError
from kvbench.core.version import __version__

if TYPE_CHECKING:
    from kvbench.model.records import BenchmarkResult
    from kvbench.model.settings import BenchConfig
    from kvbench.runner.benchmark import run_benchmark
    from kvbench.storage.document import read_result

# Each public name loaded on first use, and the module it comes from.
_LOADED_WHEN_USED = {
    "BenchConfig": "kvbench.model.settings",
    "BenchmarkResult": "kvbench.model.records",
    "read_result": "kvbench.storage.document",
    "run_benchmark": "kvbench.runner.benchmark",
}


def __getattr__(name: str) -> Any:
    if name not in _LOADED_WHEN_USED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOADED_WHEN_USED[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LOADED_WHEN_USED})


__all__ = ["BenchConfig", "BenchmarkResult", "KvbenchError", "read_result", "run_benchmark", "__version__"]
