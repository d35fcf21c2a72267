#!/usr/bin/env python
"""HellaSwag scoring speed: examples/s of nanogpt.evals.hellaswag.score for GPT-2 124M, and the time the
whole validation set (10,042 examples) would take.

  python bench/hellaswag_speed.py                                   # CPU, random 124M weights, 128 examples
  python bench/hellaswag_speed.py --device cuda --dtype bfloat16 --examples 2000 --batch-size 16 64
  python bench/hellaswag_speed.py --file hellaswag_val.jsonl       # real examples (GPT-2's BPE needed)

Speed does not depend on the weights, so a randomly initialised GPT-2 124M stands in for OpenAI's
(--path DIR loads a Hugging Face directory instead). Without --file the examples are synthetic with
HellaSwag's shape: a context of 20-80 tokens and four endings of 10-40 tokens (the validation set
averages about 95 tokens per row). The first batch is a warm-up, not timed.
"""
from __future__ import annotations

import argparse
import time

import benchlib
import numpy as np
import torch

from nanogpt.evals import hellaswag
from nanogpt.runtime.hardware import make_runtime
from nanogpt.model import GPT, GPTConfig


def synthetic(n: int, seed: int = 0) -> tuple[list, list[int]]:
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(n):
        ctx = rng.integers(0, 50257, int(rng.integers(20, 81))).tolist()
        rows = []
        for _ in range(4):
            end = rng.integers(0, 50257, int(rng.integers(10, 41))).tolist()
            rows.append((ctx + end, len(end)))
        encoded.append(rows)
    return encoded, rng.integers(0, 4, n).tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--batch-size", type=int, nargs="+", default=[8, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--path", help="a Hugging Face GPT-2 directory instead of random 124M weights")
    p.add_argument("--file", help="real examples: a hellaswag_val.jsonl")
    args = p.parse_args(argv)
    benchlib.set_threads(args.threads)
    if args.path:
        from nanogpt.hf.weights import load_pretrained

        model = load_pretrained(None, path=args.path)
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768))
    if args.file:
        from nanogpt.tokenizer import GPT2Tokenizer

        examples = hellaswag.read_jsonl(args.file, args.examples)
        encoded, labels = hellaswag.encode(examples, GPT2Tokenizer()), [e.label for e in examples]
    else:
        encoded, labels = synthetic(args.examples)
    tokens = sum(len(t) for rows in encoded for t, _ in rows)
    print(f"{len(encoded)} examples, {tokens / len(encoded) / 4:.0f} tokens per row | {benchlib.machine()}")
    print(f"{'dtype':<10}{'batch':>6}{'examples/s':>12}{'rows·tok/s':>12}{'10,042 examples':>17}")
    for dtype in args.dtype:
        rt = make_runtime(args.device, dtype)
        model.to(rt.device)
        for bs in args.batch_size:
            hellaswag.score(model, encoded[:bs], labels[:bs], rt, bs)  # warm-up
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            hellaswag.score(model, encoded, labels, rt, bs)
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            s = time.perf_counter() - start
            rate = len(encoded) / s
            print(f"{dtype:<10}{bs:>6}{rate:>12.1f}{tokens / s:>12,.0f}{hellaswag.VAL_EXAMPLES / rate:>15,.0f} s")
    print(f"load average after: {benchlib.machine().rsplit('load average ', 1)[1]}")


if __name__ == "__main__":
    main()
