"""AdamW with weight decay on matrices only, and the learning-rate schedule."""
from __future__ import annotations

import inspect
import math

import torch

from nanogpt.errors import UserError


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
               eps: float = 1e-8, device_type: str = "cpu", fused: bool | None = None) -> torch.optim.AdamW:
    """Decay every >=2-D tensor (matmul weights, embeddings), not biases or LayerNorm gains.
    Fused AdamW (one kernel for all parameters) where the device supports it."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    supports_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
    if fused is None:
        fused = supports_fused
    if fused and not supports_fused:
        raise UserError(f"optim.fused=true is not supported on {device_type}: use optim.fused=null")
    extra = {"fused": True} if fused else {"foreach": device_type != "cpu" or None}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)


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
    else:
        raise UserError(f"unknown optim.schedule={schedule!r}: use cosine, linear or constant")
    return min_lr + coeff * (lr - min_lr)
