"""The training loop: `train()` reads top to bottom as orchestration of named steps.

One process or many (DDP): every rank runs this same code; rank 0 alone writes. `setup()` builds
what a run trains with (a `Training`: model, optimizer, scaler, batches, logger...) and the
`TrainState` (iteration, best val loss, latest evaluation, tokens trained...), restored from the
run's checkpoint when there is one. Batches are a function of the iteration and every RNG state
goes into the checkpoint, so a resumed run is bit-identical to one that never stopped.
`train_step` is the one optimizer step; `task=bench` times this same function.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from nanogpt.checkpoint import sharded as dcp
from nanogpt.checkpoint import single as checkpoint
from nanogpt.checkpoint.load import load_run
from nanogpt.config import ConfigError, TaskConfig, above, at_least, one_of
from nanogpt.errors import UserError
from nanogpt.evals.loss import estimate_loss
from nanogpt.evals.sample import generate_texts
from nanogpt.run import rundir
from nanogpt.run.metrics import compact, eta, fraction, mfu, progress
from nanogpt.runtime import distributed, fsdp
from nanogpt.training import branch
from nanogpt.training.guards import Interrupted
from nanogpt.training.optim import set_lr
from nanogpt.training.setup import (
    Training,
    TrainState,
    finished_run,
    non_embedding_params,
    setup,
)
from nanogpt.training.step import train_step

log = logging.getLogger("nanogpt")
MAX_SKIPPED = 10  # task.on_nan=skip: this many non-finite steps in a row stop the run


ON_NAN = ("stop", "skip")


@dataclass
class TrainTask(TaskConfig):
    name: str = "train"
    max_iters: int = 2000
    max_tokens: Optional[int] = None  # a token budget: sets max_iters from tokens_per_step
    max_flops: Optional[float] = None  # a compute budget C ~ 6 N D: sets max_iters
    tokens_per_step: Optional[int] = None  # tokens per optimizer step; None: one micro-batch per rank
    eval_interval: int = 250
    # batches per split at each evaluation; None: as many as keep evaluation within eval_budget
    # of the run's compute (the batches are fixed, so even a few give a steady curve)
    eval_iters: Optional[int] = None
    eval_budget: float = 0.05  # the share of the compute evaluation may take when eval_iters=null
    final_eval_iters: Optional[int] = None  # the last evaluation's batches; None: 4 x eval_iters
    log_interval: int = 10
    save_interval: Optional[int] = None  # also save last.pt every N iterations (None: at evals only)
    always_save_checkpoint: bool = True  # save last.pt at each eval even when val did not improve
    on_nan: str = "stop"  # stop | skip (skip the update of a non-finite step; stop after 10 in a row)
    num_samples: int = 1  # samples printed when training ends (0: none)
    hellaswag_interval: int = 0  # score HellaSwag every N iterations (0: never); acc_norm is logged
    hellaswag_limit: Optional[int] = None  # its first N examples (None: all 10,042)
    hellaswag_file: Optional[str] = None  # a local hellaswag_val.jsonl (None: Rowan/hellaswag from the hub)
    core_interval: int = 0  # score CORE (nanogpt.evals.core) every N iterations (0: never); CORE is logged
    core_limit: Optional[int] = 500  # N examples per CORE task (nanochat's --core-metric-max-per-task; None: all)
    core_bundle: Optional[str] = None  # an unzipped eval bundle (None: DATA/eval_bundle, downloaded once)
    sample_tokens: int = 300
    temperature: float = 0.8  # of the samples printed when training ends
    top_k: Optional[int] = 200
    plot: bool = True  # loss.png in the run directory
    # cooldown branches (nanogpt.training.branch): iterations whose checkpoints this run keeps
    # (ckpt/iter_<k>.pt), and the run + kept iteration a new run starts from
    keep_checkpoints: list = field(default_factory=list)
    branch_from: Optional[str] = None
    branch_iter: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        for k in self.keep_checkpoints:
            if not isinstance(k, int) or k < 1:
                raise ConfigError(f"task.keep_checkpoints={list(self.keep_checkpoints)}: iterations are "
                                  "whole numbers >= 1")
        if (self.branch_from is None) != (self.branch_iter is None):
            raise ConfigError("a cooldown branch needs both task.branch_from=RUN_DIR and "
                              "task.branch_iter=K (one of the parent's task.keep_checkpoints)")
        at_least("task.branch_iter", self.branch_iter, 1)
        at_least("task.max_iters", self.max_iters, 0)
        at_least("task.max_tokens", self.max_tokens, 1)
        above("task.max_flops", self.max_flops, 0)
        at_least("task.tokens_per_step", self.tokens_per_step, 1)
        at_least("task.eval_interval", self.eval_interval, 1)
        at_least("task.eval_iters", self.eval_iters, 1)
        at_least("task.final_eval_iters", self.final_eval_iters, 1)
        if not 0 < self.eval_budget < 1:
            raise ConfigError(f"task.eval_budget={self.eval_budget} is out of range: it must be in (0, 1)")
        at_least("task.log_interval", self.log_interval, 1)
        at_least("task.save_interval", self.save_interval, 1)
        one_of("task.on_nan", self.on_nan, ON_NAN)
        at_least("task.num_samples", self.num_samples, 0)
        at_least("task.hellaswag_interval", self.hellaswag_interval, 0)
        at_least("task.hellaswag_limit", self.hellaswag_limit, 1)
        at_least("task.core_interval", self.core_interval, 0)
        at_least("task.core_limit", self.core_limit, 1)
        at_least("task.sample_tokens", self.sample_tokens, 1)
        at_least("task.temperature", self.temperature, 0)
        at_least("task.top_k", self.top_k, 1)


def run(cfg, run_dir: Path, dist: distributed.Dist) -> float | None:
    """task=train: one training process per run directory (rank 0 holds the run's lock while it
    trains). Returns the final val loss, what a sweeper optimises."""
    rundir.refuse_scratch_over_checkpoints(run_dir, rundir.command_overrides())
    with rundir.lock_run(run_dir) if dist.is_main else contextlib.nullcontext():
        summary = train(cfg, run_dir, dist)
    if summary.get("status") == "interrupted":
        # checkpoint saved; exit as a signalled program does, so `&&` chains and job schedulers
        # see that the run did not finish, and a local sweep stops here instead of going on to
        # its next point
        sys.exit(128 + signal.Signals[summary["stop_signal"]].value)
    return summary.get("final_val_loss")


def train(cfg, run_dir: Path, dist: distributed.Dist) -> dict:
    """Train (or resume) the run in run_dir; returns its summary (rank 0; on the others, its
    status and stop signal)."""
    done = finished_run(cfg, Path(run_dir))
    if done is not None:
        return done
    s, state = setup(cfg, Path(run_dir), dist)
    try:
        try:
            with live_progress(s, state):
                train_loop(s, state)
        finally:
            s.prefetch.close()
            s.stop.restore()
        summary = finish(s, state)
    except KeyboardInterrupt as e:  # a second Ctrl-C, or a signal during the end-of-run samples
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, record_interrupt(s, state, signum)) from None
    except Exception:
        record_failure(s, state)
        raise
    if summary.get("status") == "interrupted":  # a SLURM job leaves here, to be requeued (or cancelled)
        distributed.end_interrupted_slurm_job(s.dist, s.stop.signum)
    return summary


def train_loop(s: Training, state: TrainState) -> None:
    """Steps until max_iters, or until a signal on any rank asks to stop (after saving)."""
    while True:
        set_lr(s.optimizer, s.schedule(state.it))
        if s.hellaswag and (state.it > s.start_iter or s.start_iter == 0):  # before loss.png is drawn
            s.hellaswag.maybe_log(state.it, s.model, s.rt, s.dist, s.metrics, state.tokens_at(state.it))
        if s.core and (state.it > s.start_iter or s.start_iter == 0):
            s.core.maybe_log(state.it, s.model, s.rt, s.dist, s.metrics, state.tokens_at(state.it))
        if eval_due(s, state):
            evaluate_and_checkpoint(s, state)
        if save_due(s, state):
            save_checkpoint(s, state, "last.pt")
        if keep_due(s, state):
            keep_checkpoint(s, state)
        if state.it >= s.max_iters:
            break
        if stop_requested(s) or s.pruned:
            if state.saved_at != state.it:
                save_checkpoint(s, state, "last.pt")
            break
        loss = train_step(s.step, state.it)
        state.it += 1
        if s.bar is not None:
            s.bar.update(1)
        if s.resume_record:
            record_resume(s)
        if loss is None:  # a non-finite step, skipped (task.on_nan=skip)
            count_skipped_step(s, state)
            continue
        state.bad_steps = 0
        s.meter.iters_since_log += 1
        if state.it % s.tcfg.log_interval == 0:
            log_step(s, state, loss)


@contextlib.contextmanager
def live_progress(s: Training, state: TrainState):
    """On a terminal (rank 0): a live bar of iterations, rate and time left under the log lines
    (which tqdm prints above it); in a log file or a SLURM log the periodic `iter N/max (%) ...
    ETA` lines say the same, and no bar is drawn."""
    bar = progress(total=s.max_iters, initial=state.it, desc="train", unit="it", is_main=s.dist.is_main,
                   plain=False)
    if not bar.terminal:
        bar.close()
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    s.bar = bar
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        s.bar = None
        bar.close()


# ----------------------------------------------------------------------------------------------
# the steps of the loop

def record_resume(s: Training) -> None:
    """The settings this resume changed, into metrics.jsonl once a step has run with them: a
    session stopped before its first step leaves no record of settings nothing trained with (and
    a record whose steps a later resume redoes is dropped with them: metrics.MetricsLogger)."""
    s.metrics.log(s.resume_record)
    s.resume_record = None


def count_skipped_step(s: Training, state: TrainState) -> None:
    """A non-finite step was skipped (task.on_nan=skip): warn; stop after MAX_SKIPPED in a row."""
    state.bad_steps += 1
    log.warning("iter %d: non-finite loss or gradient, update skipped (%d in a row)", state.it - 1, state.bad_steps)
    if state.bad_steps >= MAX_SKIPPED:
        raise UserError(_nan_message(state.it - state.bad_steps, state.it, state.last_loss,
                                     then=f"With task.on_nan=skip, {MAX_SKIPPED} steps in a row were "
                                          "skipped: the run does not recover by itself"))
    s.guard.reset(state.it)


def log_step(s: Training, state: TrainState, loss: torch.Tensor) -> None:
    """At a log step: a non-finite loss stops the run (task.on_nan=stop); rank 0 logs the loss
    (averaged over the ranks), the lr, the speed and MFU."""
    it, dist = state.it, s.dist
    if s.tcfg.on_nan == "stop" and _agree(not s.guard.finite(it), dist):
        raise UserError(_nan_message(s.guard.checked_at, it, state.last_loss))
    distributed.all_reduce_mean(loss)  # every rank joins, at log steps only
    if not dist.is_main:
        return
    loss_val = loss.item()  # the one host sync, at log steps only
    if math.isfinite(loss_val):  # float16 steps the GradScaler skipped can be inf
        state.last_loss = loss_val
    meter, now = s.meter, time.perf_counter()
    dt = (now - meter.t_last) / meter.iters_since_log
    meter.t_last, meter.iters_since_log = now, 0
    meter.tokens_per_s = tok_s = state.tokens_per_step / dt
    step_mfu = mfu(s.flops_per_token, tok_s, s.peak, dist.world_size)
    lr = s.schedule(it - 1)  # the step just taken
    left = eta(it - s.start_iter, s.max_iters - s.start_iter, meter.elapsed())  # evaluations included
    log.info("iter %s: loss %.4f, lr %.2e, %.1f ms/iter, %s tok/s%s%s", fraction(it, s.max_iters), loss_val, lr,
             dt * 1000, compact(tok_s), f", mfu {step_mfu * 100:.1f}%" if step_mfu else "",
             f", ETA {left}" if left and it < s.max_iters else "")
    s.metrics.log({"kind": "train", "iter": it, "tokens": state.tokens_at(it), "loss": loss_val,
                   "lr": lr, "ms_per_iter": dt * 1000, "tokens_per_s": tok_s, "mfu": step_mfu,
                   "time_s": now - meter.t_start})


def eval_due(s: Training, state: TrainState) -> bool:
    """Every eval_interval iterations and at the end; not again at the iteration resumed at."""
    it = state.it
    return (it % s.tcfg.eval_interval == 0 or it == s.max_iters) and (it > s.start_iter or s.start_iter == 0)


def evaluate_and_checkpoint(s: Training, state: TrainState) -> None:
    """Score both splits; then best.pt (when val improved) and last.pt, summary.json, loss.png."""
    it, tcfg = state.it, s.tcfg
    t_eval, errors, bpb = time.perf_counter(), {}, {}
    losses = estimate_loss(s.eval_model, s.eval_batches, s.eval_plan.iters_at(it, s.max_iters), s.rt, s.dist,
                           errors=errors, byte_table=s.byte_table, bpb=bpb)
    s.meter.eval_time += time.perf_counter() - t_eval
    if not all(math.isfinite(v) for v in losses.values()):
        raise UserError(_nan_message(s.guard.checked_at, it, state.last_loss, "evaluation"))
    losses["iter"] = it  # saved with the checkpoint: the final losses survive a kill
    losses["val_se"] = errors["val"]
    losses.update({f"{split}_bpb": v for split, v in bpb.items()})
    improved = losses["val"] < state.best_val
    state.best_val = min(state.best_val, losses["val"])
    state.best_bpb = bpb.get("val") if improved else state.best_bpb
    state.losses = losses
    if s.dist.is_main:
        log.info("iter %d: train loss %.4f, val loss %.4f%s%s", it, losses["train"], losses["val"],
                 f" ± {errors['val']:.4f}" if errors["val"] is not None else "",
                 f" ({bpb['val']:.4f} bits/byte)" if bpb else "")
        s.metrics.log({"kind": "eval", "iter": it, "tokens": state.tokens_at(it),
                       "train_loss": losses["train"], "val_loss": losses["val"],
                       "val_loss_se": errors["val"], **{f"{k}_bpb": v for k, v in bpb.items()},
                       "time_s": s.meter.elapsed(), "eval_time_s": s.meter.eval_time})
    if s.search is not None:  # a search's trial: report, and stop here (after saving) if pruned
        s.pruned = _agree(s.dist.is_main and s.search.should_prune(it, losses), s.dist)
    if it > 0:
        if improved:  # best.pt first: a kill before the copy leaves it the newest
            save_checkpoint(s, state, "best.pt", copy_to="last.pt")
        elif tcfg.always_save_checkpoint or it == s.max_iters:
            save_checkpoint(s, state, "last.pt")
        write_summary(s, state, "running")
    if s.can_plot:  # loss.png stays current for whoever watches a long run
        s.can_plot = _plot(s.run_dir)


def save_due(s: Training, state: TrainState) -> bool:
    every = s.tcfg.save_interval
    return bool(every) and state.it % every == 0 and state.saved_at != state.it and state.it > 0


def keep_due(s: Training, state: TrainState) -> bool:
    """A branch point of task.keep_checkpoints (not the one a session resumed at)."""
    return state.it in s.tcfg.keep_checkpoints and state.it > s.start_iter


def keep_checkpoint(s: Training, state: TrainState) -> None:
    """ckpt/iter_<k>.pt: a copy of last.pt at a branch point, for cooldown branches (nanogpt.training.branch)."""
    if state.saved_at != state.it:
        save_checkpoint(s, state, "last.pt")
    if s.dist.is_main:
        ckpt_dir = s.run_dir / "ckpt"
        checkpoint.copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / branch.kept_name(state.it))


def save_checkpoint(s: Training, state: TrainState, name: str, copy_to: str | None = None) -> None:
    """All ranks call this (to gather RNG states); rank 0 writes `name`, and `copy_to` as a copy
    of it (a second real file: damage to one leaves the other). Sharded (FSDP): every rank
    writes its shards of one save, which ckpt/<name>.dcp (and <copy_to>.dcp) then point to. A
    non-finite loss or weight is never written: the good checkpoints stay."""
    guard_ok = s.tcfg.on_nan != "stop" or s.guard.finite(state.it)  # skip mode skipped its bad steps
    if _agree(not (guard_ok and fsdp.all_finite(s.model.parameters())), s.dist):  # this rank's shards
        raise UserError(_nan_message(s.guard.checked_at, state.it, state.last_loss))
    rng = [checkpoint.rng_state()]
    if s.dist.enabled:
        rng = [None] * s.dist.world_size
        torch.distributed.all_gather_object(rng, checkpoint.rng_state())
    if s.sharded:
        links = tuple(n.replace(".pt", ".dcp") for n in (name, copy_to) if n)
        dcp.save(s.run_dir / "ckpt", state.it, s.model, s.optimizer,
                 train_state(s, state, rng) if s.dist.is_main else None, links, s.dist)
    elif s.dist.is_main:
        ckpt_dir = s.run_dir / "ckpt"
        checkpoint.atomic_save(training_checkpoint(s, state, rng), ckpt_dir / name)
        if copy_to:
            checkpoint.copy_checkpoint(ckpt_dir / name, ckpt_dir / copy_to)
    distributed.barrier()
    state.saved_at = state.it


def training_checkpoint(s: Training, state: TrainState, rng: list) -> dict:
    """What a single-file checkpoint holds: the model's and optimizer's state dicts (whole on
    every rank under DDP) and the train state."""
    return {"model": checkpoint.clean_state_dict(s.model.state_dict()),
            "optimizer": s.optimizer.state_dict(), **train_state(s, state, rng)}


def train_state(s: Training, state: TrainState, rng: list) -> dict:
    """Everything a checkpoint holds but the weights and the optimizer state (a sharded save
    writes those with torch.distributed.checkpoint, beside this)."""
    return {"model_args": dataclasses.asdict(s.gpt_config),
            "scaler": s.step.scaler.state_dict() if s.step.scaler.is_enabled() else None,
            **state.state_dict(), "max_iters": s.max_iters, "rng": rng, "config": s.config_dict,
            "tokenizer": s.dataset.meta["tokenizer"], "dataset": s.dataset.meta.get("dataset"),
            "weights": s.weights}


def stop_requested(s: Training) -> bool:
    """A signal on any rank (Ctrl-C, a scheduler's notice) stops every rank, and every rank
    records the same one: the highest-numbered signal any rank received (SIGTERM over SIGINT)."""
    signum = distributed.max_over_ranks(s.stop.signum or 0)
    if signum:
        s.stop_signal = signum
    return bool(signum)


def write_summary(s: Training, state: TrainState, status: str) -> None:
    losses, tok_s, it, per_token = state.losses, s.meter.tokens_per_s, state.it, s.flops_per_token
    s.metrics.summary({
        "status": status, "params": s.model.num_params(False),
        "params_non_embedding": non_embedding_params(s.model), "tokens": state.tokens_at(it),
        "flops": float(state.tokens_at(it) * per_token), "flops_per_token": per_token,
        "iters": it, "max_iters": s.max_iters, "tokens_per_step": state.tokens_per_step,
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "final_val_loss": losses["val"] if losses else None,
        "final_train_loss": losses["train"] if losses else None,
        "final_val_loss_se": losses.get("val_se") if losses else None,
        "best_val_bpb": state.best_bpb, "final_val_bpb": losses.get("val_bpb") if losses else None,
        "branched_from": state.branched_from, "wall_time_s": s.meter.elapsed(),
        "eval_time_s": s.meter.eval_time,
        "tokens_per_s": tok_s, "mfu": mfu(per_token, tok_s, s.peak, s.dist.world_size) if tok_s else None,
        "world_size": s.dist.world_size, "device": str(s.rt.device), "dtype": str(s.rt.dtype).replace("torch.", ""),
        "stop_signal": signal.Signals(s.stop_signal).name if s.stop_signal else None,
        "weights": s.weights, **packing_record(s), "config": s.config_dict})


def packing_record(s: Training) -> dict:
    """How the training rows were made (data.packing) and, for bestfit, the share of the tokens
    read that crops dropped (this session's batches of rank 0)."""
    batches = s.prefetch.batches if s.prefetch is not None else None
    return {"packing": s.cfg.data.packing, "crop_rate": batches.crop_rate if batches else None}


def record_failure(s: Training, state: TrainState) -> None:
    if s.dist.is_main:
        try:  # on a full disk these writes fail too: keep the error that says why
            write_summary(s, state, "failed")
            s.metrics.close(failed=True)
        except OSError as e:
            log.warning("could not record the failure in %s: %s", s.run_dir, e)


def record_interrupt(s: Training, state: TrainState, signum: int) -> str:
    """Stopped at once (a second Ctrl-C while saving, a signal during the end-of-run samples):
    the summary describes the newest checkpoint on disk, where the same command resumes, whatever
    moment the signal came at (mid-write, between the write and its bookkeeping, or after).
    Returns what to tell the user."""
    s.stop_signal = signum
    if not s.dist.is_main:
        return "stopped at once; rank 0 reports what was kept"
    with _signals_held():  # a third Ctrl-C must not leave this write half done
        saved = newest_saved_state(s)
        try:
            if saved is not None:
                at = TrainState(state.tokens_per_step)
                at.load_state_dict({k: v for k, v in saved.items() if k != "rng"})
                at.losses = saved.get("eval_losses") if isinstance(saved.get("eval_losses"), dict) else None
                write_summary(s, at, "interrupted")
            s.metrics.close(failed=True)
        except OSError as e:
            log.warning("could not record the interruption in %s: %s", s.run_dir, e)
    if saved is None:
        return "stopped at once, before this run wrote its first checkpoint: no training was kept"
    return (f"stopped at once without saving: the newest checkpoint (iteration {saved['iter']}) is "
            "intact, and the same command resumes from it")


def newest_saved_state(s: Training) -> dict | None:
    """The train state of the run's newest checkpoint on disk (what a resume starts from), or None."""
    ckpt_dir = s.run_dir / "ckpt"
    if s.sharded:
        found, _ = dcp.find(ckpt_dir)
        return found[0].state if found else None
    states = []
    for name in checkpoint.RESUMABLE:
        if (ckpt_dir / name).exists():
            with contextlib.suppress(UserError):  # a torn file: the other one is the newest
                states.append(checkpoint.load(ckpt_dir / name, mmap=True))
    states = [c for c in states if isinstance(c.get("iter"), int)]
    return max(states, key=lambda c: c["iter"], default=None)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM ignored for the few milliseconds of a last write."""
    held = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals reach it anyway
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def finish(s: Training, state: TrainState) -> dict:
    """The end of a session. A finished run writes what it promises (a sharded run's consolidated
    checkpoints, samples.txt) before its summary says finished: a kill before that leaves it
    resumable at max_iters, and the same command completes it. An interrupted one says how to
    resume. Returns the summary (rank 0; on the others, the status and the agreed stop signal)."""
    finished = state.it >= s.max_iters
    status = "finished" if finished else "pruned" if s.pruned else "interrupted"
    if finished and s.dist.is_main:
        crop = packing_record(s)["crop_rate"]
        if crop is not None:
            log.info("data.packing=%s: crops dropped %.1f%% of the document tokens read (%s of %s)",
                     s.cfg.data.packing, 100 * crop, f"{s.prefetch.batches.tokens_dropped:,}",
                     f"{s.prefetch.batches.tokens_read:,}")
        if state.losses:
            log.info("val loss %.4f nats/token vs the corpus's unigram entropy %.4f: what a model "
                     "that ignores context scores", state.losses["val"], s.dataset.unigram_entropy())
        write_promised_files(s)
    write_summary(s, state, status)
    if not finished and s.dist.is_main:
        if s.can_plot:
            _plot(s.run_dir)
        if s.pruned:
            log.info("trial %d of the search pruned at iteration %d (checkpoint saved): its val loss "
                     "was worse than the other trials' there", s.search.number, state.it)
        else:
            log.warning("stopped at iteration %d; checkpoint saved. Resume with the same command, or "
                        "`python launch.py init_from=resume run=%s`", state.it, s.run_dir)
    s.metrics.close()
    if not s.dist.is_main:
        return {"status": status, "stop_signal": signal.Signals(s.stop_signal).name if s.stop_signal else None}
    return json.loads((s.run_dir / "summary.json").read_text())


# ----------------------------------------------------------------------------------------------
# helpers

def _agree(flag: bool, dist) -> bool:
    """Every rank must take the same branch (a save is collective): any rank's stop stops all."""
    return distributed.any_rank(flag)


def _nan_message(after: int, at: int, last_loss, where: str = "training",
                 then: str = "To skip bad steps instead of stopping: task.on_nan=skip") -> str:
    when = f"at iteration {at}" if at - after <= 1 else f"between iterations {after} and {at}"
    last = f"{last_loss:.4f}" if last_loss is not None else "none logged yet"
    return (f"the {where} loss became NaN or infinite {when} (last good training loss: {last}). "
            "Stopped before saving it: the checkpoints in ckpt/, if any, are from before and "
            "untouched. Likely causes: a learning rate too high (lower optim.lr or lengthen "
            "optim.warmup_iters), float16 overflow (use hardware.dtype=bfloat16 or float32), or bad "
            f"data. {then}")


def _plot(run_dir: Path) -> bool:
    """Draw run_dir/loss.png; False (after one warning) if it cannot be drawn, so a missing
    matplotlib or a plotting bug never costs a run."""
    try:
        from nanogpt.scaling.plot import plot_run

        plot_run(run_dir)
        return True
    except Exception as e:
        log.warning("could not draw loss.png (%s: %s); training goes on without it", type(e).__name__, e)
        return False


def write_promised_files(s: Training) -> None:
    """What a finished run writes besides its training checkpoints (rank 0). A sharded run is
    consolidated first (ckpt/last.pt, ckpt/best.pt: what sample, eval and export read), and
    samples from those weights: rank 0 alone cannot run a sharded model. Then the samples, with
    the task's sampling settings: samples.txt written whole (temp file, fsync, rename), so a kill
    leaves all of them or none."""
    tcfg, model = s.tcfg, s.model
    if s.sharded:
        dcp.consolidate(s.run_dir)
        if s.dist.enabled:
            model = load_run(s.run_dir, "last")[0].to(s.rt.device)
    if tcfg.num_samples > 0:
        texts = generate_texts(model, s.tokenizer, "", tcfg.num_samples, tcfg.sample_tokens,
                               tcfg.temperature, tcfg.top_k, s.cfg.seed, s.rt, with_prompt=False)
        s.metrics.samples(texts)
        for text in texts:
            print(f"---------- sample ----------\n{text}", flush=True)
