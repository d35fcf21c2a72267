"""How much memory one GPU needs to train a model: parameters, gradients, optimizer state and
activations, for DDP and FSDP, with and without activation checkpointing, and whether it fits.

    python launch.py task=plan model=gpt2_1558m hardware=gpu_node task.gpu_memory_gb=40

Every figure is counted, not guessed: parameters from the model built on the meta device (no
memory), activations from the tensors autograd saves for the backward pass, listed op by op
below for this model's block (tests/test_plan.py checks the list against what autograd really
saves, and bench/memory_plan.py checks whole steps against memory measured on the CPU).

Per GPU, N parameters, W ranks, B x T tokens per micro-batch, bf16 autocast:
    DDP   fp32 weights 4N, their bf16 copies for the matmuls 2N (autocast keeps them for the
          backward), fp32 gradients 4N, DDP's gradient buckets 4N, AdamW's two moments 8N
    FSDP  the same 16N divided by W (weights 4N/W, gradients 4N/W, AdamW 8N/W), plus what is
          whole at a time: the root (embeddings, final norm) and two blocks (the one computing, the
          one prefetched) in bf16, and their gradients; with gradient accumulation (the default
          `hardware.fsdp_accumulation=unsharded`), whole fp32 gradients 4N between micro-batches
          (one reduce-scatter per step instead of one per micro-batch), and at the end of each
          backward the weights it gathered, all of them in bf16 (2N)
    activations (both) B x T x (n_layer x per-layer + the loss over the vocabulary)
Beyond that, a fixed allowance for the CUDA context, NCCL buffers and kernels' workspace
(RUNTIME_GB), and allocator fragmentation (FRAGMENTATION): a plan "fits" with both counted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt.fsdp import ACTIVATION_CHECKPOINTING
from nanogpt.model import GPT, GPTConfig

log = logging.getLogger("nanogpt")

STRATEGIES = ("ddp", "fsdp")
CHECKPOINTING = ACTIVATION_CHECKPOINTING
RUNTIME_GB = 1.5  # CUDA context (~0.5 GB), NCCL buffers, cuBLAS / flash-attention workspace
FRAGMENTATION = 1.10  # the caching allocator's blocks are never a perfect fit
GB = 1e9


@dataclass(frozen=True)
class Setup:
    """One way of training: the model and batch, and how it is spread over the GPUs."""
    config: GPTConfig
    micro_batch_size: int
    world_size: int = 1
    strategy: str = "ddp"
    activation_checkpointing: str = "none"
    dtype: str = "bfloat16"  # the autocast dtype: bfloat16 | float32 (CPU checks: float32)
    accumulation: bool = True  # more than one micro-batch per optimizer step
    fsdp_accumulation: str = "unsharded"  # unsharded | sharded (see nanogpt.fsdp.accumulating)
    optimizer_bytes_per_param: int = 8  # AdamW: two fp32 moments

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.config.block_size


@dataclass(frozen=True)
class Counts:
    """Parameter counts of a model, from a copy on the meta device."""
    total: int  # every parameter once (the tied embedding / LM head once)
    per_block: int
    root: int  # outside the blocks: embeddings, final LayerNorm (the LM head is the embedding)
    matmul: int  # weights autocast casts to bf16: every Linear's, the LM head's once

    @classmethod
    def of(cls, config: GPTConfig) -> "Counts":
        with torch.device("meta"):
            model = GPT(dataclasses.replace(config, dropout=0.0))
        total = sum(p.numel() for p in model.parameters())
        per_block = sum(p.numel() for p in model.transformer.h[0].parameters())
        linears = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
        return cls(total, per_block, total - config.n_layer * per_block, sum(linears.values()))


# ---- activations: what autograd keeps for the backward pass, per token

def layer_saved(config: GPTConfig, dtype: str, mode: str) -> float:
    """Bytes one block keeps per token until its backward (the list is the block's forward).
    a: the activations' bytes (2 in bf16 autocast); LayerNorm runs in fp32 under autocast and in
    fp32 otherwise, so its saved input is 4 bytes; p: dropout masks (1 byte) when dropout > 0."""
    C, H = config.n_embd, config.n_head
    a = 2 if dtype == "bfloat16" else 4
    mask = C if config.dropout > 0 else 0
    if mode == "block":  # only the block's input (the residual stream: fp32 under autocast)
        return 4 * C
    matmul_outputs = (a * 3 * C  # c_attn: q, k, v (attention saves them: views of one tensor)
                      + a * C + 4 * H  # attention's output and its log-sum-exp (fp32, per head)
                      + a * C  # attn.c_proj's output
                      + a * 4 * C  # mlp.c_fc's output (GELU's input)
                      + a * C)  # mlp.c_proj's output
    if mode == "selective":  # the matmuls' outputs, and the block's input to recompute from
        return matmul_outputs + 4 * C
    return (4 * C  # ln_1's input
            + a * C  # c_attn's input (ln_1's output, cast)
            + a * 3 * C + 4 * H  # q, k, v; attention's log-sum-exp
            + a * C + mask  # attention's output, which is also attn.c_proj's input (the heads
            #                 side by side are its transpose: the same memory); dropout's mask
            + 4 * C  # ln_2's input
            + a * C  # mlp.c_fc's input
            + a * 4 * C  # GELU's input
            + a * 4 * C + mask)  # mlp.c_proj's input (GELU's output); its dropout's mask


def head_saved(config: GPTConfig, dtype: str) -> float:
    """Bytes per token kept by what follows the blocks: ln_f's input, the LM head's input, and
    the log-softmax over the vocabulary that cross-entropy keeps (fp32: the loss is in fp32)."""
    a = 2 if dtype == "bfloat16" else 4
    mask = config.n_embd if config.dropout > 0 else 0  # the embedding dropout's
    return 4 * config.n_embd + a * config.n_embd + 4 * config.vocab_size + mask


def head_transient(config: GPTConfig, dtype: str) -> float:
    """Bytes per token alive only around the loss: the logits (and their fp32 copy under
    autocast) in the forward, and the gradient of the log-softmax's input and output in the
    backward, whichever is more."""
    a = 2 if dtype == "bfloat16" else 4
    forward = a * config.vocab_size + (4 * config.vocab_size if a != 4 else 0)
    backward = 8 * config.vocab_size
    return max(forward, backward)


def activations(s: Setup) -> dict[str, float]:
    """Bytes of activations at the peak (the start of the backward pass): what every layer
    keeps, plus what exists only then: the loss's transient tensors, and under checkpointing one
    block's recomputed activations (all of them, or those selective checkpointing did not keep)."""
    cfg, mode = s.config, s.activation_checkpointing
    stored = s.tokens * (cfg.n_layer * layer_saved(cfg, s.dtype, mode) + head_saved(cfg, s.dtype))
    recompute = 0.0
    if mode != "none":  # one block's recomputed activations, and its backward's largest gradients
        a = 2 if s.dtype == "bfloat16" else 4
        recompute = s.tokens * (layer_saved(cfg, s.dtype, "none") - layer_saved(cfg, s.dtype, mode)
                                + a * 4 * cfg.n_embd)
    transient = s.tokens * head_transient(cfg, s.dtype)
    return {"stored": stored, "transient": max(transient, recompute)}


# ---- the whole per-GPU plan

def plan(s: Setup) -> dict[str, float]:
    """Bytes per GPU, by component; `total` with the runtime allowance and fragmentation."""
    n = Counts.of(s.config)
    a = 2 if s.dtype == "bfloat16" else 4  # whole (gathered or autocast-cast) weights' bytes
    W = s.world_size
    late = None
    if s.strategy == "ddp":
        # autocast's bf16 copies of the weights live from the forward to the backward; under
        # checkpointing only a block's at a time (and the LM head's)
        copies = 0
        if a == 2:
            copies = 2 * (n.matmul if s.activation_checkpointing == "none"
                          else n.matmul - s.config.n_layer * n.per_block + n.per_block)
        params = 4 * n.total + copies
        grads = 4 * n.total + (4 * n.total if W > 1 else 0)  # .grad, and DDP's buckets
        optim = s.optimizer_bytes_per_param * n.total
    elif s.strategy == "fsdp":
        gathered = a * (n.root + 2 * n.per_block)  # whole now: the root, a block and the next one
        # their gradients (and an fp32 copy to reduce when computed in bf16)
        grads_whole = (a + (4 if a != 4 else 0)) * (n.root + 2 * n.per_block)
        if s.accumulation and s.fsdp_accumulation == "unsharded":
            grads_whole = 4 * n.total  # whole fp32 gradients accumulate until the step's last micro-batch
            # and the weights a backward gathered stay whole until the next forward reshards them:
            # all of them at the end of a backward, when the activations are gone
            late = 4 * n.total / W + a * n.total
        params = 4 * n.total / W + gathered
        grads = 4 * n.total / W + grads_whole
        optim = s.optimizer_bytes_per_param * n.total / W
    else:
        raise ValueError(f"unknown strategy {s.strategy!r}")
    act = activations(s)
    out = {"parameters": params, "gradients": grads, "optimizer": optim,
           "activations": act["stored"] + act["transient"]}
    if s.accumulation:  # the previous micro-batches' gradients are there during the forward
        out["peak"] = params + grads + optim + out["activations"]
        if late is not None:  # or the end of a backward, every weight gathered
            out["peak"] = max(out["peak"], late + grads + optim)
    else:  # gradients appear as the backward frees activations: the larger of the two
        kept = 4 * n.total if s.strategy == "ddp" and W > 1 else 0  # DDP's buckets stay
        out["peak"] = params + optim + kept + max(out["activations"], grads - kept)
    out["total"] = out["peak"] * FRAGMENTATION + RUNTIME_GB * GB
    return out


def variants(world_size: int, accumulation: bool) -> list[tuple[str, str]]:
    """(strategy, fsdp_accumulation) pairs worth comparing: on one GPU there is nothing to shard
    (hardware.strategy=fsdp trains unsharded there), and without accumulation FSDP's two ways
    of accumulating are the same."""
    if world_size == 1:
        return [("ddp", "unsharded")]
    fsdp = [("fsdp", "unsharded"), ("fsdp", "sharded")] if accumulation else [("fsdp", "unsharded")]
    return [("ddp", "unsharded"), *fsdp]


def grid(config: GPTConfig, micro_batch_size: int, world_size: int, dtype: str = "bfloat16",
         accumulation: bool = True) -> list[tuple[Setup, dict]]:
    """Every strategy x activation checkpointing for one model and batch."""
    out = []
    for strategy, fsdp_accumulation in variants(world_size, accumulation):
        for mode in CHECKPOINTING:
            s = Setup(config, micro_batch_size, world_size, strategy, mode, dtype, accumulation,
                      fsdp_accumulation)
            out.append((s, plan(s)))
    return out


def label(s: Setup) -> str:
    if s.world_size == 1:
        return "one GPU"
    if s.strategy == "fsdp" and s.accumulation and s.fsdp_accumulation == "sharded":
        return "fsdp/sharded"  # hardware.fsdp_accumulation=sharded
    return s.strategy


def format_table(rows: list[tuple[Setup, dict]], gpu_memory_gb: float) -> str:
    head = (f"{'strategy':<12} {'act. ckpt':<10} {'params':>8} {'grads':>8} {'optim':>8} "
            f"{'activ.':>8} {'total':>8}  fits {gpu_memory_gb:g} GB")
    lines = [head, "-" * len(head)]
    for s, p in rows:
        gb = {k: v / GB for k, v in p.items()}
        fits = "yes" if p["total"] <= gpu_memory_gb * GB else "no"
        lines.append(f"{label(s):<12} {s.activation_checkpointing:<10} {gb['parameters']:>8.2f} "
                     f"{gb['gradients']:>8.2f} {gb['optimizer']:>8.2f} {gb['activations']:>8.2f} "
                     f"{gb['total']:>8.2f}  {fits}")
    if any(label(s) == "fsdp/sharded" for s, _ in rows):
        lines.append("fsdp/sharded: hardware.fsdp_accumulation=sharded (a reduce-scatter per "
                     "micro-batch instead of whole gradients until the step's last)")
    return "\n".join(lines)


# ---- task=plan

def run(cfg, out_dir: Path, dist=None) -> float:
    """Print the plan for the configured model, batch and GPUs; write plan.json. Returns the
    smallest total (GB) that fits, or the smallest total when none does."""
    from nanogpt.build import model_args

    t, hw = cfg.task, cfg.hardware
    world = t.gpus or hw.gpus_per_node or 1
    micro = hw.micro_batch_size
    dtype = "float32" if hw.dtype == "float32" else "bfloat16"  # auto: bf16, as on a GPU
    config = model_args(cfg.model, cfg.model.vocab_size or t.vocab_size)
    rows = grid(config, micro, world, dtype, t.accumulation)
    n = Counts.of(config)
    print(f"plan: {n.total / 1e6:.0f}M parameters ({config.n_layer} layers x {config.n_embd}, vocab "
          f"{config.vocab_size}) | micro-batch {micro} x {config.block_size} tokens | {world} GPU(s), "
          f"{dtype} autocast{', gradient accumulation' if t.accumulation else ''} | "
          f"GB per GPU; the total adds {RUNTIME_GB:g} GB runtime and "
          f"{(FRAGMENTATION - 1) * 100:.0f}% fragmentation", flush=True)
    print(format_table(rows, t.gpu_memory_gb), flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"params": n.total, "world_size": world, "micro_batch_size": micro,
              "block_size": config.block_size, "dtype": dtype, "gpu_memory_gb": t.gpu_memory_gb,
              "rows": [{"strategy": s.strategy, "fsdp_accumulation": s.fsdp_accumulation,
                        "activation_checkpointing": s.activation_checkpointing,
                        **{k: v / GB for k, v in p.items()},
                        "fits": p["total"] <= t.gpu_memory_gb * GB} for s, p in rows]}
    (out_dir / "plan.json").write_text(json.dumps(record, indent=1))
    fitting = [p["total"] for _, p in rows if p["total"] <= t.gpu_memory_gb * GB]
    return min(fitting or [p["total"] for _, p in rows]) / GB
