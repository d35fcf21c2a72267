#!/usr/bin/env python
"""Evaluation speed: nanoGPT's estimate_loss (no_grad, the training micro-batch) against ours
(inference mode, batches twice as large), and what switching a compiled model between training and
evaluation costs in recompilations.

  python bench/eval_speed.py                     # 4 layers, 128 wide, block 128 (the default model)
  python bench/eval_speed.py --compile           # also a compiled model, trained and evaluated in turns

Both ways score the same number of tokens; they take turns over `--rounds`, medians reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import benchlib
import torch

from nanogpt.data.batches import Batches, TokenDataset, eval_batch
from nanogpt.runtime.distributed import Dist
from nanogpt.runtime.hardware import Runtime, compile_model, cpu_has_fast_bf16
from nanogpt.model import GPT, GPTConfig
from nanogpt.evals.loss import estimate_loss


@torch.no_grad()
def nanogpt_estimate_loss(model, batches: Batches, eval_iters: int, rt) -> dict:
    """nanoGPT's: no_grad, and a .item() per batch."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            with rt.autocast():
                _, loss = model(*eval_batch(batches, split, k))
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=12, help="the training micro-batch (default: %(default)s)")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=50 * 12 * 128, help="tokens scored per split")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data", help="a prepared char dataset dir (default: shakespeare_char in a temp dir)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    benchlib.set_threads(args.threads)
    dataset = TokenDataset(benchlib.char_dataset(args.data))
    rt = Runtime(torch.device("cpu"), torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=args.block, vocab_size=dataset.vocab_size))
    cpu = torch.device("cpu")
    small, large = (Batches(dataset, args.block, b, 1337, cpu) for b in (args.batch, 2 * args.batch))
    iters = {b: args.tokens // (b.batch_size * args.block) for b in (small, large)}
    ways = {
        f"nanoGPT: no_grad, batch {args.batch}": lambda m: nanogpt_estimate_loss(m, small, iters[small], rt),
        f"ours: inference mode, batch {2 * args.batch}": lambda m: estimate_loss(m, large, iters[large], rt, Dist()),
    }
    print(f"{args.tokens:,} tokens per split, {str(rt.dtype).replace('torch.', '')} | {benchlib.machine()}")
    times = {name: [] for name in ways}
    for name, fn in ways.items():
        fn(model)  # warm-up
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn(model)
            times[name].append(time.perf_counter() - start)
    result = {"tokens_per_split": args.tokens, "machine": benchlib.machine(), "ways": {}}
    for name, t in times.items():
        s = statistics.median(t)
        result["ways"][name] = {"s": s, "tokens_per_s": 2 * args.tokens / s}
        print(f"{name:<36} {s * 1000:8.1f} ms  {2 * args.tokens / s:10,.0f} tokens/s")

    if args.compile:
        from torch._dynamo.utils import counters

        compiled, opt = compile_model(model), torch.optim.AdamW(model.parameters())
        graphs = []
        for round_ in range(3):
            for it in range(5):
                with rt.autocast():
                    _, loss = compiled(*small.cpu_batch("train", round_ * 5 + it))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            start = time.perf_counter()
            estimate_loss(compiled, large, iters[large], rt, Dist())
            graphs.append((counters["stats"]["unique_graphs"], time.perf_counter() - start))
        print("compiled, 5 training steps then an evaluation, 3 times: graphs compiled so far / eval time: "
              + ", ".join(f"{g} / {s:.1f} s" for g, s in graphs))
        result["compiled_rounds"] = [{"graphs": g, "eval_s": s} for g, s in graphs]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
