"""How the model is spread over the ranks: the one place that wraps it for distributed training.

STRATEGIES maps `hardware.strategy=<name>` to a function `(model, dist, rt) -> module` that
returns what the training step calls (the model itself in one process). Evaluation and
checkpoints use the unwrapped model. `accumulating` is the context a micro-batch's backward runs
in when gradients must not be reduced yet (all but the last of an accumulated step).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP


def wrap_ddp(model: torch.nn.Module, dist, rt) -> torch.nn.Module:
    """DistributedDataParallel: every rank holds the whole model; gradients are all-reduced."""
    if not dist.enabled:
        return model
    return DDP(model, device_ids=[rt.device.index] if rt.device_type == "cuda" else None)


# hardware.strategy=<name> -> wrap(model, dist, rt) -> the module the training step calls
STRATEGIES = {"ddp": wrap_ddp}


def wrap(model: torch.nn.Module, strategy: str, dist, rt) -> torch.nn.Module:
    return STRATEGIES[strategy](model, dist, rt)


def accumulating(train_model: torch.nn.Module, sync: bool):
    """The context of one micro-batch's forward and backward: gradients are reduced among the
    ranks only when `sync` (the last micro-batch of a step)."""
    if sync or not isinstance(train_model, DDP):
        return nullcontext()
    return train_model.no_sync()
