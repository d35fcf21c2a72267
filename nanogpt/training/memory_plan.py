"""How much memory one GPU needs to train a model: parameters, gradients, optimizer state and
activations, for DDP and FSDP, with and without activation checkpointing, and whether it fits.

    python launch.py task=plan model=gpt2_1558m hardware=gpu_node task.gpu_memory_gb=40

Every figure is counted, not guessed: parameters from the model built on the meta device (no
memory), activations from the tensors autograd saves for the backward pass, counted below for
this model's block, its options included (widths from the block's Linear layers, what a norm,
the MLP's activation, QK-norm, rotary positions and the soft-cap keep from tables by choice).
tests/test_plan.py checks the count against the tensors autograd really keeps on the CPU for
every choice of every model option, and bench/memory_plan.py checks whole steps against memory
measured on the CPU. The plan is for CUDA's kernels; where they keep other tensors than the
CPU's (see `Kernels`), those terms come from torch's CUDA autocast lists, not from a measurement.

Per GPU, N parameters, W ranks, B x T tokens per micro-batch, bf16 autocast:
    DDP   fp32 weights 4N, their bf16 copies for the matmuls 2N (autocast keeps them for the
          backward), fp32 gradients 4N, DDP's gradient buckets 4N, AdamW's two moments 8N
          (optim=muon: one momentum 4H for the H parameters of the hidden matrices, AdamW's 8(N-H)
          for the rest)
    FSDP  the same 16N divided by W (weights 4N/W, gradients 4N/W, AdamW 8N/W), plus what is
          whole at a time: the root (embeddings, final norm) and two blocks (the one computing, the
          one prefetched) in bf16, and their gradients; with gradient accumulation (the default
          `hardware.fsdp_accumulation=unsharded`), whole fp32 gradients 4N between micro-batches
          (one reduce-scatter per step instead of one per micro-batch), and at the end of each
          backward the weights it gathered, all of them in bf16 (2N); optim=muon's step gathers
          each hidden matrix's update whole on its owner rank (owners balanced by cost: about H/W
          in bf16 per rank) and receives its rows back (2H/W), when the activations are gone
    activations (both) B x T x (n_layer x per-layer + the head: final norm, soft-cap and loss)
Beyond that, a fixed allowance for the CUDA context, NCCL buffers and kernels' workspace
(RUNTIME_GB), and allocator fragmentation (FRAGMENTATION): a plan "fits" with both counted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nanogpt.config import TaskConfig, above, at_least, model_args
from nanogpt.model import GPT, Block, GPTConfig, ReLUSquared, RMSNorm
from nanogpt.runtime.fsdp import ACTIVATION_CHECKPOINTING
from nanogpt.training.optim import muon_split

log = logging.getLogger("nanogpt")

STRATEGIES = ("ddp", "fsdp")
CHECKPOINTING = ACTIVATION_CHECKPOINTING
RUNTIME_GB = 1.5  # CUDA context (~0.5 GB), NCCL buffers, cuBLAS / flash-attention workspace
FRAGMENTATION = 1.10  # the caching allocator's blocks are never a perfect fit
GB = 1e9


@dataclass
class PlanTask(TaskConfig):
    """Memory per GPU for the model= and hardware= chosen (micro-batch, dtype, GPUs per node)."""
    name: str = "plan"
    gpu_memory_gb: float = 80.0  # one GPU's memory: does the plan fit?
    gpus: Optional[int] = None  # ranks training together; None: hardware.gpus_per_node, else 1
    accumulation: bool = True  # several micro-batches per step: gradients live through the forward
    vocab_size: int = 50304  # when model.vocab_size is unset (training takes it from the data)

    def __post_init__(self):
        super().__post_init__()
        above("task.gpu_memory_gb", self.gpu_memory_gb, 0)
        at_least("task.gpus", self.gpus, 1)
        at_least("task.vocab_size", self.vocab_size, 1)


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
    fsdp_accumulation: str = "unsharded"  # unsharded | sharded (see nanogpt.runtime.fsdp.accumulating)
    optimizer: str = "adamw"  # adamw: two fp32 moments | muon: one on the hidden matrices, AdamW's on the rest
    device: str = "cuda"  # whose kernels: cuda (the plan's GPUs) | cpu (checks against the CPU)

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
    muon: int  # the hidden matrices optim=muon takes (nanogpt.training.optim.muon_split)

    @classmethod
    def of(cls, config: GPTConfig) -> "Counts":
        with torch.device("meta"):
            model = GPT(dataclasses.replace(config, dropout=0.0))
        total = sum(p.numel() for p in model.parameters())
        per_block = sum(p.numel() for p in model.transformer.h[0].parameters())
        linears = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
        muon = sum(p.numel() for p in muon_split(model)[2])
        return cls(total, per_block, total - config.n_layer * per_block, sum(linears.values()), muon)


# ---- activations: what autograd keeps for the backward pass, per token
#
# Counted from the model itself where its shapes say it (the widths of the block's Linear layers,
# built on the meta device: mlp_ratio needs nothing here), and from one table per kind of module
# where a choice of the model changes what autograd keeps (NORM_SAVES, ACTIVATION_SAVES, and the
# QK-norm / rotary / soft-cap terms below). tests/test_plan.py measures every choice of every
# GPTConfig field against what the CPU keeps, so an option the plan does not count fails there.

@dataclass(frozen=True)
class Kernels:
    """How a training forward's ops run, which decides what autograd keeps and in which dtype.
    `act`: bytes of a matmul's output element (2 under bf16 autocast, 4 in fp32). `cuda`: the GPUs
    the plan is for; False: the CPU's kernels, for the checks against what the CPU keeps. Where
    torch 2.13's CUDA and CPU differ here: CUDA's autocast runs pow (ReLU²'s square) and rms_norm
    (QK-norm) in fp32, the CPU's does not; rms_norm is one fused kernel on CUDA (it keeps its input
    and 1/rms), a composite of ops on the CPU (which also keeps the normalised input); dropout's
    mask is a bool on CUDA (a fused kernel), on the CPU a tensor of its input's dtype."""
    act: int
    cuda: bool

    @classmethod
    def of(cls, dtype: str, device: str = "cuda") -> "Kernels":
        return cls(2 if dtype == "bfloat16" else 4, device == "cuda")

    @property
    def autocast_fp32(self) -> int:
        """Bytes per element of pow's or rms_norm's output from an activation."""
        return 4 if self.cuda else self.act

    def dropout_mask(self, input_bytes: int) -> int:
        """Bytes per element of the mask dropout keeps, for an input of `input_bytes` per element."""
        return 1 if self.cuda else input_bytes


