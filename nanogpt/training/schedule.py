"""The learning-rate schedule: the lr of each iteration, shared by every optimizer.

    cosine | linear   linear warm-up, then decay to min_lr at decay_iters (nanoGPT's, Chinchilla's)
    constant          linear warm-up, then lr for ever
    wsd               warm-up, stable, decay: lr until the last `decay_frac` of the run, then a
                      cooldown to min_lr whose shape is linear, cosine or 1-sqrt (Hägele et al.
                      2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
                      Durations"). A long stable run can be branched at any iteration into a short
                      cooldown: the loss at several budgets from one run. A run too short for
                      both ramps (a 10-iteration trial of a recipe with 20 warm-up iterations)
                      follows the lower of the two: up the warm-up, then down the cooldown.

Each optimizer parameter group multiplies the scheduled lr by its own scale (nanogpt.training.optim).
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWNS = ("linear", "cosine", "1-sqrt")


def decay_coeff(progress: float, shape: str) -> float:
    """1 at progress 0, 0 at progress 1, in between by `shape`."""
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "linear":
        return 1.0 - progress
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r}: use {', '.join(COOLDOWNS)}")


def wsd_decay_start(decay_iters: int, decay_frac: float) -> int:
    """The first iteration of a WSD run's cooldown: the last decay_frac of decay_iters iterations."""
    return decay_iters - round(decay_frac * decay_iters)


def lr_at(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int,
          schedule: str = "cosine", decay_frac: float = 0.2, cooldown: str = "linear") -> float:
    """Linear warm-up to lr, then the schedule's decay to min_lr at decay_iters, then flat.
    For wsd, the decay spans the last decay_frac of decay_iters, shaped by `cooldown`; where
    the warm-up and the cooldown overlap, the lower of the two."""
    if it < warmup_iters:
        ramp = lr * (it + 1) / (warmup_iters + 1)
        return min(ramp, _wsd(it, lr, min_lr, decay_iters, decay_frac, cooldown)) if schedule == "wsd" else ramp
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        return _wsd(it, lr, min_lr, decay_iters, decay_frac, cooldown)
    if it >= decay_iters:
        return min_lr
    if schedule in ("cosine", "linear"):
        progress, shape = (it - warmup_iters) / max(1, decay_iters - warmup_iters), schedule
    else:  # the config refuses other names before any work; this guards direct callers
        raise ValueError(f"unknown schedule {schedule!r}: use {', '.join(SCHEDULES)}")
    return min_lr + decay_coeff(progress, shape) * (lr - min_lr)


def _wsd(it: int, lr: float, min_lr: float, decay_iters: int, decay_frac: float, cooldown: str) -> float:
    """WSD without its warm-up: lr until the cooldown's start, then down to min_lr at decay_iters."""
    start = wsd_decay_start(decay_iters, decay_frac)
    if it < start:
        return lr
    if it >= decay_iters:
        return min_lr
    return min_lr + decay_coeff((it - start) / max(1, decay_iters - start), cooldown) * (lr - min_lr)


class Schedule:
    """The scheduled lr of an iteration, from the optim config and the run's length."""

    def __init__(self, ocfg, max_iters: int):
        self.lr, self.warmup_iters, self.schedule = ocfg.lr, ocfg.warmup_iters, ocfg.schedule
        self.min_lr = ocfg.min_lr if ocfg.min_lr is not None else ocfg.lr / 10
        self.decay_iters = ocfg.decay_iters or max_iters
        self.decay_frac, self.cooldown = ocfg.decay_frac, ocfg.cooldown

    def __call__(self, it: int) -> float:
        return lr_at(it, self.lr, self.min_lr, self.warmup_iters, self.decay_iters, self.schedule,
                     self.decay_frac, self.cooldown)
