#!/usr/bin/env python
"""Causal attention on the CPU, forward + backward: SDPA (its CPU flash kernel) against the written-out
form the model uses in bf16 (`nanogpt.model.causal_attention`), over sequence lengths.

  python bench/attention.py                    # bf16 and fp32, the shapes of the models benchmarked here
  python bench/attention.py --threads 1

Process CPU time per call (steadier than wall time on a shared machine), median of `--reps`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import benchlib
import torch
import torch.nn.functional as F

import nanogpt.model

# (B, heads, T, head size): the small preset, the 6x384 model, block 512, GPT-2 at block 1024
SHAPES = [(12, 4, 64, 32), (12, 6, 256, 64), (8, 12, 512, 64), (4, 12, 1024, 64)]


def written_out(q, k, v):
    """The model's CPU bf16 path, whatever the dtype (it takes it for bf16 at T <= 512 only)."""
    B, H, T, D = q.shape
    mask = torch.full((T, T), float("-inf"), dtype=q.dtype).triu(1)
    att = torch.baddbmm(mask.expand(B * H, T, T), q.reshape(B * H, T, D),
                        k.reshape(B * H, T, D).transpose(1, 2), alpha=D ** -0.5).softmax(dim=-1)
    return torch.bmm(att, v.reshape(B * H, T, D)).view(B, H, T, D)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def cpu_ms(fn, shape, dtype, reps: int) -> float:
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    times = []
    for i in range(reps + 2):  # two warm-up calls
        start = time.process_time()
        fn(q, k, v).sum().backward()
        if i >= 2:
            times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    benchlib.set_threads(args.threads)
    print(f"forward + backward, CPU ms per call (process time) | {benchlib.machine()}")
    print(f"{'dtype':<10}{'B, H, T, D':<20}{'SDPA':>9}{'written out':>13}{'model uses':>12}")
    for dtype in (torch.bfloat16, torch.float32):
        for shape in SHAPES:
            reps = args.reps if shape[2] <= 512 else max(2, args.reps // 4)
            a, b = cpu_ms(sdpa, shape, dtype, reps), cpu_ms(written_out, shape, dtype, reps)
            q = torch.empty(shape, dtype=dtype)
            uses = "written out" if _takes_written_out(q) else "SDPA"
            print(f"{str(dtype).replace('torch.', ''):<10}{str(shape):<20}{a:>9.1f}{b:>13.1f}{uses:>12}", flush=True)


def _takes_written_out(q) -> bool:
    """Which path nanogpt.model.causal_attention takes for q, found by watching SDPA get called."""
    called = []
    real = nanogpt.model.F.scaled_dot_product_attention
    nanogpt.model.F.scaled_dot_product_attention = lambda *a, **kw: called.append(1) or real(*a, **kw)
    try:
        small = q[:1, :1]  # same dtype and T, cheap
        nanogpt.model.causal_attention(small, small, small)
    finally:
        nanogpt.model.F.scaled_dot_product_attention = real
    return not called


if __name__ == "__main__":
    main()
