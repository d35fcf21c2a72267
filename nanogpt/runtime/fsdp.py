"""Fully sharded data parallel (FSDP2) and activation checkpointing: PyTorch's own machinery.

DDP keeps the whole model, its gradients and AdamW's two moments on every rank: 16 bytes per
parameter before a single activation (GPT-2 XL, 1.56B parameters: ~25 GB). FSDP2
(`torch.distributed.fsdp.fully_shard`) keeps 1/world of each on every rank: a block's parameters
are all-gathered just before its forward (and again before its backward), its gradients
reduce-scattered right after, so only one or two blocks are ever whole at a time.

    shard(model, ...)                  per transformer block, then the root (embeddings, final norm, head)
    accumulating(model, sync)          gradient accumulation: no reduce-scatter until the last micro-batch
    clip_grad_norm_(params, max_norm)  the global norm over sharded gradients, a plain tensor
    gather_whole / scatter_rows        a matrix whole on one owner rank and its rows back (Muon)
    apply_activation_checkpointing     recompute blocks (or their cheap ops) in the backward pass
    compile_blocks                     torch.compile each block, as FSDP2 expects (GPUs)

Precision: on GPUs with bf16, parameters are all-gathered and used in bf16 and gradients are
reduced in fp32 (MixedPrecisionPolicy); the sharded master weights and AdamW's state stay fp32.
On the CPU everything stays in the weights' own dtype (fp32, or float64 for checks).
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager

import torch
from torch import nn

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt")
# hardware.activation_checkpointing: what each block keeps for its backward pass
ACTIVATION_CHECKPOINTING = ("none", "block", "selective")


# ---- activation checkpointing (any strategy, one process included)

def _selective_policy(save_ops):
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save_ops else CheckpointPolicy.PREFER_RECOMPUTE
    return policy


def _matmul_ops() -> set:
    """The ops whose outputs selective checkpointing keeps: matmuls and attention, the expensive
    FLOPs of a block. Norms, GELU, dropout and residual adds (cheap, but together about half of a
    block's activation memory) are recomputed in the backward pass."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu")
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Wrap each transformer block so that the backward pass recomputes what its forward did not
    keep: `block` keeps only the block's input (one (B, T, C) tensor per block), `selective` also
    keeps the outputs of its matmuls and attention and recomputes the rest. The losses and
    gradients are the same as without (dropout masks are replayed from the saved RNG state).
    The wrapper's own prefix never reaches a state dict: checkpoints are unchanged."""
    if mode not in ACTIVATION_CHECKPOINTING:
        raise UserError(f"unknown hardware.activation_checkpointing={mode!r}: use "
                        f"{', '.join(ACTIVATION_CHECKPOINTING)}")
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper,
    )

    kwargs = {"preserve_rng_state": True}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts,
                                                 _selective_policy(_matmul_ops()))
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, **kwargs)  # non-reentrant


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block on its own (static shapes): FSDP2's hooks sit
    between blocks, where a whole-model graph would break anyway."""
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        blocks[i] = torch.compile(block, dynamic=False)


# ---- sharding

def mixed_precision(device_type: str, autocast_dtype: torch.dtype):
    """bf16 compute with fp32 reduction on GPUs; no casts on the CPU (fp32, or float64 checks)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device_type == "cuda" and autocast_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


FLOAT16_REFUSAL = ("hardware.strategy=fsdp with hardware.dtype=float16 is not supported: float16 "
                   "needs a GradScaler, which this project only runs with DDP. Use "
                   "hardware.dtype=bfloat16 (A100, H100 and later) or float32, or hardware.strategy=ddp")


def check_supported(device_type: str, autocast_dtype: torch.dtype) -> None:
    """What FSDP here refuses (hardware.dtype=auto may choose float16 on an older GPU)."""
    if autocast_dtype == torch.float16:
        raise UserError(FLOAT16_REFUSAL)


