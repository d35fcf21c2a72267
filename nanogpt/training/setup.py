"""What a training run is built from: `setup()` turns the config into a `Training` (model,
optimizer, scaler, batches, logger, ...) and a `TrainState` (where the run stands), restored from
the run's checkpoint when there is one. nanogpt.training.loop runs the loop over them."""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanogpt.checkpoint import sharded as dcp
from nanogpt.checkpoint import single as checkpoint
from nanogpt.config import model_args
from nanogpt.data.batches import Batches, Prefetcher, TokenDataset
from nanogpt.data.catalog import open_dataset
from nanogpt.data.packing import check_documents
from nanogpt.errors import UserError
from nanogpt.evals.bpb import token_bytes_table
from nanogpt.evals import core as core_eval
from nanogpt.evals.hellaswag import DuringTraining
from nanogpt.evals.loss import EvalPlan, plan_evaluation
from nanogpt.model import GPT, GPTConfig
from nanogpt.run import rundir
from nanogpt.run.loggers import run_record
from nanogpt.run.metrics import Heartbeat, MetricsLogger
from nanogpt.run.search import TrialReporter, reporter_from_env
from nanogpt.runtime import distributed, parallel
from nanogpt.runtime.hardware import Runtime, peak_flops_info, runtime, why_compile
from nanogpt.tokenizer import load_tokenizer
from nanogpt.training import branch
from nanogpt.training.guards import NanGuard, StopRequest
from nanogpt.training.optim import check_resumable, make_optimizer
from nanogpt.training.resume import (
    check_resume,
    check_same_data,
    load_latest,
    tokens_trained,
)
from nanogpt.training.schedule import Schedule
from nanogpt.training.step import Step

log = logging.getLogger("nanogpt")

@dataclass
class TrainState:
    """Where the run stands: everything a resume needs besides the model, optimizer and scaler
    states and the RNG states (which `save_checkpoint` gathers from every rank)."""
    tokens_per_step: int  # this session's batch (not saved: the config says it)
    it: int = 0  # optimizer steps done
    best_val: float = math.inf
    losses: dict | None = None  # the latest evaluation: train, val, val_se, and the iteration
    tokens_before: int = 0  # tokens trained beyond it x tokens_per_step (a resume changed the batch)
    saved_at: int | None = None  # the iteration last.pt holds
    last_loss: float | None = None  # the last finite training loss logged, for the NaN message
    bad_steps: int = 0  # non-finite steps skipped in a row (task.on_nan=skip)
    best_bpb: float | None = None  # the val bits per byte of the best val loss (nanogpt.evals.bpb)
    branched_from: dict | None = None  # a cooldown branch's parent run and iteration (nanogpt.training.branch)

    def tokens_at(self, it: int) -> int:
        """Tokens trained by iteration `it`, true across a resume that changed the batch."""
        return it * self.tokens_per_step + self.tokens_before

    def state_dict(self) -> dict:
        return {"iter": self.it, "best_val_loss": self.best_val, "eval_losses": self.losses,
                "tokens": self.tokens_at(self.it), "tokens_per_step": self.tokens_per_step,
                "best_val_bpb": self.best_bpb, "branched_from": self.branched_from}

    def load_state_dict(self, ckpt: dict, rank: int = 0) -> None:
        """From a checkpoint (any version: fields it lacks keep their defaults); restores this
        rank's RNG states too."""
        self.it = self.saved_at = ckpt["iter"]
        self.best_val = ckpt.get("best_val_loss", math.inf)
        self.losses = checkpoint.eval_losses_at(ckpt, self.it)  # a run stopped after its final eval
        self.tokens_before = tokens_trained(ckpt, self.it, self.tokens_per_step) - self.it * self.tokens_per_step
        self.best_bpb, self.branched_from = ckpt.get("best_val_bpb"), ckpt.get("branched_from")
        if ckpt.get("rng") and rank < len(ckpt["rng"]):
            checkpoint.set_rng_state(ckpt["rng"][rank])