@dataclass(frozen=True)
class Anatomy:
    """What the count reads of the model: one block built on the meta device (widths from its
    Linear layers, the classes of its norm and MLP activation) and the options its forward reads."""
    embd: int  # the residual stream
    heads: int
    linear_inputs: int  # the widths of the block's Linear layers' inputs, summed
    linear_outputs: int  # and of their outputs
    qkv: int  # c_attn's output: queries, keys and values
    hidden: int  # the MLP's hidden width (mlp.c_fc's output)
    vocab: int  # the LM head's output
    norm: type
    activation: type
    qk_norm: bool
    rope: bool
    softcap: bool
    dropout: bool

    @classmethod
    def of(cls, config: GPTConfig) -> "Anatomy":
        with torch.device("meta"):
            block = Block(config, 0)
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        return cls(config.n_embd, config.n_head, sum(m.in_features for m in linears),
                   sum(m.out_features for m in linears), block.attn.c_attn.out_features,
                   block.mlp.c_fc.out_features, config.vocab_size, type(block.ln_1), type(block.mlp.act),
                   block.attn.qk_norm, config.pos_emb == "rope", config.logit_softcap is not None,
                   config.dropout > 0)


# what a norm of the fp32 residual stream (ln_1, ln_2, ln_f) keeps, by the class of the model's norm

def layernorm_saves(m: Anatomy, k: Kernels) -> float:
    return 4 * m.embd + 8  # its input; mean and 1/std


def rmsnorm_saves(m: Anatomy, k: Kernels) -> float:
    normalised = 0 if k.cuda else 4 * m.embd  # the CPU's composite keeps x / rms for the gain
    return 4 * m.embd + 4 + normalised  # its input; 1/rms


NORM_SAVES = {torch.nn.LayerNorm: layernorm_saves, RMSNorm: rmsnorm_saves}


# what the MLP's activation keeps beyond its output (mlp.c_proj's input), by its class

def gelu_saves(m: Anatomy, k: Kernels) -> float:
    return k.act * m.hidden  # its input


def relu2_saves(m: Anatomy, k: Kernels) -> float:
    """relu keeps its output, and square keeps the same tensor, or under CUDA's autocast (pow in
    fp32) an fp32 copy of it."""
    fp32_copy = 4 * m.hidden if k.autocast_fp32 != k.act else 0
    return k.act * m.hidden + fp32_copy


ACTIVATION_SAVES = {torch.nn.GELU: gelu_saves, ReLUSquared: relu2_saves}


