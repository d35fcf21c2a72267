#!/usr/bin/env python
"""Generation speed with the KV cache against recomputing the whole context at every token.

  python bench/sampling.py                      # 6 layers, 384 wide, block 256, char vocab, 500 tokens
  python bench/sampling.py --dtype bfloat16 --tokens 1000

Both ways sample the same way (temperature 0.8, top-k 200) from the same weights; they take turns
(`--rounds`), and the median time of each is reported. While prompt + output fit in the block the
two produce identical tokens, which is checked; past the block the cache restarts from the last
block/2 tokens (see GPT.generate), so the tokens may differ from there on, not the work per token.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import benchlib
import torch

from nanogpt.runtime.hardware import Runtime
from nanogpt.model import GPT, GPTConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per sample (default: %(default)s)")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=65, help="65: shakespeare_char's")
    parser.add_argument("--batch", type=int, default=1, help="samples generated together")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    benchlib.set_threads(args.threads)
    rt = Runtime(torch.device(args.device), getattr(torch, args.dtype))
    torch.manual_seed(0)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       block_size=args.block_size, vocab_size=args.vocab_size, dropout=0.0)
    model = GPT(config).to(rt.device).eval()
    prompt = torch.zeros(args.batch, 1, dtype=torch.long, device=rt.device)
    print(f"{config.n_layer} layers x {config.n_embd} wide, block {config.block_size}, vocab "
          f"{config.vocab_size}, {model.num_params(False) / 1e6:.1f}M params | {args.batch} x "
          f"{args.tokens} new tokens, {args.dtype} on {rt.device} | {benchlib.machine()}", flush=True)

    def generate(use_cache: bool):
        g = torch.Generator(device=rt.device).manual_seed(1)
        with rt.autocast():
            return model.generate(prompt, args.tokens, temperature=0.8, top_k=200, use_cache=use_cache, generator=g)

    generate(True)  # warm-up: allocator, thread pool
    times = {True: [], False: []}
    outputs = {}
    for _ in range(args.rounds):
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = generate(use_cache)
            rt.synchronize()
            times[use_cache].append(time.perf_counter() - start)

    fit = min(args.tokens, config.block_size - prompt.size(1))  # tokens generated within one block
    # in bf16 the two ways round differently (other matmul shapes), so only float32 must agree
    same = torch.equal(outputs[True][:, :1 + fit], outputs[False][:, :1 + fit]) if args.dtype == "float32" else None
    cached, full = (statistics.median(times[c]) for c in (True, False))
    n = args.batch * args.tokens
    result = {"config": vars(config), "tokens": args.tokens, "batch": args.batch, "dtype": args.dtype,
              "kv_cache_s": cached, "recompute_s": full, "kv_cache_tokens_per_s": n / cached,
              "recompute_tokens_per_s": n / full, "speedup": full / cached,
              "identical_within_block": same, "machine": benchlib.machine()}
    print(f"KV cache:   {cached:7.2f} s  {cached / args.tokens * 1000:7.2f} ms/token  {n / cached:8,.0f} tokens/s")
    print(f"recompute:  {full:7.2f} s  {full / args.tokens * 1000:7.2f} ms/token  {n / full:8,.0f} tokens/s")
    print(f"speed-up of the KV cache: {full / cached:.1f}x | the first {fit} tokens identical both ways: "
          f"{ {True: 'yes', False: 'NO', None: 'not checked in bf16'}[same]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if same is False:
        raise SystemExit("the KV cache changed the generated tokens within the block: a bug")


if __name__ == "__main__":
    main()