@dataclass
class Meter:
    """This session's clock: wall time, the rate since the last log, time spent evaluating."""
    t_start: float = field(default_factory=time.perf_counter)
    t_last: float = 0.0
    iters_since_log: int = 0
    tokens_per_s: float | None = None
    eval_time: float = 0.0

    def __post_init__(self):
        self.t_last = self.t_start

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


@dataclass
class Training:
    """What a run trains with, built once by `setup()`."""
    cfg: object
    run_dir: Path
    dist: distributed.Dist
    rt: Runtime
    dataset: TokenDataset
    gpt_config: GPTConfig
    model: GPT  # sharded in place under FSDP
    eval_model: torch.nn.Module  # what evaluation calls: under DDP never the wrapper (ranks score different batches)
    step: Step
    schedule: Schedule
    max_iters: int
    flops_per_token: int
    eval_batches: Batches
    eval_plan: EvalPlan
    metrics: MetricsLogger
    start_iter: int  # where this session started (it evaluates there only on a fresh start)
    config_dict: dict
    tokenizer: object | None  # for the end-of-run samples (rank 0)
    byte_table: torch.Tensor | None  # each token's UTF-8 bytes, for bits per byte (nanogpt.evals.bpb)
    can_plot: bool  # loss.png is drawn (rank 0, task.plot, and drawing has not failed)
    peak: float | None = None  # the device's FLOP/s for MFU (rank 0)
    hellaswag: DuringTraining | None = None  # task.hellaswag_interval: scored and logged in the loop
    core: core_eval.DuringTraining | None = None  # task.core_interval: likewise
    resume_record: dict | None = None  # the settings a resume changed, for metrics.jsonl after its first step
    search: TrialReporter | None = None  # the Optuna trial of a search (-m hydra/sweeper=optuna), or None
    pruned: bool = False  # the search's pruner stopped this run at an evaluation
    prefetch: Prefetcher | None = None  # these three last: setup starts them when nothing can fail
    stop: StopRequest | None = None
    meter: Meter | None = None
    stop_signal: int | None = None  # the signal that stopped the run, the same on every rank
    weights: dict | None = None  # where pretrained weights came from (nanogpt.hf.weights.weights_source)
    bar: object | None = None  # the live progress bar on a terminal (nanogpt.training.loop.live_progress)

    @property
    def tcfg(self):
        return self.cfg.task

    @property
    def sharded(self) -> bool:
        """Are this run's checkpoints sharded (torch.distributed.checkpoint, ckpt/*.dcp)?"""
        return parallel.sharded_checkpoints(self.cfg.hardware)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def guard(self) -> NanGuard:
        return self.step.guard


# ----------------------------------------------------------------------------------------------
# setting up: data, what to start from, the model, the optimizer, resume

def finished_run(cfg, run_dir: Path) -> dict | None:
    """The summary of a run that already finished, when the command does not ask to train it
    further (init_from=resume): then there is nothing to do."""
    done = rundir.finished_summary(run_dir)
    if done is None or cfg.init_from == "resume":
        return None
    missing = rundir.missing_outputs(run_dir, done)
    if missing:  # its summary was written first (an older nanogpt), then the run was killed
        log.info("%s finished training but %s missing: writing %s now", run_dir,
                    " and ".join(missing) + (" is" if len(missing) == 1 else " are"),
                    "it" if len(missing) == 1 else "them")
        return None
    log.info("%s already finished (best val loss %s); nothing to do. To train further: "
             "init_from=resume run=%s task.max_iters=N", run_dir, done.get("best_val_loss"), run_dir)
    return done


