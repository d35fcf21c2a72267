#!/usr/bin/env python
"""Training speed on the CPU: a plain nanoGPT-style eager fp32 loop against ours, one lever at a
time, side by side in one process, with the loss each reaches on the same batches.

  python bench/cpu_train.py --preset small               # nanoGPT's CPU settings
  python bench/cpu_train.py --preset 6x384 --iters 60    # 6 layers, 384 wide, block 256
  python bench/cpu_train.py --variants plain bf16 --iters 500   # loss parity over a longer run

Every variant starts from the same weights and sees the same batches in the same order, so their
losses per iteration are comparable; only the numerics (bf16) may move them. The variants take
turns in rounds of a few steps each: load from other processes on the machine then hits all of
them alike, and the median step time of each is a fair comparison. The first `--warmup` steps
(torch.compile compiles there) are not timed.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path
import numpy as np
import torch

import nanogpt.model
from nanogpt.data.batches import Batches, Prefetcher, TokenDataset
from nanogpt.runtime.hardware import Runtime, compile_model, cpu_has_fast_bf16
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import AdamWConfig
from nanogpt.training.optim import make_adamw
from nanogpt.training.schedule import lr_at

# nanoGPT's README, "I only have a macbook": 4 layers, 4 heads, 128 wide, block 64, batch 12.
PRESETS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=12),
}
LR, MIN_LR, WARMUP_ITERS = 1e-3, 1e-4, 100  # nanoGPT's shakespeare_char schedule
OUR_ATTENTION = nanogpt.model.causal_attention


def sdpa_attention(q, k, v, dropout_p=0.0):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


@dataclass
class Variant:
    name: str
    adamw: str = "for-loop"  # torch's default on the CPU (nanoGPT's choice there) | foreach | fused (ours)
    prefetch: bool = False  # ours: Batches + Prefetcher, loss read at the end; plain: nanoGPT's get_batch + .item()
    bf16: bool = False
    compile: bool = False
    set_to_none: bool = True
    sdpa: bool = False  # attention through SDPA's CPU flash kernel even in bf16 (what the model did before)
    vs: str | None = None  # for variants off the ladder: the rung they differ from by one lever


OURS_BF16 = "+ bf16 autocast"
LADDER = {  # each rung adds one lever to the one above
    "plain": Variant("plain eager fp32 (nanoGPT-style)"),
    "fused": Variant("+ fused AdamW", adamw="fused"),
    "prefetch": Variant("+ prefetch thread, no per-step sync", adamw="fused", prefetch=True),
    "bf16": Variant(OURS_BF16, adamw="fused", prefetch=True, bf16=True),
    "compile": Variant("+ torch.compile", adamw="fused", prefetch=True, bf16=True, compile=True),
}
EXTRA = {  # one lever taken back from a rung, to show what it is worth there
    "foreach": Variant("bf16, foreach AdamW instead of fused", "foreach", True, True, vs=OURS_BF16),
    "no-set-to-none": Variant("bf16, zero_grad(set_to_none=False)", "fused", True, True,
                              set_to_none=False, vs=OURS_BF16),
    "sdpa": Variant("bf16, attention through SDPA (CPU flash)", "fused", True, True, sdpa=True, vs=OURS_BF16),
    "fp32-compile": Variant("fp32 + torch.compile (no bf16)", "fused", True, False, True,
                            vs="+ prefetch thread, no per-step sync"),
}


class Runner:
    """One variant: its own model, optimizer and data path, stepping through the same batches."""

    def __init__(self, v: Variant, dataset: TokenDataset, preset: dict, iters: int, seed: int = 1337):
        self.v, self.dataset, self.iters = v, dataset, iters
        self.B, self.T = preset["batch_size"], preset["block_size"]
        torch.manual_seed(seed)
        self.model = GPT(GPTConfig(vocab_size=dataset.vocab_size, dropout=0.0, bias=True,
                                   **{k: preset[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}))
        if v.adamw == "fused":
            self.opt = make_adamw(self.model, AdamWConfig(lr=LR, weight_decay=0.1, beta1=0.9, beta2=0.99),
                                  device_type="cpu")
        else:  # nanoGPT's configure_optimizers on the CPU: the same groups, torch's AdamW unfused
            decay = [p for p in self.model.parameters() if p.dim() >= 2]
            no_decay = [p for p in self.model.parameters() if p.dim() < 2]
            self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                          {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.99),
                                         foreach=v.adamw == "foreach")
        self.forward = compile_model(self.model) if v.compile else self.model
        self.rt = Runtime(torch.device("cpu"), torch.bfloat16 if v.bf16 else torch.float32)
        self.batches = Batches(dataset, self.T, self.B, seed, torch.device("cpu"))
        self.prefetch = Prefetcher(self.batches, 0, 1) if v.prefetch else None
        self.it, self.losses, self.times = 0, [], []

    def batch(self):
        if self.prefetch is not None:
            return self.prefetch.get(self.it, 0)
        # nanoGPT's get_batch: a fresh memmap per batch, one tensor per window, stacked (same offsets)
        data = np.memmap(self.dataset.path / "train.bin", dtype=np.uint16, mode="r")
        ix = self.batches.indices("train", self.batches.train_index(self.it, 0, 1))
        x = torch.stack([torch.from_numpy(data[i:i + self.T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.T].astype(np.int64)) for i in ix])
        return x, y

    def step(self, timed: bool):
        start = time.perf_counter()
        lr = lr_at(self.it, LR, MIN_LR, WARMUP_ITERS, self.iters)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = self.batch()
        nanogpt.model.causal_attention = sdpa_attention if self.v.sdpa else OUR_ATTENTION
        with self.rt.autocast():
            _, loss = self.forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=self.v.set_to_none)
        # nanoGPT logs every step on the CPU (log_interval=1); ours reads losses only at log steps
        self.losses.append(loss.detach() if self.prefetch is not None else loss.item())
        if timed:
            self.times.append(time.perf_counter() - start)
        self.it += 1

    def loss_curve(self) -> np.ndarray:
        return np.array([float(x) for x in self.losses])

    def close(self):
        if self.prefetch is not None:
            self.prefetch.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--iters", type=int, default=300, help="steps per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps per variant")
    parser.add_argument("--chunk", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--variants", nargs="+", default=list(LADDER), choices=[*LADDER, *EXTRA],
                        help="rungs of the ladder (%(default)s), and variants that take one lever back "
                             f"from a rung: {', '.join(EXTRA)}; the first is the baseline")
    parser.add_argument("--data", help="a prepared char dataset dir (default: shakespeare_char in a temp dir)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    benchlib.set_threads(args.threads)
    preset = PRESETS[args.preset]
    variants = [LADDER[k] for k in args.variants if k in LADDER] + [EXTRA[k] for k in args.variants if k in EXTRA]
    if not cpu_has_fast_bf16():
        print("note: this CPU has no bf16 matrix instructions; bf16 variants will be slow here")
    dataset = TokenDataset(benchlib.char_dataset(args.data))
    print(f"{args.preset}: {preset} on {dataset.path.name} | {args.iters} steps per variant, "
          f"{args.warmup} untimed | {benchlib.machine()}")
    print(f"matmul rates before: {benchlib.matmul_rates()}", flush=True)

    runners = [Runner(v, dataset, preset, args.iters) for v in variants]
    for r in runners:  # warm-up, compilation included
        start = time.perf_counter()
        for _ in range(args.warmup):
            r.step(timed=False)
        r.first_steps_s = time.perf_counter() - start
        print(f"  warm-up of {r.v.name!r}: {r.first_steps_s:.1f} s", flush=True)
    while any(r.it < args.iters for r in runners):
        for r in runners:
            for _ in range(min(args.chunk, args.iters - r.it)):
                r.step(timed=True)
    for r in runners:
        r.close()
    print(f"matmul rates after: {benchlib.matmul_rates()} | {benchlib.machine()}")

    tokens = preset["batch_size"] * preset["block_size"]
    ms = {r.v.name: benchlib.median_ms(r.times) for r in runners}
    base, base_curve = runners[0].v.name, runners[0].loss_curve()
    tail = max(10, args.iters // 10)
    rows = []
    print(f"\n{'variant':<42}{'ms/iter':>9}{'tokens/s':>10}{'vs first':>10}{'vs prev':>9}"
          f"{'loss, last ' + str(tail):>16}{'mean |dloss|':>14}")
    for i, r in enumerate(runners):
        curve = r.loss_curve()
        ref = r.v.vs or (runners[i - 1].v.name if i > 0 else None)
        row = {**asdict(r.v), "ms_per_iter": ms[r.v.name], "tokens_per_s": tokens / ms[r.v.name] * 1000,
               "speedup_vs_first": ms[base] / ms[r.v.name],
               "speedup_vs_previous": ms[ref] / ms[r.v.name] if ref in ms else None, "previous": ref,
               "loss_tail_mean": float(curve[-tail:].mean()),
               "mean_abs_loss_diff_vs_first": float(np.abs(curve - base_curve).mean()),
               "warmup_s": r.first_steps_s}
        rows.append(row)
        if r.v.vs and not runners[i - 1].v.vs:
            print("one lever taken back ('vs prev': its speed-up over the rung it differs from):")
        prev = f"{row['speedup_vs_previous']:.2f}x" if row["speedup_vs_previous"] else "-"
        print(f"{r.v.name:<42}{row['ms_per_iter']:>9.1f}{row['tokens_per_s']:>10,.0f}"
              f"{row['speedup_vs_first']:>9.2f}x{prev:>9}{row['loss_tail_mean']:>16.4f}"
              f"{row['mean_abs_loss_diff_vs_first']:>14.4f}")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, **preset, "iters": args.iters,
                                         "machine": benchlib.machine(), "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
