#!/usr/bin/env python
"""The memory plan (nanogpt/training/memory_plan.py, task=plan) against memory measured on the CPU.

  python bench/memory_plan.py saved           # bytes per token each block (and the head) keeps for the
                                              # backward, counted tensor by tensor: model=baby and
                                              # modern_baby shapes, fp32 and bf16, each checkpointing mode
  python bench/memory_plan.py saved --model modern_baby --set mlp_ratio=2.5
  python bench/memory_plan.py activations     # one process: saved activations and the step's peak,
                                              # for activation checkpointing none / block / selective
  python bench/memory_plan.py ranks           # two ranks (torchrun, gloo): DDP vs FSDP per rank
  python bench/memory_plan.py ranks --layers 8 --width 512 --vocab 8192
  python bench/memory_plan.py ranks --device cuda --nproc 8 --layers 12 --width 768 --heads 12 \
      --block 1024 --vocab 50304 --micro 8     # a GPU node: the CUDA allocator's figures, bf16
  python bench/memory_plan.py table           # docs/distributed.md's table (the plan alone, no measuring)

`saved` counts the storages the ops of a training forward create that are still alive after it
(a TorchDispatchMode holds each weakly): what autograd and activation checkpointing keep for the
backward, exactly, with nothing from the allocator. Forwards of 1 and 2 blocks over 1 and 2
sequences give the bytes per token per block and those of the rest (final norm, LM head, loss);
what does not grow with the tokens (autocast's copies of the weights, the rotary tables) drops
out of the differences. Sequences of 576 tokens: from 513 on, bf16 attention on the CPU goes
through SDPA's fused kernel as on a GPU (the model's shorter-context CPU path keeps T x T scores).

The other cases measure memory: each runs in a fresh process started with
MALLOC_MMAP_THRESHOLD_=65536, so that every tensor buffer of 64 KiB or more is its own mapping,
given back to the kernel when freed: resident memory (VmRSS) is then the memory the live tensors
hold, and VmHWM, reset through /proc/self/clear_refs before the measured step, its peak. A case
compares
  - `steady`: after a step (weights, optimizer state, DDP's buckets): the plan's parameters +
    optimizer (+ buckets);
  - `peak`: the highest point of the next step (forward, backward, clipping, AdamW step): the plan's
    parameters + gradients + optimizer + activations.
Memory figures are not disturbed by other processes (timings would be); the plan's GPU-only
allowances (CUDA context, fragmentation) are left out: the CPU has neither.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

import benchlib  # noqa: F401  (puts this checkout's nanogpt on sys.path)
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nanogpt.training import memory_plan as plan
from nanogpt.model import GPT, GPTConfig

MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
MB = 1e6


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss() -> int:
    return _status("VmRSS")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak() -> int:
    return _status("VmHWM")


def _batch(config: GPTConfig, micro: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(config.vocab_size, (micro, config.block_size + 1), generator=g)
    return x[:, :-1], x[:, 1:]


# ---- what the forward keeps, counted tensor by tensor

SAVED_TOKENS = 576  # per sequence: > 512, so that bf16 attention on the CPU is SDPA's fused kernel
MODELS = ("baby", "modern_baby")


class NewStorages(TorchDispatchMode):
    """Every storage the ops create while it is active, held weakly: after a forward pass, those
    still alive are what autograd (or checkpointing) keeps for the backward, and the loss.
    Storages that existed before (weights, the batch) are not new, even seen through a view."""

    def __init__(self, existing):
        super().__init__()
        self.existing = {id(t.untyped_storage()) for t in existing}
        self.made = {}  # id -> (weak reference, bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._note(t.untyped_storage())
        return out

    def _note(self, storage) -> None:
        key = id(storage)
        if key in self.existing:
            return
        known = self.made.get(key)
        if known is None or known[0]() is not storage:  # an id is reused only once its object died
            self.made[key] = (weakref.ref(storage), storage.nbytes())

    def alive_bytes(self) -> int:
        return sum(n for ref, n in self.made.values() if ref() is not None)


def kept_by_forward(config: GPTConfig, micro: int, dtype: str, mode: str) -> int:
    """Bytes a training forward (autocast in `dtype`, activation checkpointing `mode`) leaves alive."""
    from nanogpt.runtime import fsdp

    torch.manual_seed(0)
    model = GPT(config)
    fsdp.apply_activation_checkpointing(model, mode)
    if config.dropout > 0:  # the CPU's attention runs unfused with dropout (T x T probabilities
        for block in model.transformer.h:  # and their mask); a GPU's flash kernel keeps only its seed
            block.attn.dropout = 0.0
    x, y = (t.contiguous() for t in _batch(config, micro))  # as the loader's: no copy for the loss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"), \
            NewStorages([*model.parameters(), *model.buffers(), x, y]) as new:
        loss = model(x, y)[1]
    kept = new.alive_bytes()
    del loss
    return kept


def saved_per_token(config: GPTConfig, dtype: str, mode: str = "none") -> dict[str, float]:
    """Bytes per token a training forward keeps for the backward: per block (`block`), and for the
    rest (`head`: the final norm, the LM head's input, the loss's log-probabilities, ...), from
    forwards of 1 and 2 blocks over 1 and 2 sequences of config.block_size tokens."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a memory count: one thread is the quickest on a shared machine
    try:
        kept = {(layers, micro): kept_by_forward(dataclasses.replace(config, n_layer=layers), micro, dtype, mode)
                for layers in (1, 2) for micro in (1, 2)}
    finally:
        torch.set_num_threads(threads)
    tokens = config.block_size
    block = (kept[2, 2] - kept[1, 2] - kept[2, 1] + kept[1, 1]) / tokens
    return {"block": block, "head": (kept[1, 2] - kept[1, 1]) / tokens - block}


