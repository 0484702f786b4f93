"""The only caller of generate(): loading models, warmup, timed runs of exactly the requested tokens, per-token
times and memory, in this process."""
