"""The training loop, top to bottom: set up, resume, then step / log / evaluate / checkpoint.

One process or many (DDP): every rank runs this same code; rank 0 alone writes. The loop's
state is (model, optimizer, scaler, iter, best val loss, RNG): all of it goes into the
checkpoint, and batches are a function of the iteration, so a resumed run is bit-identical to
one that never stopped.
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
from pathlib import Path

import torch
from nanogpt import checkpoint, dcp, distributed, fsdp, parallel, rundir
from nanogpt.build import load_run, model_args, open_dataset
from nanogpt.data import Batches, Prefetcher
from nanogpt.errors import UserError
from nanogpt.evaluate import estimate_loss, plan_evaluation
from nanogpt.guards import NanGuard, StopRequest
from nanogpt.hardware import peak_flops_info, runtime, why_compile
from nanogpt.metrics import MetricsLogger, mfu
from nanogpt.model import GPT
from nanogpt.optim import Schedule, make_optimizer, set_lr
from nanogpt.resume import check_resume, tokens_trained
from nanogpt.sample import generate_texts
from nanogpt.tokenizer import load_tokenizer

log = logging.getLogger("nanogpt")


def plan_steps(tcfg, tokens_per_micro: int, world: int, micro: int, flops_per_token: int):
    """Gradient accumulation and the number of iterations from the configured budget."""
    tokens_per_step = tcfg.tokens_per_step or tokens_per_micro * world
    per_pass = tokens_per_micro * world
    if tokens_per_step % per_pass:
        raise UserError(
            f"task.tokens_per_step={tokens_per_step} is not a multiple of micro_batch_size x "
            f"block_size x world_size = {micro} x {tokens_per_micro // micro} x {world} = {per_pass}: "
            "change hardware.micro_batch_size or task.tokens_per_step")
    accum = tokens_per_step // per_pass
    max_iters = tcfg.max_iters
    if tcfg.max_flops:
        max_iters = max(1, round(tcfg.max_flops / (flops_per_token * tokens_per_step)))
    elif tcfg.max_tokens:
        max_iters = max(1, round(tcfg.max_tokens / tokens_per_step))
    return tokens_per_step, accum, max_iters


def run(cfg, run_dir: Path, dist: distributed.Dist) -> float | None:
    """task=train: one training process per run directory (rank 0 holds the run's lock while it
    trains). Returns the final val loss, what a sweeper optimises."""
    from nanogpt.rundir import command_overrides, lock_run, refuse_scratch_over_checkpoints

    refuse_scratch_over_checkpoints(run_dir, command_overrides())
    with lock_run(run_dir) if dist.is_main else contextlib.nullcontext():
        summary = train(cfg, run_dir, dist)
    if summary.get("status") == "interrupted":
        # checkpoint saved; exit as a signalled program does, so `&&` chains and job schedulers
        # see that the run did not finish, and a local sweep stops here instead of going on to
        # its next point
        sys.exit(128 + signal.Signals[summary["stop_signal"]].value)
    return summary.get("final_val_loss")


def train(cfg, run_dir: Path, dist: distributed.Dist) -> dict:
    tcfg, mcfg, ocfg, hw = cfg.task, cfg.model, cfg.optim, cfg.hardware
    run_dir = Path(run_dir)
    rt = runtime(hw, dist.local_rank, dist.cpus)
    distributed.setup(dist, hw.backend, rt.device)
    config_dict = dataclasses.asdict(cfg)

    # ---- data: rank 0 prepares the embedded corpus on first use, the others wait for it
    if dist.is_main:
        dataset = open_dataset(cfg.data.name, cfg.data.root, cfg.data.auto_prepare)
    distributed.barrier()
    if not dist.is_main:
        dataset = open_dataset(cfg.data.name, cfg.data.root, False)
    tokenizer_meta = dataset.meta["tokenizer"]
    # the end-of-run samples' tokenizer, loaded now: a missing BPE rank file fails before training
    tokenizer = load_tokenizer(tokenizer_meta) if tcfg.num_samples > 0 and dist.is_main else None

    # ---- what to start from: a checkpoint of this run, OpenAI's weights, or scratch
    if cfg.init_from == "pretrained" and not (mcfg.pretrained or mcfg.path):
        raise UserError("init_from=pretrained needs weights: model=pretrained/gpt2 (or gpt2_medium, "
                        "gpt2_large, gpt2_xl), or model.path=DIR for a local Hugging Face directory")
    sharded = hw.strategy in parallel.SHARDED_CHECKPOINTS  # ckpt/*.dcp, one shard per rank
    has_ckpt = (any((run_dir / "ckpt" / name).exists() for name in checkpoint.RESUMABLE)
                or dcp.has_sharded(run_dir / "ckpt"))
    done = rundir.read_summary(run_dir)
    if has_ckpt and done is not None:
        if done.get("status") == "finished" and cfg.init_from != "resume":
            log.info("%s already finished (best val loss %s); nothing to do. To train further: "
                     "init_from=resume run=%s task.max_iters=N", run_dir, done.get("best_val_loss"), run_dir)
            return done
    dcp.check_strategy(run_dir, sharded)
    if dist.is_main:  # launch.py holds the run's lock: no other process is writing these
        checkpoint.remove_stale_temps(run_dir / "ckpt")
        dcp.remove_orphans(run_dir / "ckpt")
    if sharded:  # the train state now; the weights once the model is sharded
        found = dcp.latest(run_dir, repair=dist.is_main) if dist.is_main else None
        resume_path = distributed.broadcast_object(found.path if found else None)
        ckpt = dcp.load_state(resume_path) if resume_path else None
    else:
        resume_path, ckpt = checkpoint.load_latest(run_dir, repair=dist.is_main)
    if distributed.broadcast_object(ckpt is not None) != (ckpt is not None):
        raise UserError(f"ranks 0 and {dist.rank} disagree on whether {run_dir / 'ckpt'} holds a "
                        "checkpoint: the run directory must be on a filesystem that every node shares")
    if cfg.init_from == "resume" and ckpt is None:
        raise UserError(f"init_from=resume but {run_dir} has no checkpoint (ckpt/last.pt or "
                        "ckpt/best.pt): start it with init_from=scratch")

    resume_changes = {}
    if ckpt is not None:
        gpt_config = model_args(mcfg, dataset.vocab_size)
        if mcfg.pretrained or mcfg.path:  # finetuning may crop the block: the checkpoint knows
            gpt_config.vocab_size = ckpt["model_args"]["vocab_size"]
        checkpoint.check_shape(ckpt, gpt_config, resume_path)
        resume_changes = check_resume(ckpt, config_dict, tokenizer_meta, dist.world_size, run_dir)
        model = GPT(gpt_config)
        if not sharded:
            model.load_state_dict(ckpt["model"])
    elif mcfg.pretrained or mcfg.path:
        from nanogpt.pretrained import load_pretrained

        model = load_pretrained(mcfg.pretrained, path=mcfg.path, dropout=mcfg.dropout)
        if dataset.vocab_size > model.config.vocab_size:
            raise UserError(f"the data's vocabulary ({dataset.vocab_size}) is larger than the "
                            f"pretrained model's ({model.config.vocab_size}): use GPT-2 BPE data")
        if mcfg.block_size < model.config.block_size:
            model.crop_block_size(mcfg.block_size)
        gpt_config = model.config
    else:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        gpt_config = model_args(mcfg, dataset.vocab_size)
        model = GPT(gpt_config)
    dataset.check_block_size(gpt_config.block_size)
    model.to(rt.device, rt.param_dtype)

    micro, block = hw.micro_batch_size, gpt_config.block_size
    flops_per_token = model.flops_per_token(block)
    tokens_per_step, accum, max_iters = plan_steps(tcfg, micro * block, dist.world_size, micro, flops_per_token)
    schedule = Schedule(ocfg, max_iters)

    # what the step and the evaluation call; the optimizer comes after: FSDP shards the parameters
    train_model, eval_model = parallel.prepare(model, hw, dist, rt)
    optimizer = make_optimizer(model, ocfg, rt.device_type)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.needs_grad_scaler)
    start_iter, best_val, resumed_losses, tokens_before = 0, float("inf"), None, 0
    if ckpt is not None:
        if sharded:  # each rank reads the chunks of its shards, whatever world size wrote them
            dcp.load_into(resume_path, model, optimizer)
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter, best_val = ckpt["iter"], ckpt.get("best_val_loss", float("inf"))
        resumed_losses = checkpoint.eval_losses_at(ckpt, start_iter)  # a run stopped after its final eval
        tokens_before = tokens_trained(ckpt, start_iter, tokens_per_step) - start_iter * tokens_per_step
        if ckpt.get("rng") and dist.rank < len(ckpt["rng"]):
            checkpoint.set_rng_state(ckpt["rng"][dist.rank])
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ between ranks
    del ckpt

    def tokens_at(i: int) -> int:  # tokens trained by iteration i, true across a changed batch
        return i * tokens_per_step + tokens_before

    batches = Batches(dataset, block, micro, cfg.seed, rt.device, dist.rank, dist.world_size)
    eval_batch_size = hw.eval_batch_size or 2 * micro
    eval_batches = Batches(dataset, block, eval_batch_size, cfg.seed, rt.device)
    eval_plan = plan_evaluation(tcfg, max_iters, tokens_per_step, eval_batch_size * block)
    metrics = MetricsLogger(run_dir, dist.is_main, cfg.logger, config_dict, start_iter)
    peak, peak_source = peak_flops_info(rt) if dist.is_main else (None, "")
    if dist.is_main:
        log.info("hardware: %s | %s | %s | %s | peak for MFU: %s", rt.why["device"], rt.why["dtype"],
                 rt.why["threads"], why_compile(hw.compile, rt.device),
                 f"{peak / 1e9:,.0f} GFLOP/s ({peak_source})" if peak else peak_source)
        log.info("model %.2fM parameters (%.2fM non-embedding) | %d tokens/step = %d micro x %d "
                 "block x %d accum x %d ranks | %d iters, %s tokens | %s %s compile=%s | run dir %s",
                 model.num_params(False) / 1e6, _non_embedding(model) / 1e6, tokens_per_step, micro,
                 block, accum, dist.world_size, max_iters, f"{max_iters * tokens_per_step:,}", rt.device,
                 str(rt.dtype).replace("torch.", ""), hw.compile, run_dir.resolve())
        log.info("evaluation: %d batches of %d x %d tokens per split every %d iterations, %d at the "
                 "end: ~%.1f%% of the run's compute", eval_plan.iters, eval_batch_size, block,
                 tcfg.eval_interval, eval_plan.final_iters, 100 * eval_plan.share)
        if start_iter:
            log.info("resuming from %s at iteration %d", resume_path, start_iter)
        if resume_changes:
            metrics.log({"kind": "resume", "iter": start_iter, "changed": resume_changes})

    def save(it: int, name: str = "last.pt", link: str | None = None):
        """All ranks call this (to gather RNG states); rank 0 writes `name`, and `link` as a copy
        of it (a second real file: damage to one leaves the other). A non-finite loss or weight is never written: the good checkpoints stay."""
        nonlocal saved_at
        guard_ok = tcfg.on_nan != "stop" or guard.finite(it)  # skip mode skipped its bad steps
        if _agree(not (guard_ok and fsdp.all_finite(model.parameters())), dist):
            raise UserError(_nan_message(guard.checked_at, it, last_loss))
        rng = [checkpoint.rng_state()]
        if dist.enabled:
            rng = [None] * dist.world_size
            torch.distributed.all_gather_object(rng, checkpoint.rng_state())
        state = {"model_args": dataclasses.asdict(gpt_config),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None, "iter": it,
                 "best_val_loss": best_val, "rng": rng, "config": config_dict,
                 "tokenizer": tokenizer_meta, "dataset": dataset.meta.get("dataset"),
                 "eval_losses": losses, "tokens": tokens_at(it)}
        if sharded:  # a collective: every rank writes its shards
            links = tuple(n.replace(".pt", ".dcp") for n in (name, link) if n)
            dcp.save(run_dir / "ckpt", it, model, optimizer, state if dist.is_main else None, links, dist)
        elif dist.is_main:
            state.update(model=checkpoint.clean_state_dict(model.state_dict()), optimizer=optimizer.state_dict())
            checkpoint.atomic_save(state, run_dir / "ckpt" / name)
            if link:
                checkpoint.copy_checkpoint(run_dir / "ckpt" / name, run_dir / "ckpt" / link)
        distributed.barrier()
        saved_at = it

    def write_summary(status: str, it: int, losses: dict | None, elapsed: float, tok_s: float | None):
        metrics.summary({
            "status": status, "params": model.num_params(False),
            "params_non_embedding": _non_embedding(model), "tokens": tokens_at(it),
            "flops": float(tokens_at(it) * flops_per_token), "flops_per_token": flops_per_token,
            "iters": it, "max_iters": max_iters, "tokens_per_step": tokens_per_step,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "final_val_loss": losses["val"] if losses else None,
            "final_train_loss": losses["train"] if losses else None,
            "final_val_loss_se": losses.get("val_se") if losses else None, "wall_time_s": elapsed,
            "eval_time_s": eval_time,
            "tokens_per_s": tok_s, "mfu": mfu(flops_per_token, tok_s, peak, dist.world_size) if tok_s else None,
            "world_size": dist.world_size, "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""),
            "stop_signal": signal.Signals(stop.signum).name if stop.signum else None, "config": config_dict})

    guard = NanGuard(rt.device, start_iter)
    saved_at = start_iter if start_iter else None  # the iteration last.pt holds
    can_plot = dist.is_main and tcfg.plot
    # in a SLURM job, submitit's pre-emption / time-limit signal also saves and stops (then requeues)
    requeue = (dist.requeue_signal,) if dist.requeue_signal else ()
    stop = StopRequest((signal.SIGTERM, signal.SIGINT, *requeue))
    prefetch = Prefetcher(batches, start_iter, accum)
    t_start = t_last = time.perf_counter()
    it, losses, status, tok_s, bad_steps, last_loss = start_iter, resumed_losses, "running", None, 0, None
    iters_since_log, eval_time = 0, 0.0  # eval_time: seconds spent evaluating, this session
    try:
        while True:
            lr = schedule(it)
            set_lr(optimizer, lr)

            # evaluate and checkpoint (not again at the iteration we resumed at)
            if (it % tcfg.eval_interval == 0 or it == max_iters) and (it > start_iter or start_iter == 0):
                t_eval, errors = time.perf_counter(), {}
                losses = estimate_loss(eval_model, eval_batches, eval_plan.iters_at(it, max_iters), rt, dist,
                                       errors=errors)
                eval_time += time.perf_counter() - t_eval
                if not all(math.isfinite(v) for v in losses.values()):
                    raise UserError(_nan_message(guard.checked_at, it, last_loss, "evaluation"))
                losses["iter"] = it  # saved with the checkpoint: the final losses survive a kill
                losses["val_se"] = errors["val"]
                improved = losses["val"] < best_val
                best_val = min(best_val, losses["val"])
                if dist.is_main:
                    log.info("iter %d: train loss %.4f, val loss %.4f%s", it, losses["train"], losses["val"],
                             f" ± {errors['val']:.4f}" if errors["val"] is not None else "")
                    metrics.log({"kind": "eval", "iter": it, "tokens": tokens_at(it),
                                 "train_loss": losses["train"], "val_loss": losses["val"],
                                 "val_loss_se": errors["val"], "time_s": time.perf_counter() - t_start})
                if it > 0:
                    if improved:  # best.pt first: a kill before the copy leaves it the newest
                        save(it, "best.pt", link="last.pt")
                    elif tcfg.always_save_checkpoint or it == max_iters:
                        save(it, "last.pt")
                    write_summary("running", it, losses, time.perf_counter() - t_start, tok_s)
                if can_plot:  # loss.png stays current for whoever watches a long run
                    can_plot = _plot(run_dir)
            if tcfg.save_interval and it % tcfg.save_interval == 0 and saved_at != it and it > 0:
                save(it, "last.pt")
            if it >= max_iters:
                status = "finished"
                break
            if _agree(stop.requested, dist):
                if saved_at != it:
                    save(it, "last.pt")
                status = "interrupted"
                break

            # one optimizer step: accum micro-batches, gradients synced on the last one only
            step_loss = torch.zeros((), device=rt.device, dtype=rt.param_dtype)  # the mean over micro-batches (and ranks, below)
            for m in range(accum):
                x, y = prefetch.get(it, m)
                with parallel.accumulating(train_model, sync=m == accum - 1):
                    with rt.autocast():
                        # the logits (B x T x vocab) go at once: not held through the backward
                        loss = train_model(x, y)[1] / accum
                    guard.add(loss)
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            if ocfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                norm = fsdp.clip_grad_norm_(model.parameters(), ocfg.grad_clip)  # sharded too
                if not rt.needs_grad_scaler:  # float16's GradScaler skips inf gradients itself
                    guard.add(norm)
            if tcfg.on_nan == "skip" and not rt.needs_grad_scaler:  # one host sync per step
                if _agree(not guard.finite(it + 1), dist):
                    bad_steps += 1
                    log.warning("iter %d: non-finite loss or gradient, update skipped (%d in a row)", it, bad_steps)
                    optimizer.zero_grad(set_to_none=True)
                    if bad_steps >= 10:
                        raise UserError(_nan_message(it + 1 - bad_steps, it + 1, last_loss) +
                                        " (10 steps in a row were skipped)")
                    it += 1
                    guard.reset(it)
                    continue
                bad_steps = 0
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            it += 1
            iters_since_log += 1

            if (tcfg.on_nan == "stop" and it % tcfg.log_interval == 0
                    and _agree(not guard.finite(it), dist)):
                raise UserError(_nan_message(guard.checked_at, it, last_loss))
            if it % tcfg.log_interval == 0:
                distributed.all_reduce_mean(step_loss)  # every rank joins, at log steps only
            if it % tcfg.log_interval == 0 and dist.is_main:
                loss_val = step_loss.item()  # the one host sync, at log steps only
                if math.isfinite(loss_val):  # float16 steps the GradScaler skipped can be inf
                    last_loss = loss_val
                now = time.perf_counter()
                dt = (now - t_last) / iters_since_log
                t_last, iters_since_log = now, 0
                tok_s = tokens_per_step / dt
                step_mfu = mfu(flops_per_token, tok_s, peak, dist.world_size)
                log.info("iter %d: loss %.4f, lr %.2e, %.1f ms/iter, %s tok/s%s", it, loss_val, lr,
                         dt * 1000, f"{tok_s:,.0f}", f", mfu {step_mfu * 100:.1f}%" if step_mfu else "")
                metrics.log({"kind": "train", "iter": it, "tokens": tokens_at(it), "loss": loss_val,
                             "lr": lr, "ms_per_iter": dt * 1000, "tokens_per_s": tok_s, "mfu": step_mfu,
                             "time_s": now - t_start})
    except BaseException:
        if dist.is_main:
            try:  # on a full disk these writes fail too: keep the error that says why
                write_summary("failed", it, losses, time.perf_counter() - t_start, tok_s)
                metrics.close(failed=True)
            except OSError as e:
                log.warning("could not record the failure in %s: %s", run_dir, e)
        raise
    finally:
        prefetch.close()
        stop.restore()

    elapsed = time.perf_counter() - t_start
    write_summary(status, it, losses, elapsed, tok_s)
    if status == "interrupted" and dist.is_main:
        if can_plot:
            _plot(run_dir)
        log.warning("stopped at iteration %d; checkpoint saved. Resume with the same command, or "
                    "`python launch.py init_from=resume run=%s`", it, run_dir)
    if status == "finished" and dist.is_main:
        if losses:
            log.info("val loss %.4f nats/token vs the corpus's unigram entropy %.4f: what a model "
                     "that ignores context scores", losses["val"], dataset.unigram_entropy())
        if sharded:  # the single-file weights that sample, eval and export read; sampled from here
            dcp.consolidate(run_dir)
            model = load_run(run_dir, "last")[0].to(rt.device) if dist.enabled else model
        _finish(model, run_dir, tcfg, tokenizer, metrics, rt, cfg.seed)
    metrics.close()
    if status == "interrupted":  # a SLURM job leaves here, to be requeued (or cancelled)
        distributed.end_interrupted_slurm_job(dist, stop.signum)
    return json.loads((run_dir / "summary.json").read_text()) if dist.is_main else {}


def _agree(flag: bool, dist) -> bool:
    """Every rank must take the same branch (a save is collective): any rank's stop stops all."""
    return distributed.any_rank(flag)


