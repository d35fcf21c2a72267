"""`task=bench`: time the real training step, as nanoGPT's bench.py does, and say how fast it is.

    python launch.py task=bench model=gpt2_124m hardware=gpu
    python launch.py task=bench hardware=cpu model.block_size=64 model.vocab_size=65

Warm-up steps first (torch.compile compiles in the first), then `task.iters` timed steps of
`nanogpt.training.step.train_step`, the training loop's own step: forward and backward over the
accumulated micro-batches under the run's autocast, gradient clipping, the optimizer step.
Reported: median ms/iter, tokens/s, achieved FLOP/s (`GPT.flops_per_token`, the one FLOP
formula) and MFU against the device's peak (a data-sheet table for GPUs, a matmul rate measured
here on the CPU), and peak memory. Figures go to the
console and to bench.json in the output directory; the return value is tokens/s.
"""
from __future__ import annotations

import functools
import logging
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nanogpt.config import TaskConfig, at_least, model_args
from nanogpt.data.batches import Batches, Prefetcher
from nanogpt.data.catalog import open_dataset
from nanogpt.model import GPT
from nanogpt.run.metrics import write_json_atomic
from nanogpt.runtime import parallel
from nanogpt.runtime.distributed import Dist
from nanogpt.runtime.hardware import measured_cpu_matmul_flops, peak_flops_info, runtime
from nanogpt.training.guards import NanGuard
from nanogpt.training.optim import make_optimizer
from nanogpt.training.setup import accumulation
from nanogpt.training.step import Step, train_step

log = logging.getLogger("nanogpt")
GPT2_VOCAB = 50257  # synthetic data without model.vocab_size: GPT-2's vocabulary


@dataclass
class BenchTask(TaskConfig):
    name: str = "bench"
    iters: int = 20  # timed training steps; the median is reported
    warmup: int = 5  # untimed steps first (torch.compile compiles in the first one)
    synthetic: bool = True  # random tokens instead of the dataset (data=...)
    tokens_per_step: Optional[int] = None  # gradient accumulation as in training; None: one micro-batch
    profile: bool = False  # a torch.profiler trace of a few more steps: trace.json in the output dir
    measure_peak: bool = True  # measure the CPU's matmul rate for MFU (GPUs: the data-sheet table)

    def __post_init__(self):
        super().__post_init__()
        at_least("task.iters", self.iters, 1)
        at_least("task.warmup", self.warmup, 0)
        at_least("task.tokens_per_step", self.tokens_per_step, 1)