def shard(model: nn.Module, device_type: str, autocast_dtype: torch.dtype,
          reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard every transformer block, then the root (which takes the rest: the embeddings,
    the final LayerNorm and the LM head tied to the token embedding). In place: the model's
    parameters become DTensors holding this rank's rows; `model` is returned for symmetry with
    DDP. Needs the default process group (all ranks of the job)."""
    from torch.distributed.fsdp import fully_shard

    check_supported(device_type, autocast_dtype)
    mp = mixed_precision(device_type, autocast_dtype)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root's parameters are used last in the forward: keeping them whole for the backward
    # saves one all-gather and costs little (embeddings are ~2% of the model at 1.5B)
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def accumulating(model: nn.Module, sync: bool):
    """One micro-batch's forward and backward. Before the last micro-batch of a step (`sync`
    false) FSDP2 neither reduce-scatters the gradients (they accumulate unsharded, as DDP's
    no_sync) nor reshards the parameters after the backward (the next micro-batch's forward
    would only gather them again); the last one does both."""
    model.set_requires_gradient_sync(sync)
    model.set_reshard_after_backward(sync)
    yield


# ---- sharded tensors: norms, finiteness, sizes

def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (the tensor itself when it is not a DTensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from every rank when it is a DTensor (a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, which on sharded (DTensor) gradients computes the norm of the
    whole gradient (local sums of squares, all-reduced); returned as a plain tensor, the same
    on every rank, for the NaN guard and the logs."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return full(norm)


def all_finite(parameters) -> bool:
    """Are this rank's parameters (its shards, under FSDP) all finite? Ranks must agree
    afterwards (distributed.any_rank), as every rank holds a different part."""
    flags = [torch.isfinite(local(p)).all() for p in parameters]
    return bool(torch.stack(flags).all()) if flags else True


def local_numel(tensors) -> int:
    """Elements this rank holds: a shard's under FSDP, the whole tensor's otherwise."""
    return sum(local(t).numel() for t in tensors)


# ---- whole matrices on one rank, and their rows back (Muon's orthogonalisation under FSDP)

def row_counts(rows: int, world: int) -> list[int]:
    """The rows each rank holds of a tensor sharded on dim 0, by torch.chunk's rule (FSDP2's and
    DTensor's Shard(0)): ceil(rows / world) each, the last ranks fewer or none."""
    size = -(-rows // world)
    return [max(0, min(size, rows - r * size)) for r in range(world)]


def owners_by_cost(shapes, world: int) -> list[int]:
    """A rank for each matrix, so that the Newton-Schulz work is shared: the costliest first, each
    to the least loaded rank (lowest rank on ties), by its matmul flops ~ m^2 n (m <= n). The
    same on every rank: a function of the shapes only."""
    cost = [min(s[0], s[1]) ** 2 * max(s[0], s[1]) for s in shapes]
    load, owners = [0] * world, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -cost[i]):  # stable: ties in list order
        owners[i] = min(range(world), key=lambda r: load[r])
        load[owners[i]] += cost[i]
    return owners


def _row_sharding(like: torch.Tensor):
    """(process group, world, this rank's index) of a DTensor sharded by rows over a 1-D mesh,
    the layout fully_shard gives here; None for a plain tensor (one process, DDP)."""
    if not hasattr(like, "device_mesh"):
        return None
    from torch.distributed.tensor import Shard

    mesh = like.device_mesh
    if mesh.ndim != 1 or tuple(like.placements) != (Shard(0),):
        raise NotImplementedError(f"rows of a {like.placements} DTensor on a {mesh.ndim}-D mesh: Muon "
                                  "here expects FSDP2's Shard(0) on one mesh dimension")
    return mesh.get_group(), mesh.size(), mesh.get_local_rank()


def gather_whole(parts: list[torch.Tensor], likes: list[torch.Tensor], owners: list[int]) -> list:
    """Each matrix whole on its owner rank (None on the others), from every rank's rows: `parts[i]`
    is this rank's rows of a matrix laid out as `likes[i]` (a row-sharded DTensor, or a plain
    tensor, then already whole). One gather per matrix, all in flight at once."""
    pending = []
    for part, like, owner in zip(parts, likes, owners):
        sharding = _row_sharding(like)
        if sharding is None:
            pending.append((part, None, None, None))
            continue
        group, world, me = sharding
        counts = row_counts(like.shape[0], world)
        if part.shape[0] != counts[me]:  # a split other than torch.chunk's would misplace rows
            raise NotImplementedError(f"rank {me} holds {part.shape[0]} of {like.shape[0]} rows, "
                                      f"not torch.chunk's {counts[me]}: Muon cannot reassemble the matrix")
        padded = part.new_zeros((counts[0], *part.shape[1:]))  # gather needs equal sizes
        padded[: part.shape[0]] = part
        chunks = [torch.empty_like(padded) for _ in range(world)] if me == owner else None
        work = torch.distributed.gather(padded, chunks, group_dst=owner, group=group, async_op=True)
        pending.append((chunks, counts, work, padded))  # buffers alive until the gather is done
    wholes = []
    for chunks, counts, work, _ in pending:
        if work is None:
            wholes.append(chunks)  # a plain tensor: already whole
            continue
        work.wait()
        wholes.append(torch.cat([c[:n] for c, n in zip(chunks, counts)]) if chunks is not None else None)
    return wholes


def scatter_rows(wholes: list, likes: list[torch.Tensor], owners: list[int],
                 dtype: torch.dtype) -> list[torch.Tensor]:
    """The way back of gather_whole: each owner sends every rank its rows of the matrices it holds
    whole (`wholes[i]`, None where this rank is not the owner, all of `dtype`); returns this rank's
    rows of each. One scatter per matrix, all in flight at once."""
    pending = []
    for whole, like, owner in zip(wholes, likes, owners):
        sharding = _row_sharding(like)
        if sharding is None:
            pending.append((whole, None, None, None))
            continue
        group, world, me = sharding
        counts = row_counts(like.shape[0], world)
        out = torch.empty((counts[0], *like.shape[1:]), dtype=dtype, device=local(like).device)
        chunks = None
        if me == owner:
            # equal sizes, each chunk contiguous (a transposed result, Newton-Schulz's on a tall
            # matrix, would otherwise travel in its memory order)
            padded = whole.new_zeros((counts[0] * world, *whole.shape[1:]))
            padded[: whole.shape[0]] = whole
            chunks = list(padded.split(counts[0]))
        work = torch.distributed.scatter(out, chunks, group_src=owner, group=group, async_op=True)
        pending.append((out, counts[me], work, chunks))  # buffers alive until the scatter is done
    rows = []
    for out, n, work, _ in pending:
        if work is not None:
            work.wait()
            out = out[:n]
        rows.append(out)
    return rows