def model_config(name: str, overrides=(), vocab: int = 128) -> GPTConfig:
    """The GPTConfig of `model=<name>` (and `model.<key>=<value>` overrides), its context set to
    SAVED_TOKENS (per-token figures do not depend on it)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nanogpt.config import model_args
    from nanogpt.gate import register_configs
    from nanogpt.gate import register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(benchlib.REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", *(f"model.{o}" for o in overrides)])
    config = model_args(OmegaConf.to_object(cfg).model, vocab)
    return dataclasses.replace(config, block_size=SAVED_TOKENS)


def saved_case(config: GPTConfig, dtype: str, mode: str) -> dict:
    measured = saved_per_token(config, dtype, mode)
    return {"dtype": dtype, "mode": mode, "measured_block": measured["block"], "measured_head": measured["head"],
            "plan_block": plan.layer_saved(config, dtype, mode, device="cpu"),
            "plan_head": plan.head_saved(config, dtype, device="cpu")}


def saved_table(models, overrides) -> list[dict]:
    results = []
    for name in models:
        config = model_config(name, overrides)
        print(f"model={' '.join([name, *overrides])}: {config.n_layer} layers x {config.n_embd}, "
              f"{config.n_head} heads, MLP {config.mlp_hidden} wide; bytes per token per block, and for "
              "the head; measured (plan for the CPU's kernels | for CUDA's)")
        for dtype in ("float32", "bfloat16"):
            for mode in plan.CHECKPOINTING:
                r = {"model": name, **saved_case(config, dtype, mode)}
                results.append(r)
                print(f"  {dtype:<9} {mode:<10} block {r['measured_block']:8.1f} ({r['plan_block']:8.1f} | "
                      f"{plan.layer_saved(config, dtype, mode):8.1f})   head {r['measured_head']:8.1f} "
                      f"({r['plan_head']:8.1f} | {plan.head_saved(config, dtype):8.1f})")
    return results


# ---- one process: activations

def measure_activations(config: GPTConfig, micro: int, mode: str) -> dict:
    """Bytes the forward keeps for the backward, and the peak above the weights, gradients and
    optimizer state over a forward + backward, for one activation-checkpointing mode."""
    from nanogpt.runtime import fsdp

    torch.manual_seed(0)
    model = GPT(config)
    fsdp.apply_activation_checkpointing(model, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = _batch(config, micro)
    for _ in range(2):  # optimizer state and gradients exist from here on
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    del loss
    base = rss()
    reset_peak()
    loss = model(x, y)[1]  # the logits go at once, as in the training step
    kept = rss() - base
    loss.backward()
    return {"kept": kept, "peak": peak() - base}


def gptconfig_overrides(pairs) -> dict:
    """--set KEY=VALUE pairs as GPTConfig fields (values read as YAML: 2.5, true, null, rmsnorm)."""
    import yaml

    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def activations_case(args) -> dict:
    config = GPTConfig(block_size=args.block, vocab_size=args.vocab, n_layer=args.layers,
                       n_head=args.heads, n_embd=args.width, **gptconfig_overrides(args.set))
    measured = measure_activations(config, args.micro, args.mode)
    s = plan.Setup(config, args.micro, 1, "ddp", args.mode, "float32", device="cpu")
    a = plan.activations(s)
    return {"mode": args.mode, "measured_kept": measured["kept"], "measured_peak": measured["peak"],
            "plan_kept": a["stored"], "plan_peak": a["stored"] + a["transient"]}


# ---- two ranks: DDP vs FSDP

class _Meter:
    """Memory above a baseline: the CUDA allocator's figures on a GPU, resident memory on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.base = 0
        self.base = self.now()

    def now(self) -> int:
        return (torch.cuda.memory_allocated(self.device) if self.cuda else rss()) - self.base

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak()

    def peak(self) -> int:
        return (torch.cuda.max_memory_allocated(self.device) if self.cuda else peak()) - self.base


