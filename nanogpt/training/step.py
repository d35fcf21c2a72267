"""The one optimizer step, as the training loop takes it and as `task=bench` times it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from nanogpt.runtime import distributed, fsdp, parallel
from nanogpt.runtime.hardware import Runtime
from nanogpt.training.guards import NanGuard


@dataclass
class Step:
    """What one optimizer step uses: the training loop's, and task=bench's."""
    model: torch.nn.Module  # the model itself: its parameters are clipped
    train_model: torch.nn.Module  # what the step calls: compiled and/or wrapped for the ranks
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rt: Runtime
    accum: int  # micro-batches per step
    grad_clip: float
    batch: Callable[[int, int], tuple] | None  # (iteration, micro-step) -> (x, y)
    guard: NanGuard
    skip_nonfinite: bool = False  # task.on_nan=skip: check every step, skip a non-finite update
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    # called (iteration, micro-step, accum) before each micro-batch: a long step's progress line
    # (nanogpt.run.metrics.Heartbeat), on rank 0 of a training run
    on_micro: Callable[[int, int, int], None] | None = None


def train_step(p: Step, it: int) -> torch.Tensor | None:
    """One optimizer step: p.accum micro-batches (gradients reduced among the ranks on the last
    one only), clipping, the update. Returns the step's loss (the mean over its micro-batches,
    this rank's; on the device: reading it is a host sync), or None when a non-finite step was
    skipped (p.skip_nonfinite). Every loss and gradient norm goes into p.guard."""
    step_loss = torch.zeros((), device=p.rt.device, dtype=p.rt.param_dtype)
    for m in range(p.accum):
        if p.on_micro is not None:
            p.on_micro(it, m, p.accum)
        x, y, *docs = p.batch(it, m)  # document ids too when the model masks them (model.doc_mask)
        with parallel.accumulating(p.train_model, sync=m == p.accum - 1):
            with p.rt.autocast():
                # the logits (B x T x vocab) go at once: not held through the backward
                loss = p.train_model(x, y, docs=docs[0] if docs else None)[1] / p.accum
            p.guard.add(loss)
            p.scaler.scale(loss).backward()
        step_loss += loss.detach()
    if p.grad_clip > 0:
        p.scaler.unscale_(p.optimizer)
        norm = fsdp.clip_grad_norm_(p.model.parameters(), p.grad_clip)  # the global norm, sharded too
        if not p.rt.needs_grad_scaler:  # float16's GradScaler skips inf gradients itself
            p.guard.add(norm)
    if p.skip_nonfinite and distributed.any_rank(not p.guard.finite(it + 1)):  # one host sync per step
        p.optimizer.zero_grad(set_to_none=True)
        return None
    p.scaler.step(p.optimizer)
    p.scaler.update()
    p.optimizer.zero_grad(set_to_none=True)
    return step_loss
