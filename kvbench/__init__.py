"""kvbench: measure what the KV cache buys a causal language model's generate().

    import kvbench
    result = kvbench.run_benchmark(kvbench.BenchConfig(model=["gpt2"], max_new_tokens=[200], runs=3))
    result.summary_frame()
    kvbench.read_result("results/run.json")

torch and transformers load only when a benchmark runs, so reading and comparing results stays fast.
"""

__version__ = "0.1.0"

from kvbench.config import BenchConfig  # noqa: E402
from kvbench.errors import KvbenchError  # noqa: E402
from kvbench.results import BenchmarkResult, read_result  # noqa: E402
from kvbench.runner import run_benchmark  # noqa: E402

__all__ = ["BenchConfig", "BenchmarkResult", "KvbenchError", "read_result", "run_benchmark", "__version__"]
