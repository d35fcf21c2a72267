"""How the model is spread over the ranks: the one place that wraps it for distributed training.

`prepare(model, hw, dist, rt)` applies activation checkpointing (any strategy), then
STRATEGIES[hardware.strategy], a function `(model, dist, rt, hw) -> (train_model, eval_model)`:
what the training step calls, and what evaluation calls.
    ddp    DistributedDataParallel around the (compiled) model; evaluation bypasses it (ranks
           score different numbers of batches); one process: the model itself
    fsdp   FSDP2 (nanogpt.runtime.fsdp): the model is sharded in place and is both; blocks compiled one
           by one. One process: nothing to shard over, so the model trains whole, as under DDP,
           and only its checkpoints stay in the sharded format (resumable on any number of ranks)
`accumulating` is the context a micro-batch's backward runs in when gradients must not be
reduced yet (all but the last of an accumulated step). Build the optimizer after `prepare`:
FSDP replaces the model's parameters by sharded ones.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt.runtime import fsdp
from nanogpt.runtime.hardware import compile_model

log = logging.getLogger("nanogpt")


def wrap_ddp(model: torch.nn.Module, dist, rt, hw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """DistributedDataParallel: every rank holds the whole model; gradients are all-reduced."""
    eval_model = compile_model(model) if hw.compile else model
    if not dist.enabled:
        return eval_model, eval_model
    return DDP(eval_model, device_ids=[rt.device.index] if rt.device_type == "cuda" else None), eval_model


def wrap_fsdp(model: torch.nn.Module, dist, rt, hw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """FSDP2: each rank holds 1/world of every parameter, gradient and optimizer state."""
    fsdp.check_supported(rt.device_type, rt.dtype)
    if not dist.enabled:
        if dist.is_main:
            log.info("hardware.strategy=fsdp on one process: nothing to shard over, the model "
                     "trains whole; checkpoints stay sharded (ckpt/*.dcp), so the run resumes on "
                     "any number of ranks")
        return wrap_ddp(model, dist, rt, hw)
    if hw.compile:
        fsdp.compile_blocks(model)
    fsdp.shard(model, rt.device_type, rt.dtype)
    model.fsdp_accumulation = hw.fsdp_accumulation  # read by accumulating()
    return model, model


# hardware.strategy=<name> -> wrap(model, dist, rt, hw) -> (train_model, eval_model)
STRATEGIES = {"ddp": wrap_ddp, "fsdp": wrap_fsdp}
# strategies whose checkpoints are sharded (torch.distributed.checkpoint, ckpt/*.dcp)
SHARDED_CHECKPOINTS = {"fsdp"}


def sharded_checkpoints(hw) -> bool:
    return hw.strategy in SHARDED_CHECKPOINTS


def prepare(model: torch.nn.Module, hw, dist, rt) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Activation checkpointing, then the strategy's wrapping: (train_model, eval_model)."""
    fsdp.apply_activation_checkpointing(model, hw.activation_checkpointing)
    return STRATEGIES[hw.strategy](model, dist, rt, hw)


def accumulating(train_model: torch.nn.Module, sync: bool):
    """The context of one micro-batch's forward and backward: gradients are reduced among the
    ranks only when `sync` (the last micro-batch of a step); under FSDP with
    hardware.fsdp_accumulation=sharded, after every micro-batch (the least memory)."""
    if isinstance(train_model, DDP):
        return nullcontext() if sync else train_model.no_sync()
    if fsdp.is_sharded(train_model):
        if getattr(train_model, "fsdp_accumulation", "unsharded") == "sharded":
            return nullcontext()
        return fsdp.accumulating(train_model, sync)
    return nullcontext()


def lockstep(eval_model: torch.nn.Module) -> bool:
    """Must every rank run the same number of forward passes (each one is a collective)?"""
    return fsdp.is_sharded(eval_model)
