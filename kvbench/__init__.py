"""kvbench: measure what the KV cache buys a causal language model's generate().

    import kvbench
    result = kvbench.run_benchmark(kvbench.BenchConfig(model=["gpt2"], max_new_tokens=[200], runs=3))
    result.summary_frame()
    kvbench.read_result("results/run.json")

torch and transformers load only when a benchmark runs, so reading and comparing results stays fast.
"""

from kvbench.core.errors import KvbenchError
from kvbench.core.version import __version__
from kvbench.model.records import BenchmarkResult
from kvbench.model.settings import BenchConfig
from kvbench.runner.benchmark import run_benchmark
from kvbench.storage.document import read_result

__all__ = ["BenchConfig", "BenchmarkResult", "KvbenchError", "read_result", "run_benchmark", "__version__"]
