"""Cooldown branches: a run that starts from another run's checkpoint at iteration k and goes on
to its own end, typically the WSD schedule's cooldown (Hägele et al. 2024).

One long run with a constant (stable) learning rate keeps checkpoints at several iterations
(`task.keep_checkpoints=[k1,k2,...]`, written as ckpt/iter_<k>.pt); each branch
(`task.branch_from=RUN task.branch_iter=k`) loads one and trains to its own `task.max_iters`,
with its own schedule, which must agree with the parent's up to k (so the branch is what the
parent would have become with that end). A branch is a run of its own: its summary counts every
token and FLOP from iteration 0, so `nanogpt.scaling.collect collect` reads each branch as one point of
(N, D, C, loss): the loss at several budgets for little more than the cost of the longest.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError
from nanogpt.training.optim import OptimConfig
from nanogpt.training.schedule import Schedule, wsd_decay_start


def kept_name(it: int) -> str:
    return f"iter_{it:07d}.pt"


def kept_iters(run_dir: Path) -> list[int]:
    return sorted(int(p.stem[5:]) for p in (Path(run_dir) / "ckpt").glob("iter_*.pt") if p.stem[5:].isdigit())


def load_point(branch_from: str, branch_iter: int) -> tuple[Path, dict]:
    """The kept checkpoint of `branch_from` at `branch_iter` (validated by checkpoint.load)."""
    parent = Path(branch_from)
    if not (parent / "ckpt").is_dir():
        raise UserError(f"task.branch_from={branch_from} is not a training run directory (no ckpt/ in it)")
    path = parent / "ckpt" / kept_name(branch_iter)
    if not path.is_file():
        have = kept_iters(parent)
        hint = (f"it kept iterations {', '.join(map(str, have))}" if have else
                "it kept none: train it with task.keep_checkpoints=[...] listing the branch points")
        raise UserError(f"{parent} has no checkpoint at iteration {branch_iter} ({path.name}); {hint}")
    return path, checkpoint.load(path, map_location="cpu")


def check_continuation(ckpt: dict, path: Path, data_name: str, seed: int, tokens_per_step: int,
                       max_iters: int, schedule: Schedule) -> None:
    """A branch continues its parent: the same data stream (data, seed, tokens per step) and the
    same learning rate up to the branch point, and an end after it."""
    k = ckpt["iter"]
    parent = ckpt.get("config") or {}
    problems = []
    if (parent.get("data") or {}).get("name") != data_name:
        problems.append(f"data {parent.get('data', {}).get('name')!r} vs {data_name!r}")
    if parent.get("seed") != seed:
        problems.append(f"seed {parent.get('seed')} vs {seed} (the batches would differ)")
    if ckpt.get("tokens_per_step") != tokens_per_step:
        problems.append(f"tokens per step {ckpt.get('tokens_per_step')} vs {tokens_per_step}")
    if problems:
        raise UserError(f"a branch must continue its parent's training, and {path} differs from this "
                        f"run in {'; '.join(problems)}: use the parent's settings")
    if k >= max_iters:
        raise UserError(f"task.branch_iter={k} is not before this run's end (task.max_iters={max_iters}): "
                        "a branch trains past its branch point")
    ours = schedule(k)
    parent_iters = ckpt.get("max_iters") or (parent.get("task") or {}).get("max_iters") or k
    theirs = Schedule(_saved_optim(parent.get("optim") or {}), parent_iters)(k)
    if not math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-15):
        raise UserError(f"this branch's learning rate at its branch point {k} is {ours:.4g}, its parent's "
                        f"was {theirs:.4g}: the cooldown must start at or after the branch point. With "
                        f"optim.schedule=wsd set task.max_iters >= {cooldown_end(k, schedule.decay_frac)} "
                        f"(decay_frac {schedule.decay_frac}), and the parent's lr, warm-up and min_lr")


def cooldown_end(branch_iter: int, decay_frac: float) -> int:
    """The shortest WSD run whose cooldown (its last decay_frac) starts at or after branch_iter:
    the run length that branches a cooldown of decay_frac off a stable run at branch_iter."""
    if not 0.0 < decay_frac < 1.0:
        raise UserError(f"optim.decay_frac={decay_frac}: a cooldown branch needs a stable phase, so a "
                        "decay_frac below 1")
    # the cooldown's start, end - round(decay_frac * end), grows by 0 or 1 with end: scan up from
    # just below the real-valued answer for the first end whose cooldown starts at branch_iter or later
    end = max(branch_iter + 1, math.floor(branch_iter / (1.0 - decay_frac)) - 2)
    while wsd_decay_start(end, decay_frac) < branch_iter:
        end += 1
    return end


def _saved_optim(d: dict) -> SimpleNamespace:
    """A checkpoint's saved optim config (a dict) as the attributes Schedule reads; a key an old
    checkpoint lacks (written before the option existed) takes OptimConfig's default, which is
    what that run trained with. Not validated: the parent ran with it."""
    defaults = {f.name: f.default for f in dataclasses.fields(OptimConfig)}
    return SimpleNamespace(**{**defaults, **d})
