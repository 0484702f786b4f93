"""Why a short shared prefix can make the prefix mode slower on a CPU: torch's attention with an explicit
mask against its causal form, at tiny-gqa-32k's shape (4 query heads of 16 dimensions).

Computing a whole prompt, transformers gives scaled_dot_product_attention `is_causal=True`; computing the
tokens after a reused prefix, it passes a mask (the new queries see the prefix and the causal part of
themselves), and the CPU kernel takes another path. Alternated, best of `--repeats` each:

    python benchmarks/sdpa_mask.py [--tokens 4096 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    import torch
    from torch.nn.functional import scaled_dot_product_attention

    torch.manual_seed(0)
    for tokens in arguments.tokens:
        q, k, v = (torch.randn(1, 4, tokens, 16) for _ in range(3))
        mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()
        ways = {"is_causal": {"is_causal": True}, "mask": {"attn_mask": mask}}
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(arguments.repeats):
            for name, keywords in ways.items():
                start = time.perf_counter()
                scaled_dot_product_attention(q, k, v, **keywords)
                best[name] = min(best[name], time.perf_counter() - start)
        print(
            f"{tokens} tokens: is_causal {best['is_causal']:.3f} s, mask {best['mask']:.3f} s,"
            f" mask / is_causal {best['mask'] / best['is_causal']:.2f}"
        )


if __name__ == "__main__":
    main()