def setup(cfg, run_dir: Path, dist: distributed.Dist) -> tuple[Training, TrainState]:
    tcfg, hw = cfg.task, cfg.hardware
    rt = runtime(hw, dist.local_rank, dist.cpus)
    distributed.setup(dist, hw.backend, rt.device)
    dataset = _open_data(cfg.data, dist)
    # the end-of-run samples' tokenizer, loaded now: a missing BPE rank file fails before training
    tokenizer = load_tokenizer(dataset.meta["tokenizer"]) if tcfg.num_samples > 0 and dist.is_main else None
    hellaswag = DuringTraining.setup(tcfg, dataset.meta["tokenizer"], dist)  # a bad file fails before training
    core = core_eval.DuringTraining.setup(tcfg, dataset.meta["tokenizer"], dist)  # so does a bad bundle
    resume_path, ckpt = _checkpoint_to_resume(cfg, run_dir, dist)
    cfg = with_weights_shape(cfg, ckpt)  # the record (config, summary, loggers) says what is trained
    config_dict = dataclasses.asdict(cfg)
    if dist.is_main:
        record_trained_model(run_dir, config_dict["model"])
    branch_point = None  # a new cooldown branch starts from its parent's kept checkpoint
    if ckpt is None and tcfg.branch_from:
        resume_path, ckpt = branch.load_point(tcfg.branch_from, tcfg.branch_iter)
        branch_point = {"run": str(Path(tcfg.branch_from).resolve()), "iter": ckpt["iter"]}
    model, gpt_config, resume_changes = build_model(cfg, dataset, ckpt, resume_path, config_dict, run_dir, dist)
    dataset.check_block_size(gpt_config.block_size)
    # a packing or document mask the data cannot give is refused before any work
    check_documents(dataset, cfg.data.packing, gpt_config.doc_mask, gpt_config.block_size)
    # which weights a finetune started from (hub commit or directory): recorded in summary.json
    # and in every checkpoint, so a resumed run still says it
    weights = getattr(model, "weights_source", None) or (ckpt or {}).get("weights")
    model.to(rt.device, rt.param_dtype)
    byte_table = distributed.broadcast_object(  # rank 0 reads the tokenizer; all ranks agree
        token_bytes_table(dataset.meta["tokenizer"], gpt_config.vocab_size) if dist.is_main else None)

    micro, block = hw.micro_batch_size, gpt_config.block_size
    flops_per_token = model.flops_per_token(block)
    tokens_per_step, accum, max_iters = plan_steps(tcfg, micro * block, dist.world_size, micro, flops_per_token,
                                                   ckpt)
    schedule = Schedule(cfg.optim, max_iters)
    if branch_point:
        branch.check_continuation(ckpt, resume_path, cfg.data.name, cfg.seed, tokens_per_step, max_iters,
                                  schedule)
    # what the step and the evaluation call; the optimizer after it: FSDP shards the parameters
    train_model, eval_model = parallel.prepare(model, hw, dist, rt)
    optimizer = make_optimizer(model, cfg.optim, rt.device_type)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.needs_grad_scaler)
    state = TrainState(tokens_per_step)
    if ckpt is not None:
        if parallel.sharded_checkpoints(hw):  # each rank reads its shards, whatever world size wrote them
            dcp.load_into(resume_path, model, optimizer)
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.load_state_dict(ckpt, dist.rank)
        if branch_point:  # a new branch: its best is of its own evaluations
            state.best_val, state.best_bpb, state.branched_from = math.inf, None, branch_point
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ between ranks
    del ckpt

    eval_batch_size = hw.eval_batch_size or 2 * micro
    step = Step(model, train_model, optimizer, scaler, rt, accum,
                cfg.optim.grad_clip, batch=None, guard=NanGuard(rt.device, state.it),
                skip_nonfinite=tcfg.on_nan == "skip" and not rt.needs_grad_scaler, dist=dist)
    s = Training(cfg, run_dir, dist, rt, dataset, gpt_config, model, eval_model, step,
                 schedule=schedule, max_iters=max_iters, flops_per_token=flops_per_token,
                 # evaluation reads windows whatever the packing: val losses compare across packings
                 eval_batches=Batches(dataset, block, eval_batch_size, cfg.seed, rt.device,
                                      doc_mask=gpt_config.doc_mask),
                 eval_plan=plan_evaluation(tcfg, max_iters, tokens_per_step, eval_batch_size * block),
                 metrics=MetricsLogger(run_dir, dist.is_main, cfg.logger, _logged_config(config_dict, rt), state.it),
                 start_iter=state.it, config_dict=config_dict, tokenizer=tokenizer,
                 byte_table=torch.tensor(byte_table, device=rt.device) if byte_table is not None else None,
                 can_plot=dist.is_main and tcfg.plot, hellaswag=hellaswag, core=core, weights=weights,
                 search=reporter_from_env(run_dir, max_iters))
    _log_header(s, state, resume_path, resume_changes)
    # last, as nothing can fail after them: the batch thread, the signal handlers, the clock
    s.prefetch = Prefetcher(Batches(dataset, block, micro, cfg.seed, rt.device, dist.rank, dist.world_size,
                                    cfg.data.packing, gpt_config.doc_mask), state.it, accum)
    step.batch = s.prefetch.get
    if dist.is_main and accum > 1:  # a step of many micro-batches says how far it is (every ~10 s)
        step.on_micro = Heartbeat(max_iters)
    # in a SLURM job, submitit's pre-emption / time-limit signal also saves and stops (then requeues)
    requeue = (dist.requeue_signal,) if dist.requeue_signal else ()
    s.stop = StopRequest((signal.SIGTERM, signal.SIGINT, *requeue))
    s.meter = Meter()
    return s, state