def _non_embedding(model: GPT) -> int:
    """Kaplan's N: parameters outside the token and position embeddings."""
    return model.num_params(non_embedding=True) - model.transformer.wte.weight.numel()


def _nan_message(after: int, at: int, last_loss, where: str = "training") -> str:
    when = f"at iteration {at}" if at - after <= 1 else f"between iterations {after} and {at}"
    last = f"{last_loss:.4f}" if last_loss is not None else "none logged yet"
    return (f"the {where} loss became NaN or infinite {when} (last good training loss: {last}). "
            "Stopped before saving it: the checkpoints in ckpt/, if any, are from before and "
            "untouched. Likely causes: a learning rate too high (lower optim.lr or lengthen "
            "optim.warmup_iters), float16 overflow (use hardware.dtype=bfloat16 or float32), or bad "
            "data. To skip bad steps instead of stopping: task.on_nan=skip")


def _plot(run_dir: Path) -> bool:
    """Draw run_dir/loss.png; False (after one warning) if it cannot be drawn, so a missing
    matplotlib or a plotting bug never costs a run."""
    try:
        from nanogpt.plot import plot_run

        plot_run(run_dir)
        return True
    except Exception as e:
        log.warning("could not draw loss.png (%s: %s); training goes on without it", type(e).__name__, e)
        return False


def _finish(model, run_dir, tcfg, tok, metrics, rt, seed):
    """Samples at the end of a finished run, with the task's sampling settings."""
    if tcfg.num_samples > 0:
        texts = generate_texts(model, tok, "", tcfg.num_samples, tcfg.sample_tokens, tcfg.temperature,
                               tcfg.top_k, seed, rt, with_prompt=False)
        for text in texts:
            print(f"---------- sample ----------\n{text}", flush=True)
            metrics.samples(text)
