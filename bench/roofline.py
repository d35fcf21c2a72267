#!/usr/bin/env python
"""Where the float32 training step's time goes on the CPU, against this CPU's measured rates.

    python bench/roofline.py                 # nanoGPT's CPU settings: 4 x 4 x 128, block 64, batch 12
    python bench/roofline.py --threads 1 --steps 40
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/roofline.py

Times our float32 step (nanogpt.training.step's parts: forward, backward, clipping, fused AdamW) with the
clock, and splits forward + backward with torch.profiler into the matmuls (aten::mm, addmm, bmm),
the attention kernel, the other ATen ops (element-wise, norms, softmax, reductions, copies) and
what no op accounts for (Python and dispatch). Each part is set beside this CPU's measured rate:
fp32 GEMM FLOP/s (1024 x 1024) for the matmuls, memory bandwidth (a large copy) for the optimizer.
The last column says what the part would take at that rate: a part far above its bound is
overhead-bound (launch, dispatch, small shapes), not compute- or memory-bound, and no faster
kernel removes it. BENCHMARKS.md, "Float32 on the CPU: the roofline".
"""
from __future__ import annotations

import argparse
import time

import benchlib  # first: puts this checkout on sys.path
import torch
from torch.profiler import ProfilerActivity, profile

from nanogpt.training.optim import AdamWConfig
from nanogpt.data.batches import Batches, TokenDataset
from nanogpt.runtime.hardware import measured_cpu_matmul_flops
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import make_adamw

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ATTENTION = ("flash_attention", "scaled_dot_product")


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large copy (read + write)."""
    a = torch.empty(mib * 2**18)
    b = torch.empty_like(a)
    b.copy_(a)
    start = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    return 2 * a.numel() * 4 * repeats / (time.perf_counter() - start)


def op_times(prof) -> dict[str, float]:
    """Self CPU time (s) of forward + backward's ops by kind."""
    out = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
    for e in prof.key_averages():
        if e.key.startswith("aten::") or "Backward" in e.key:
            kind = ("matmul" if e.key in MATMULS else
                    "attention" if any(a in e.key for a in ATTENTION) else "other ops")
            out[kind] += e.self_cpu_time_total / 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    args = p.parse_args()
    benchlib.set_threads(args.threads)
    dataset = TokenDataset(benchlib.char_dataset())
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=args.layers, n_head=4, n_embd=args.width, block_size=args.block,
                          vocab_size=dataset.vocab_size, bias=True))
    opt = make_adamw(model, AdamWConfig(lr=1e-3, weight_decay=0.1), "cpu")
    batches = Batches(dataset, args.block, args.batch, 0, torch.device("cpu"))
    tokens = args.batch * args.block
    clock = {"forward + backward": 0.0, "clip": 0.0, "optimizer": 0.0}

    def step(it: int) -> None:
        x, y = batches.cpu_batch("train", it)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        clock["forward + backward"] += t1 - t0
        clock["clip"] += t2 - t1
        clock["optimizer"] += t3 - t2

    for it in range(10):  # warm-up
        step(it)
    clock.update({k: 0.0 for k in clock})
    for it in range(args.steps):  # the clock, without the profiler's overhead
        step(10 + it)
    per_step = {k: v / args.steps for k, v in clock.items()}
    profiled = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the op split, on other steps
        for it in range(args.steps):
            x, y = batches.cpu_batch("train", 10 + args.steps + it)
            t0 = time.perf_counter()
            _, loss = model(x, y)
            loss.backward()
            profiled += time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
    # the profiler slows every op; its split (as shares of its own wall clock) is applied to the
    # clock's forward + backward time
    fb = per_step["forward + backward"]
    ops = {k: v / profiled * fb for k, v in op_times(prof).items()}
    parts = {"matmuls": ops["matmul"], "attention kernel": ops["attention"],
             "other ATen ops (element-wise, norms, softmax, copies)": ops["other ops"],
             "Python + dispatch (no op)": max(0.0, fb - sum(ops.values())),
             "gradient clipping": per_step["clip"], "optimizer (fused AdamW + zero_grad)": per_step["optimizer"]}
    total = sum(per_step.values())

    gemm = measured_cpu_matmul_flops(torch.float32)
    bw = memory_bandwidth()
    n = model.num_params(non_embedding=True)
    matmul_flops = 6 * n * tokens  # the weights' matmuls, forward + backward (attention: its own row)
    attn_flops = 12 * args.layers * args.width * args.block * tokens
    n_all = sum(q.numel() for q in model.parameters())
    adamw_bytes = n_all * 4 * 7  # reads param, grad, m, v; writes param, m, v
    bounds = {"matmuls": matmul_flops / gemm, "attention kernel": attn_flops / gemm,
              "optimizer (fused AdamW + zero_grad)": adamw_bytes / bw}
    print(f"machine: {benchlib.machine()}; ATen kernels {torch.backends.cpu.get_cpu_capability()}")
    print(f"measured: fp32 GEMM {gemm / 1e9:,.0f} GFLOP/s (1024^3), copy bandwidth {bw / 1e9:,.1f} GB/s")
    print(f"model {args.layers} x {args.width}, block {args.block}, batch {args.batch}: {n_all:,} parameters, "
          f"{tokens} tokens/step; step {total * 1e3:.1f} ms ({tokens / total:,.0f} tokens/s)\n")
    print("| part | ms/step | share | work per step | attained | at this CPU's rate (ms) |")
    print("|---|---|---|---|---|---|")
    work = {"matmuls": f"{matmul_flops / 1e9:.2f} GFLOP", "attention kernel": f"{attn_flops / 1e9:.3f} GFLOP",
            "optimizer (fused AdamW + zero_grad)": f"{adamw_bytes / 1e6:.1f} MB"}
    rate = {"matmuls": lambda t: f"{matmul_flops / t / 1e9:.0f} GFLOP/s",
            "attention kernel": lambda t: f"{attn_flops / t / 1e9:.0f} GFLOP/s",
            "optimizer (fused AdamW + zero_grad)": lambda t: f"{adamw_bytes / t / 1e9:.1f} GB/s"}
    for name, t in parts.items():
        print(f"| {name} | {t * 1e3:.2f} | {t / total:.0%} | {work.get(name, '-')} | "
              f"{rate[name](t) if name in rate and t > 0 else '-'} | "
              f"{bounds[name] * 1e3:.2f} |" if name in bounds else
              f"| {name} | {t * 1e3:.2f} | {t / total:.0%} | - | - | - |")
    floor = sum(bounds.values())
    print(f"\nat the measured rates the step's matmuls, attention and optimizer need {floor * 1e3:.2f} ms of "
          f"its {total * 1e3:.1f} ms; the rest is element-wise work and overhead at these small shapes")


if __name__ == "__main__":
    main()