def lookup_saves(table: dict, cls: type, name: str):
    if cls not in table:
        raise NotImplementedError(f"the memory plan does not know what {cls.__name__} keeps for the "
                                  f"backward pass: add it to nanogpt/training/memory_plan.py's {name}")
    return table[cls]


def norm_saves(m: Anatomy, k: Kernels) -> float:
    return lookup_saves(NORM_SAVES, m.norm, "NORM_SAVES")(m, k)


def activation_saves(m: Anatomy, k: Kernels) -> float:
    return lookup_saves(ACTIVATION_SAVES, m.activation, "ACTIVATION_SAVES")(m, k)


def qk_norm_saves(m: Anatomy, k: Kernels) -> float:
    """rms_norm of the queries and keys keeps its input in fp32 (a copy under bf16 autocast: CUDA's
    autocast casts it, the CPU's composite upcasts it) and 1/rms per head; the gains' product keeps
    the normalised queries and keys (fp32 under CUDA's autocast)."""
    qk = 2 * m.embd
    fp32_input = 4 * qk if k.act != 4 else 0
    return fp32_input + 4 * 2 * m.heads + k.autocast_fp32 * qk


def attention_saves(m: Anatomy, k: Kernels) -> float:
    """c_attn's output (q, k and v are views of it: attention keeps them all); with QK-norm or
    rotary positions, the new queries and keys attention keeps (in the autocast dtype) and what
    QK-norm keeps; attention's log-sum-exp (fp32, per head). Its output is attn.c_proj's input,
    counted with the Linear layers' inputs. (Rotary's cos and sin are per position, not per token.)"""
    kept = k.act * m.qkv + 4 * m.heads
    if m.qk_norm or m.rope:
        kept += k.act * 2 * m.embd
    if m.qk_norm:
        kept += qk_norm_saves(m, k)
    return kept


def layer_saved(config: GPTConfig, dtype: str, mode: str, device: str = "cuda") -> float:
    """Bytes one block keeps per token until its backward. `block` checkpointing keeps its input
    (the fp32 residual stream); `selective` also the outputs of its matmuls and attention."""
    m, k = Anatomy.of(config), Kernels.of(dtype, device)
    block_input = 4 * m.embd
    if mode == "block":
        return block_input
    if mode == "selective":  # and its Linear layers' outputs, attention's output and log-sum-exp
        return block_input + k.act * (m.linear_outputs + m.embd) + 4 * m.heads
    masks = 2 * m.embd * k.dropout_mask(k.act) if m.dropout else 0  # attn's and the MLP's residual dropout
    return (2 * norm_saves(m, k)  # ln_1, ln_2 (their inputs: the block's, and the residual)
            + k.act * m.linear_inputs  # every Linear keeps its input (a norm's output, attention's,
            #                            the activation's), cast to the autocast dtype
            + attention_saves(m, k) + activation_saves(m, k) + masks)


def head_saved(config: GPTConfig, dtype: str, device: str = "cuda") -> float:
    """Bytes per token kept outside the blocks: ln_f, the LM head's input, the soft-cap's tanh
    output, the log-softmax over the vocabulary that cross-entropy keeps (the loss and the
    soft-cap run in fp32), and the embedding dropout's mask."""
    m, k = Anatomy.of(config), Kernels.of(dtype, device)
    softcap = 4 * m.vocab if m.softcap else 0
    mask = m.embd * k.dropout_mask(4) if m.dropout else 0  # the embedding dropout's (fp32 input)
    return norm_saves(m, k) + k.act * m.embd + softcap + 4 * m.vocab + mask


def head_transient(config: GPTConfig, dtype: str) -> float:
    """Bytes per token alive only around the loss: in the forward, the logits, their fp32 copy
    under autocast and the soft-capped logits; in the backward, the gradient of the log-softmax's
    input and output; whichever is more."""
    a = Kernels.of(dtype).act
    V = config.vocab_size
    forward = a * V + (4 * V if a != 4 else 0) + (4 * V if config.logit_softcap is not None else 0)
    return max(forward, 8 * V)