def bench(cfg, out_dir: Path) -> float:
    t, hw, ocfg = cfg.task, cfg.hardware, cfg.optim
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rt = runtime(hw)

    dataset = None if t.synthetic else open_dataset(cfg.data.name, cfg.data.root, cfg.data.auto_prepare)
    gpt_config = model_args(cfg.model, dataset.vocab_size if dataset else cfg.model.vocab_size or GPT2_VOCAB)
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config).to(rt.device, rt.param_dtype)
    micro, block = hw.micro_batch_size, gpt_config.block_size
    tokens_per_step, accum = accumulation(t.tokens_per_step, micro * block, 1, micro)

    prefetch = None
    if dataset is not None:
        dataset.check_block_size(block)
        prefetch = Prefetcher(Batches(dataset, block, micro, cfg.seed, rt.device), 0, accum)
        get_batch = prefetch.get
    else:  # fixed random batches on the device: the step alone, as nanoGPT's bench.py does
        g = torch.Generator().manual_seed(cfg.seed)
        fixed = [torch.randint(gpt_config.vocab_size, (micro, block + 1), generator=g).to(rt.device)
                 for _ in range(accum)]
        get_batch = lambda it, m: (fixed[m][:, :-1], fixed[m][:, 1:])  # noqa: E731
    # the training loop's own step (less the lr schedule), on the model as training prepares it
    # (compiled, activation checkpointing; one process: no strategy wraps it)
    train_model, _ = parallel.prepare(model, hw, Dist(), rt)
    parts = Step(model, train_model, make_optimizer(model, ocfg, rt.device_type),
                 torch.amp.GradScaler(rt.device_type, enabled=rt.needs_grad_scaler), rt, accum,
                 ocfg.grad_clip, get_batch, NanGuard(rt.device))
    step = functools.partial(train_step, parts)

    dtype = str(rt.dtype).replace("torch.", "")
    print(f"bench: {gpt_config.n_layer} layers x {gpt_config.n_embd} wide, {gpt_config.n_head} heads, "
          f"block {block}, vocab {gpt_config.vocab_size}, {model.num_params(False) / 1e6:.2f}M params | "
          f"{tokens_per_step:,} tokens/iter = {micro} micro x {block} block x {accum} accum | "
          f"{rt.device} {dtype} compile={hw.compile} | {'synthetic' if dataset is None else cfg.data.name} data",
          flush=True)
    if rt.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    losses = []
    try:
        start = time.perf_counter()
        losses.append(step(0))
        rt.synchronize()
        first_step_s = time.perf_counter() - start
        for it in range(1, t.warmup):
            losses.append(step(it))
        times = []
        for it in range(max(t.warmup, 1), max(t.warmup, 1) + t.iters):
            start = time.perf_counter()
            losses.append(step(it))
            rt.synchronize()
            times.append(time.perf_counter() - start)
        if t.profile:
            _profile(step, max(t.warmup, 1) + t.iters, rt, out_dir)
    finally:
        if prefetch is not None:
            prefetch.close()

    peak, peak_source = peak_flops_info(rt) if (t.measure_peak or rt.device_type != "cpu") else (None, "not measured")
    flops_per_token = model.flops_per_token(block)
    ms = statistics.median(times) * 1000
    tokens_per_s = tokens_per_step / (ms / 1000)
    achieved = flops_per_token * tokens_per_s
    result = {
        "ms_per_iter": ms, "ms_per_iter_min": min(times) * 1000, "ms_per_iter_max": max(times) * 1000,
        "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token, "achieved_flops": achieved,
        "peak_flops": peak, "peak_source": peak_source, "mfu": achieved / peak if peak else None,
        "first_step_s": first_step_s, "iters": t.iters, "warmup": t.warmup,
        "tokens_per_iter": tokens_per_step, "micro_batch_size": micro, "block_size": block, "accum": accum,
        "params": model.num_params(False), "device": str(rt.device), "dtype": dtype, "compile": hw.compile,
        "synthetic": dataset is None, "loss_first": losses[0].item(), "loss_last": losses[-1].item(),
        **_memory(rt),
    }
    if rt.device_type == "cpu" and t.measure_peak:  # both rates, to judge bf16 against fp32 here
        result["cpu_matmul_flops"] = {str(d).replace("torch.", ""): measured_cpu_matmul_flops(d)
                                      for d in (torch.float32, torch.bfloat16)}
    _report(result)
    write_json_atomic(out_dir / "bench.json", result)
    log.info("wrote %s", out_dir / "bench.json")
    return tokens_per_s


def _memory(rt) -> dict:
    if rt.device_type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(rt.device), "peak_memory_kind": "cuda allocated"}
    # ru_maxrss is in KiB on Linux: the process's high-water mark, start-up included
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process RSS"}


def _report(r: dict) -> None:
    print(f"first step {r['first_step_s']:.2f} s (includes compilation when compile=True)")
    if r.get("cpu_matmul_flops"):
        rates = ", ".join(f"{d} {f / 1e9:,.0f}" for d, f in r["cpu_matmul_flops"].items())
        print(f"CPU matmul rate measured here (GFLOP/s): {rates}")
    print(f"peak for MFU: {r['peak_flops'] / 1e12:,.3f} TFLOP/s ({r['peak_source']})" if r["peak_flops"]
          else f"peak for MFU: unknown ({r['peak_source']})")
    mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"median {r['ms_per_iter']:.1f} ms/iter (min {r['ms_per_iter_min']:.1f}, max "
          f"{r['ms_per_iter_max']:.1f}, {r['iters']} iters) | {r['tokens_per_s']:,.0f} tokens/s | "
          f"{r['achieved_flops'] / 1e12:,.3f} TFLOP/s achieved ({r['flops_per_token']:,} FLOPs/token) | "
          f"MFU {mfu} | peak memory {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_kind']}) | "
          f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}", flush=True)


def _profile(step, start_it: int, rt, out_dir: Path, steps: int = 5) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device_type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for it in range(start_it, start_it + steps):
            step(it)
        rt.synchronize()
    trace = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace))
    key = "self_cuda_time_total" if rt.device_type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    print(f"profiler trace of {steps} steps: {trace} (open in chrome://tracing or ui.perfetto.dev)")


def run(cfg, run_dir: Path, dist) -> float:
    """task=bench: tokens/s."""
    return bench(cfg, run_dir)
