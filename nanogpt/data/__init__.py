"""Tokens in: prepared datasets (meta.json + memory-mapped splits, llm.c shards) and the batches drawn from them."""