def activations(s: Setup) -> dict[str, float]:
    """Bytes of activations at the peak: what every layer and the head keep (`stored`), plus what
    exists only for a while (`transient`): the loss's tensors at the turn from the forward to the
    backward, or under checkpointing, one block's recomputed activations (all of them, or those
    selective checkpointing did not keep) and its backward's largest gradients, which come after
    the head's backward has freed what the head kept."""
    cfg, mode = s.config, s.activation_checkpointing
    layer = layer_saved(cfg, s.dtype, mode, s.device)
    head = head_saved(cfg, s.dtype, s.device)
    transient = head_transient(cfg, s.dtype)
    if mode != "none":
        recomputed = layer_saved(cfg, s.dtype, "none", s.device) - layer
        gradients = Kernels.of(s.dtype).act * Anatomy.of(cfg).hidden
        transient = max(transient, recomputed + gradients - head)
    return {"stored": s.tokens * (cfg.n_layer * layer + head), "transient": s.tokens * transient}


# ---- the whole per-GPU plan

def optimizer_bytes(optimizer: str, n: Counts) -> int:
    """The optimizer's state for the whole model: AdamW's two fp32 moments per parameter; Muon's
    one fp32 momentum per hidden-matrix parameter, AdamW's two on the rest."""
    if optimizer == "adamw":
        return 8 * n.total
    if optimizer == "muon":
        return 4 * n.muon + 8 * (n.total - n.muon)
    raise ValueError(f"unknown optimizer {optimizer!r}: adamw | muon")


def plan(s: Setup) -> dict[str, float]:
    """Bytes per GPU, by component; `total` with the runtime allowance and fragmentation."""
    n = Counts.of(s.config)
    a = 2 if s.dtype == "bfloat16" else 4  # whole (gathered or autocast-cast) weights' bytes
    W = s.world_size
    late = None
    step = 0.0  # what the optimizer's step holds beyond its state
    if s.strategy == "ddp":
        # autocast's bf16 copies of the weights live from the forward to the backward; under
        # checkpointing only a block's at a time (and the LM head's)
        copies = 0
        if a == 2:
            copies = 2 * (n.matmul if s.activation_checkpointing == "none"
                          else n.matmul - s.config.n_layer * n.per_block + n.per_block)
        params = 4 * n.total + copies
        grads = 4 * n.total + (4 * n.total if W > 1 else 0)  # .grad, and DDP's buckets
        optim = optimizer_bytes(s.optimizer, n)
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
        optim = optimizer_bytes(s.optimizer, n) / W
        if s.optimizer == "muon" and W > 1:  # the step's whole matrices on their owners, then their rows
            step = 4 * n.muon / W
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
    out["peak"] = max(out["peak"], params + grads + optim + step)  # the step: activations gone
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
         accumulation: bool = True, optimizer: str = "adamw") -> list[tuple[Setup, dict]]:
    """Every strategy x activation checkpointing for one model and batch."""
    out = []
    for strategy, fsdp_accumulation in variants(world_size, accumulation):
        for mode in CHECKPOINTING:
            s = Setup(config, micro_batch_size, world_size, strategy, mode, dtype, accumulation,
                      fsdp_accumulation, optimizer)
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
    t, hw = cfg.task, cfg.hardware
    world = t.gpus or hw.gpus_per_node or 1
    micro = hw.micro_batch_size
    dtype = "float32" if hw.dtype == "float32" else "bfloat16"  # auto: bf16, as on a GPU
    config = model_args(cfg.model, cfg.model.vocab_size or t.vocab_size)
    rows = grid(config, micro, world, dtype, t.accumulation, cfg.optim.name)
    n = Counts.of(config)
    print(f"plan: {n.total / 1e6:.0f}M parameters ({config.n_layer} layers x {config.n_embd}, vocab "
          f"{config.vocab_size}) | micro-batch {micro} x {config.block_size} tokens | {world} GPU(s), "
          f"{dtype} autocast{', gradient accumulation' if t.accumulation else ''} | optim={cfg.optim.name} | "
          f"GB per GPU; the total adds {RUNTIME_GB:g} GB runtime and "
          f"{(FRAGMENTATION - 1) * 100:.0f}% fragmentation", flush=True)
    print(format_table(rows, t.gpu_memory_gb), flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"params": n.total, "optimizer": cfg.optim.name, "world_size": world, "micro_batch_size": micro,
              "block_size": config.block_size, "dtype": dtype, "gpu_memory_gb": t.gpu_memory_gb,
              "rows": [{"strategy": s.strategy, "fsdp_accumulation": s.fsdp_accumulation,
                        "activation_checkpointing": s.activation_checkpointing,
                        **{k: v / GB for k, v in p.items()},
                        "fits": p["total"] <= t.gpu_memory_gb * GB} for s, p in rows]}
    (out_dir / "plan.json").write_text(json.dumps(record, indent=1))
    fitting = [p["total"] for _, p in rows if p["total"] <= t.gpu_memory_gb * GB]
    return min(fitting or [p["total"] for _, p in rows]) / GB