def ranks_case(args) -> dict:
    """A torchrun worker: build, wrap, train a step, then measure the next one."""
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nanogpt.runtime import fsdp

    cuda = args.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if cuda else "gloo")
    rank, world = td.get_rank(), td.get_world_size()
    dtype = torch.bfloat16 if cuda else torch.float32  # the autocast dtype
    config = GPTConfig(block_size=args.block, vocab_size=args.vocab, n_layer=args.layers,
                       n_head=args.heads, n_embd=args.width)

    def build(cfg):
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        fsdp.apply_activation_checkpointing(model, args.mode)
        if args.strategy == "fsdp":
            fsdp.shard(model, device.type, dtype)
            wrapped = model
        else:
            wrapped = DDP(model, device_ids=[device.index] if cuda else None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = (t.to(device) for t in _batch(cfg, args.micro, seed=rank))

        def step():
            for m in range(args.accum):
                last = m == args.accum - 1
                if args.strategy == "fsdp":
                    sync = fsdp.accumulating(model, last)
                else:
                    sync = contextlib.nullcontext() if last else wrapped.no_sync()
                with sync, torch.autocast(device.type, dtype=dtype, enabled=cuda):
                    loss = wrapped(x, y)[1]  # the logits go at once, as in the training step
                    loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return model, opt, step

    # the same code run once on a small copy first: the library code it touches is then resident,
    # and the baseline holds it
    _, _, warm_up = build(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=args.heads,
                                    n_embd=args.width))
    warm_up()
    del warm_up
    meter = _Meter(device)
    model, opt, step = build(config)
    step()
    steady = meter.now()
    meter.reset_peak()
    step()
    top = meter.peak()
    local = {"params": fsdp.local_numel(model.parameters()) * 4,
             "optimizer": sum(fsdp.local(t).numel() * 4 for st in opt.state.values()
                              for t in st.values() if torch.is_tensor(t) and t.dim() > 0)}
    s = plan.Setup(config, args.micro, world, args.strategy, args.mode, "bfloat16" if cuda else "float32",
                   accumulation=args.accum > 1)
    p = plan.plan(s)
    total = plan.Counts.of(config).total
    buckets = 4 * total if args.strategy == "ddp" else 0
    out = {"strategy": args.strategy, "mode": args.mode, "rank": rank, "measured_steady": steady,
           "measured_peak": top, "plan_steady": 4 * total / (world if args.strategy == "fsdp" else 1)
           + p["optimizer"] + buckets,
           "plan_peak": p["peak"],
           "tensor_bytes": local}
    td.barrier()
    td.destroy_process_group()
    return out


# ---- the docs table: the largest micro-batch that fits, per model, strategy and GPU memory