def _logged_config(config_dict: dict, rt) -> dict:
    """What the dashboards record: the config with the device and dtype as resolved (not `auto`),
    the chosen presets and the command line's overrides."""
    return run_record(config_dict, rt.device, rt.dtype, rundir.command_presets(), rundir.command_overrides())


def plan_steps(tcfg, tokens_per_micro: int, world: int, micro: int, flops_per_token: int,
               ckpt: dict | None = None):
    """Gradient accumulation and the number of iterations from the configured budget. A token
    or FLOP budget counts what the checkpoint resumed from has trained, at the batch it had: a
    resume with another batch size trains the budget's remaining tokens, not budget / new batch."""
    tokens_per_step, accum = accumulation(tcfg.tokens_per_step, tokens_per_micro, world, micro)
    max_iters = tcfg.max_iters
    budget = tcfg.max_flops / flops_per_token if tcfg.max_flops else tcfg.max_tokens  # in tokens
    if budget:
        it = ckpt["iter"] if ckpt else 0
        done = tokens_trained(ckpt, it, tokens_per_step) if ckpt else 0
        max_iters = max(1, it, it + round((budget - done) / tokens_per_step))
    return tokens_per_step, accum, max_iters


def accumulation(tokens_per_step: int | None, tokens_per_micro: int, world: int, micro: int) -> tuple[int, int]:
    """(tokens per optimizer step, micro-batches per rank per step): task.tokens_per_step, or one
    micro-batch per rank when it is not set."""
    per_pass = tokens_per_micro * world
    tokens_per_step = tokens_per_step or per_pass
    if tokens_per_step % per_pass:
        raise UserError(
            f"task.tokens_per_step={tokens_per_step} is not a multiple of micro_batch_size x "
            f"block_size x world_size = {micro} x {tokens_per_micro // micro} x {world} = {per_pass}: "
            "change hardware.micro_batch_size or task.tokens_per_step")
    return tokens_per_step, tokens_per_step // per_pass


def _open_data(dcfg, dist) -> TokenDataset:
    """Rank 0 prepares the embedded corpus on first use; the others wait for it."""
    if dist.is_main:
        dataset = open_dataset(dcfg.name, dcfg.root, dcfg.auto_prepare)
    distributed.barrier()
    if not dist.is_main:
        dataset = open_dataset(dcfg.name, dcfg.root, False)
    return dataset


