"""Muon's Newton-Schulz on the CPU: bf16 (torch.optim.Muon) against float32 (Float32Muon).

    python bench/muon_ns.py                          # the speed run's model (4 x 4 x 128) and GPT-2 124M's
    python bench/muon_ns.py --threads 1 --rounds 7

Times one optimizer step's orthogonalisation (every hidden matrix of the model, five iterations)
in each dtype, taking turns, and prints the median per step with the machine's matmul rates:
optim.ns_dtype=auto picks bf16 only where the CPU has bf16 matrix units (nanogpt.training.optim).
To see an AVX2 CPU's kernels on a newer one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
"""
from __future__ import annotations

import argparse
import time

import torch
from benchlib import machine, matmul_rates, median_ms, set_threads

from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import muon_groups, orthogonalise
from nanogpt.training.optim import MuonConfig

MODELS = {"speedrun 4x4x128": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
          "gpt2 124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine()}\nmatmul: {matmul_rates()}, ATen kernels {torch.backends.cpu.get_cpu_capability()}")
    print("| model | matrices | bf16 ms/step | float32 ms/step | bf16 / float32 |\n|---|---|---|---|---|")
    for name in args.models:
        hidden, _ = muon_groups(GPT(GPTConfig(**MODELS[name])), MuonConfig())
        grads = [torch.randn_like(p) for p in hidden]
        times = {torch.bfloat16: [], torch.float32: []}
        for _ in range(args.rounds + 1):  # the first round warms up, and is dropped
            for dtype in times:
                t = time.perf_counter()
                for g in grads:
                    orthogonalise(g, 5, dtype)
                times[dtype].append(time.perf_counter() - t)
        bf16, fp32 = (median_ms(times[d][1:]) for d in times)
        print(f"| {name} | {len(grads)} | {bf16:.1f} | {fp32:.1f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