def docs_table(world: int = 8, memories=(40, 80), block: int = 1024) -> str:
    """Markdown: for GPT-2 124M-1.5B on `world` GPUs, the largest micro-batch (x block tokens)
    whose plan fits each GPU memory, per strategy and activation checkpointing ("-": none fits)."""
    sizes = {"124M": (12, 12, 768), "350M": (24, 16, 1024), "774M": (36, 20, 1280), "1558M": (48, 25, 1600)}
    head = "| model | strategy | act. ckpt | " + " | ".join(f"{m} GB: micro-batch, GB" for m in memories) + " |"
    lines = [head, "|" + " --- |" * (3 + len(memories))]
    for name, (layers, heads, width) in sizes.items():
        config = GPTConfig(block_size=block, vocab_size=50304, n_layer=layers, n_head=heads, n_embd=width)
        for strategy, accumulation in plan.variants(world, True):
            for mode in plan.CHECKPOINTING:
                cells = []
                for memory in memories:
                    best = None
                    for micro in (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1):
                        s = plan.Setup(config, micro, world, strategy, mode, "bfloat16", True, accumulation)
                        total = plan.plan(s)["total"]
                        if total <= memory * plan.GB:
                            best = (micro, total)
                            break
                    cells.append(f"{best[0]} ({best[1] / plan.GB:.0f})" if best else "-")
                who = plan.label(plan.Setup(config, 1, world, strategy, mode, "bfloat16", True, accumulation))
                lines.append(f"| {name} | {who} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- driver

def run_child(argv: list[str], nproc: int = 1) -> list[dict]:
    script = str(Path(__file__).resolve())
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *argv, "--child"]
    else:
        cmd = [sys.executable, script, *argv, "--child"]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([*cmd, f"--out={out}"], capture_output=True, text=True,
                              env={**os.environ, **MMAP_ENV})
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]


def shape_args(a) -> list[str]:
    return [f"--layers={a.layers}", f"--width={a.width}", f"--heads={a.heads}", f"--block={a.block}",
            f"--vocab={a.vocab}", f"--micro={a.micro}", f"--accum={a.accum}", *(f"--set={o}" for o in a.set)]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["saved", "activations", "ranks", "table"])
    ap.add_argument("--model", action="append", choices=MODELS, help="saved: model=NAME (default: both)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a model option: saved: model.KEY=VALUE; activations: GPTConfig's KEY (e.g. mlp_ratio=2.5)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2, help="ranks: micro-batches per step")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="ranks: cuda measures the CUDA allocator, in bf16 autocast, NCCL")
    ap.add_argument("--nproc", type=int, default=2, help="ranks: processes (one per GPU on cuda)")
    ap.add_argument("--mode", default=None, help="one activation-checkpointing mode (default: all)")
    ap.add_argument("--strategy", default=None, help="ranks: ddp or fsdp (default: both)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.what == "table":
        print(docs_table())
        return []
    if a.what == "saved":
        results = saved_table(a.model or MODELS, a.set)
        print(benchlib.machine())
        return results
    if a.child:
        result = activations_case(a) if a.what == "activations" else ranks_case(a)
        (Path(a.out) / f"{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
        return [result]
    modes = [a.mode] if a.mode else list(plan.CHECKPOINTING)
    results = []
    if a.what == "activations":
        for mode in modes:
            results += run_child(["activations", *shape_args(a), f"--mode={mode}"])
    else:
        for strategy in [a.strategy] if a.strategy else ["ddp", "fsdp"]:
            for mode in modes if a.mode else ["none", "block"]:
                results += run_child(["ranks", *shape_args(a), f"--mode={mode}", f"--strategy={strategy}",
                                      f"--device={a.device}"], a.nproc)
    if a.json:
        for r in results:
            print(json.dumps(r))
        return results
    print(f"model: {a.layers} layers x {a.width} wide, {a.heads} heads, block {a.block}, vocab {a.vocab}, "
          f"micro-batch {a.micro}, {'bf16 on GPUs' if a.device == 'cuda' else 'float32 on the CPU'}; "
          "MB measured (plan)")
    for r in results:
        who = f"{r['mode']:<10}" if a.what == "activations" else f"{r['strategy']:<5} {r['mode']:<6} rank {r['rank']}"
        if a.what == "activations":
            print(f"{who} kept {r['measured_kept'] / MB:8.2f} ({r['plan_kept'] / MB:8.2f})   "
                  f"peak {r['measured_peak'] / MB:8.2f} ({r['plan_peak'] / MB:8.2f})")
        else:
            print(f"{who}  steady {r['measured_steady'] / MB:8.2f} ({r['plan_steady'] / MB:8.2f})   "
                  f"peak {r['measured_peak'] / MB:8.2f} ({r['plan_peak'] / MB:8.2f})   "
                  f"tensors: params {r['tensor_bytes']['params'] / MB:.2f}, AdamW {r['tensor_bytes']['optimizer'] / MB:.2f}")
    print(benchlib.machine())
    return results


if __name__ == "__main__":
    main()