def _checkpoint_to_resume(cfg, run_dir: Path, dist) -> tuple[Path | None, dict | None]:
    """The run's newest loadable checkpoint, or (None, None) for a fresh start."""
    mcfg = cfg.model
    if cfg.init_from == "pretrained" and not (mcfg.pretrained or mcfg.path):
        raise UserError("init_from=pretrained needs weights: model=pretrained/gpt2 (or gpt2_medium, "
                        "gpt2_large, gpt2_xl), or model.path=DIR for a local Hugging Face directory")
    sharded = parallel.sharded_checkpoints(cfg.hardware)
    dcp.check_strategy(run_dir, sharded)  # a run keeps its checkpoint format
    if dist.is_main:  # launch.py holds the run's lock: no other process is writing these
        rundir.remove_stale_temps(run_dir / "ckpt")
    if sharded:  # the train state now; the weights once the model is sharded (setup)
        found = dcp.latest(run_dir, repair=True) if dist.is_main else None
        resume_path = distributed.broadcast_object(found.path if found else None)
        ckpt = dcp.load_state(resume_path) if resume_path else None
    else:
        resume_path, ckpt = load_latest(run_dir, repair=dist.is_main)
    if distributed.broadcast_object(ckpt is not None) != (ckpt is not None):
        raise UserError(f"ranks 0 and {dist.rank} disagree on whether {run_dir / 'ckpt'} holds a "
                        "checkpoint: the run directory must be on a filesystem that every node shares")
    if cfg.init_from == "resume" and ckpt is None:
        raise UserError(f"init_from=resume but {run_dir} has no checkpoint (ckpt/last.pt or "
                        "ckpt/best.pt): start it with init_from=scratch")
    return resume_path, ckpt


def build_model(cfg, dataset, ckpt, resume_path, config_dict, run_dir, dist) -> tuple[GPT, GPTConfig, dict]:
    """The model to train: the checkpoint's (checked against the config), OpenAI's weights, or
    a fresh one; and what a resume changed in the settings (rundir's record of it)."""
    mcfg = cfg.model
    if ckpt is not None:
        # the data first: another dataset (of another vocabulary) is refused as such, not as a shape
        check_same_data(ckpt, config_dict, dataset.meta["tokenizer"], run_dir)
        gpt_config = model_args(mcfg, dataset.vocab_size)
        if mcfg.pretrained or mcfg.path:  # finetuning may crop the block: the checkpoint knows
            gpt_config.vocab_size = ckpt["model_args"]["vocab_size"]
        checkpoint.check_shape(ckpt, gpt_config, resume_path)
        changes = check_resume(ckpt, config_dict, dataset.meta["tokenizer"], dist.world_size, run_dir)
        check_resumable(ckpt, cfg.optim, resume_path)
        model = GPT(gpt_config)
        if "model" in ckpt:  # a sharded checkpoint's weights load once the model is sharded
            model.load_state_dict(ckpt["model"])
        return model, gpt_config, changes
    if mcfg.pretrained or mcfg.path:
        from nanogpt.hf.weights import describe_source, load_pretrained

        model = load_pretrained(mcfg.pretrained, path=mcfg.path, dropout=mcfg.dropout, revision=mcfg.revision)
        if dist.is_main:
            log.info("weights loaded: %s (%d layers x %d wide, %d heads, block %d, vocabulary %d)",
                     describe_source(model.weights_source), model.config.n_layer, model.config.n_embd,
                     model.config.n_head, model.config.block_size, model.config.vocab_size)
        if dataset.vocab_size > model.config.vocab_size:
            raise UserError(f"the data's vocabulary ({dataset.vocab_size}) is larger than the "
                            f"pretrained model's ({model.config.vocab_size}): use GPT-2 BPE data")
        if mcfg.block_size < model.config.block_size:
            model.crop_block_size(mcfg.block_size)
        model.config.doc_mask = mcfg.doc_mask  # how it attends, not what its weights are
        return model, model.config, {}
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    gpt_config = model_args(mcfg, dataset.vocab_size)
    return GPT(gpt_config), gpt_config, {}


