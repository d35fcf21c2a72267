"""Optimizers by name, and the learning-rate schedule they share.

OPTIMIZERS maps `optim=<name>` to a factory `(model, optim_cfg, device_type) -> optimizer`. Each
of the optimizer's parameter groups may carry an "lr_scale": the schedule sets every group's lr
to the scheduled lr times that group's scale (1 when absent), so an optimizer whose groups need
different rates (Muon for matrices beside AdamW for the rest) keeps them through warm-up and
decay. The optimizer's own keys have a schema in nanogpt.config.OPTIM_SCHEMAS.
"""
from __future__ import annotations

import inspect
import math

import torch

from nanogpt.errors import UserError


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every >=2-D tensor (matmul weights, embeddings), not biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_adamw(model: torch.nn.Module, ocfg, device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. Fused AdamW (one kernel for all parameters)
    where the device supports it."""
    supports_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
    fused = supports_fused if ocfg.fused is None else ocfg.fused
    if fused and not supports_fused:
        raise UserError(f"optim.fused=true is not supported on {device_type}: use optim.fused=null")
    extra = {"fused": True} if fused else {"foreach": device_type != "cpu" or None}
    return torch.optim.AdamW(decay_groups(model, ocfg.weight_decay), lr=ocfg.lr,
                             betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps, **extra)


# optim=<name> -> factory(model, optim_cfg, device_type) -> torch.optim.Optimizer
OPTIMIZERS = {"adamw": make_adamw}


def make_optimizer(model: torch.nn.Module, ocfg, device_type: str) -> torch.optim.Optimizer:
    return OPTIMIZERS[ocfg.name](model, ocfg, device_type)


def lr_at(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int,
          schedule: str = "cosine") -> float:
    """Linear warm-up to lr, then cosine (or linear) decay to min_lr at decay_iters, then flat."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if schedule == "constant":
        return lr
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    if schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        coeff = 1.0 - progress
    else:  # the config refuses other names before any work; this guards direct callers
        raise ValueError(f"unknown schedule {schedule!r}: use cosine, linear or constant")
    return min_lr + coeff * (lr - min_lr)


class Schedule:
    """The scheduled lr of an iteration, from the optim config and the run's length."""

    def __init__(self, ocfg, max_iters: int):
        self.lr, self.warmup_iters, self.schedule = ocfg.lr, ocfg.warmup_iters, ocfg.schedule
        self.min_lr = ocfg.min_lr if ocfg.min_lr is not None else ocfg.lr / 10
        self.decay_iters = ocfg.decay_iters or max_iters

    def __call__(self, it: int) -> float:
        return lr_at(it, self.lr, self.min_lr, self.warmup_iters, self.decay_iters, self.schedule)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at lr times its own scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