def with_weights_shape(cfg, ckpt: dict | None):
    """cfg with the model section of the weights a run trains: a finetune's architecture is
    the pretrained weights' (their config.json, or the checkpoint it resumes from), whatever the
    preset said (finetune_shakespeare names gpt2's 12 x 768; model.path=DIR may hold a 2 x 64).
    The block is the smaller of the weights' and model.block_size (a finetune may crop it)."""
    mcfg = cfg.model
    if not (mcfg.pretrained or mcfg.path):
        return cfg
    if ckpt is not None and isinstance(ckpt.get("model_args"), dict):
        shape = GPTConfig.from_dict(ckpt["model_args"])
    else:
        from nanogpt.hf.weights import pretrained_shape

        shape = pretrained_shape(mcfg.pretrained, mcfg.path, mcfg.revision)
        if shape is None:  # cannot be told before loading: load_pretrained says why
            return cfg
        shape.block_size = min(shape.block_size, mcfg.block_size)
    arch = {k: v for k, v in dataclasses.asdict(shape).items() if k not in GPTConfig.NOT_ARCHITECTURE}
    model = dataclasses.replace(mcfg, **arch, pad_vocab=False,
                                pretrained=None if mcfg.path else mcfg.pretrained)  # path wins
    return dataclasses.replace(cfg, model=model)


def record_trained_model(run_dir: Path, model: dict) -> None:
    """.hydra/config.yaml's model section as trained (with_weights_shape), rewritten whole
    (temp file, rename) when Hydra's composition said otherwise."""
    from omegaconf import OmegaConf

    from nanogpt.io import replace_atomically

    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return
    recorded = OmegaConf.load(path)
    if "model" not in recorded or OmegaConf.to_container(recorded.model) == model:
        return
    recorded.model = model
    replace_atomically(path, OmegaConf.to_yaml(recorded), ".yaml.tmp")


def _log_header(s: Training, state: TrainState, resume_path, resume_changes: dict) -> None:
    if not s.dist.is_main:
        return
    rt, hw, tcfg, model = s.rt, s.cfg.hardware, s.tcfg, s.model
    peak, peak_source = peak_flops_info(rt)
    s.peak = peak
    micro, block = hw.micro_batch_size, s.gpt_config.block_size
    tokens_per_step, world = state.tokens_per_step, s.dist.world_size
    log.info("hardware: %s | %s | %s | %s | peak for MFU: %s", rt.why["device"], rt.why["dtype"],
             rt.why["threads"], why_compile(hw.compile, rt.device),
             f"{peak / 1e9:,.0f} GFLOP/s ({peak_source})" if peak else peak_source)
    log.info("model %.2fM parameters (%.2fM non-embedding) | %d tokens/step = %d micro x %d "
             "block x %d accum x %d ranks | %d iters, %s tokens | %s %s compile=%s | run dir %s",
             model.num_params(False) / 1e6, non_embedding_params(model) / 1e6, tokens_per_step, micro,
             block, s.step.accum, world, s.max_iters, f"{s.max_iters * tokens_per_step:,}", rt.device,
             str(rt.dtype).replace("torch.", ""), hw.compile, s.run_dir.resolve())
    log.info("evaluation: %d batches of %d x %d tokens per split every %d iterations, %d at the "
             "end: ~%.1f%% of the run's compute", s.eval_plan.iters, s.eval_batches.batch_size, block,
             tcfg.eval_interval, s.eval_plan.final_iters, 100 * s.eval_plan.share)
    if state.it:
        log.info("resuming from %s at iteration %d", resume_path, state.it)
    if resume_changes:  # recorded once a step has run with them (nanogpt.training.loop.record_resume)
        s.resume_record = {"kind": "resume", "iter": state.it, "changed": resume_changes}


def non_embedding_params(model: GPT) -> int:
    """Kaplan's N: parameters outside the token and position embeddings and the LM head."""
    return model.num_params_kaplan()
