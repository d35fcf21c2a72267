"""Typed config schemas, registered in Hydra's ConfigStore, and checked before any work.

Every YAML file under conf/ extends one of these dataclasses, so a typo in a key or a value of
the wrong type fails at composition time instead of being silently ignored. Each schema also
checks its values in `__post_init__` (an enumerated value against its choices, a number against
its range): `OmegaConf.to_object` runs those checks, and the run-directory callback
(nanogpt.rundir.GuardRunDir) calls it right after composition, before Hydra creates the run
directory. The core modules never see OmegaConf: they get these plain dataclasses.

Extension points (docs/contributing.md):
  * a model option: a field of `nanogpt.model.GPTConfig` (ModelConfig extends it);
  * an optimizer: a schema here (a subclass of OptimConfig) in OPTIM_SCHEMAS, its factory in
    nanogpt.optim.OPTIMIZERS, and conf/optim/<name>.yaml;
  * a task: a schema here (a subclass of TaskConfig) in TASK_SCHEMAS, its function in
    nanogpt.tasks.TASKS, and conf/task/<name>.yaml.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from nanogpt.errors import UserError
from nanogpt.model import GPTConfig
from nanogpt.schedule import COOLDOWNS, SCHEDULES

MISSING = "???"  # OmegaConf's marker for a required value (kept Hydra-free at import time)


class ConfigError(UserError):
    """A config value outside what its key accepts: names the key, the value and the valid ones."""


# ----------------------------------------------------------------------------------------------
# value checks, called from the schemas' __post_init__

def one_of(key: str, value, choices) -> None:
    if value not in choices:
        listed = [str(c) for c in choices]
        raise ConfigError(f"unknown {key}={value!r}: use {', '.join(listed[:-1])} or {listed[-1]}"
                          if len(listed) > 1 else f"unknown {key}={value!r}: use {listed[0]}")


def at_least(key: str, value, low) -> None:
    """value >= low; None (unset) passes."""
    if value is not None and value < low:
        raise ConfigError(f"{key}={value} is out of range: it must be >= {low}")


def at_most(key: str, value, high) -> None:
    """value <= high; None (unset) passes."""
    if value is not None and value > high:
        raise ConfigError(f"{key}={value} is out of range: it must be <= {high}")


def above(key: str, value, low) -> None:
    """value > low; None (unset) passes."""
    if value is not None and not value > low:
        raise ConfigError(f"{key}={value} is out of range: it must be > {low}")


def in_unit_interval(key: str, value) -> None:
    """0 <= value < 1 (Adam's betas, dropout)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} is out of range: it must be in [0, 1)")


# ----------------------------------------------------------------------------------------------
# model, data

@dataclass
class ModelConfig(GPTConfig):
    """The model group: the architecture (every GPTConfig field, declared there once), plus where
    the vocabulary and the weights come from."""
    vocab_size: Optional[int] = None  # None: the prepared dataset's vocabulary
    pad_vocab: bool = False  # round the vocabulary up to a multiple of 64 (50257 -> 50304): faster
    # initialise from OpenAI's GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl
    pretrained: Optional[str] = None
    path: Optional[str] = None  # a local Hugging Face model directory (offline machines)

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as e:
            raise ConfigError(f"invalid model config: {e}") from None


@dataclass
class DataConfig:
    name: str = "pydoc_char"
    root: Optional[str] = None  # None: $NANOGPT_DATA_ROOT, else <repo>/data
    auto_prepare: bool = False  # prepare on first use (only for data that needs no download)


# ----------------------------------------------------------------------------------------------
# optimizers: the common schedule and clipping, then each optimizer's own keys


@dataclass
class OptimConfig:
    """What every optimizer shares: the learning-rate schedule and gradient clipping. Each
    parameter group of an optimizer gets lr x its own multiplier (nanogpt.optim)."""
    name: str = MISSING  # the optimizer: a key of nanogpt.optim.OPTIMIZERS
    lr: float = 1e-3
    min_lr: Optional[float] = None  # None: lr / 10 (Chinchilla)
    warmup_iters: int = 100
    decay_iters: Optional[int] = None  # None: max_iters
    schedule: str = "cosine"  # cosine | linear | constant | wsd (after warm-up; nanogpt.schedule)
    decay_frac: float = 0.2  # wsd: the cooldown is the last decay_frac of the run
    cooldown: str = "linear"  # wsd: the cooldown's shape, linear | cosine | 1-sqrt
    grad_clip: float = 1.0  # 0 disables

    def __post_init__(self):
        from nanogpt.optim import OPTIMIZERS

        one_of("optim", self.name, sorted(OPTIMIZERS))
        if not isinstance(self, OPTIM_SCHEMAS[self.name]):
            raise ConfigError(f"optim.name={self.name!r} does not match the optimizer's keys: "
                              f"choose the optimizer with optim={self.name}")
        at_least("optim.lr", self.lr, 0)
        at_least("optim.min_lr", self.min_lr, 0)
        at_least("optim.warmup_iters", self.warmup_iters, 0)
        at_least("optim.decay_iters", self.decay_iters, 1)
        one_of("optim.schedule", self.schedule, SCHEDULES)
        one_of("optim.cooldown", self.cooldown, COOLDOWNS)
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"optim.decay_frac={self.decay_frac} is out of range: it must be in (0, 1]")
        at_least("optim.grad_clip", self.grad_clip, 0)


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    weight_decay: float = 0.1  # on >=2-D tensors only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    fused: Optional[bool] = None  # None: fused AdamW where the device supports it

    def __post_init__(self):
        super().__post_init__()
        at_least("optim.weight_decay", self.weight_decay, 0)
        in_unit_interval("optim.beta1", self.beta1)
        in_unit_interval("optim.beta2", self.beta2)
        above("optim.eps", self.eps, 0)


@dataclass
class MuonConfig(OptimConfig):
    """torch.optim.Muon for the 2-D matrices of the transformer blocks (attention and MLP), AdamW
    for the rest: token embedding, position table, LM head, norm gains, biases. `lr` is Muon's;
    each AdamW group has its own rate, and the schedule scales every rate alike."""
    name: str = "muon"
    lr: float = 0.02  # Muon's, for the hidden matrices (Keller Jordan's default)
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations of the orthogonalisation
    adjust_lr: str = "original"  # torch.optim.Muon's adjust_lr_fn: original | match_rms_adamw
    ns_dtype: str = "auto"  # Newton-Schulz's: auto (bf16 where the hardware has it) | bfloat16 | float32
    weight_decay: float = 0.0  # the hidden matrices' (decoupled, as AdamW's)
    # AdamW's rates, tuned with Muon at lr 0.02-0.03 on the small CPU models (experiment=speedrun_cpu)
    embed_lr: float = 0.0067  # AdamW's rate for the token embedding and position table
    head_lr: float = 0.0027  # AdamW's rate for an untied LM head (a tied one is the embedding)
    scalar_lr: float = 0.0067  # AdamW's rate for norm gains and biases
    adamw_weight_decay: float = 0.0  # of the embeddings and the head (never of gains and biases)
    beta1: float = 0.8  # AdamW's, as modded-nanogpt's
    beta2: float = 0.95
    eps: float = 1e-10
    fused: Optional[bool] = None  # None: fused AdamW where the device supports it

    def __post_init__(self):
        super().__post_init__()
        in_unit_interval("optim.momentum", self.momentum)
        at_least("optim.ns_steps", self.ns_steps, 1)
        one_of("optim.adjust_lr", self.adjust_lr, MUON_ADJUST_LR)
        from nanogpt.optim import NS_DTYPES

        one_of("optim.ns_dtype", self.ns_dtype, NS_DTYPES)
        at_least("optim.weight_decay", self.weight_decay, 0)
        for key in ("embed_lr", "head_lr", "scalar_lr", "adamw_weight_decay"):
            at_least(f"optim.{key}", getattr(self, key), 0)
        in_unit_interval("optim.beta1", self.beta1)
        in_unit_interval("optim.beta2", self.beta2)
        above("optim.eps", self.eps, 0)
        above("optim.lr", self.lr, 0)  # the AdamW groups' rates are multiples of it


MUON_ADJUST_LR = ("original", "match_rms_adamw")
OPTIM_SCHEMAS = {"adamw": AdamWConfig, "muon": MuonConfig}  # the optim group's options: name -> schema


# ----------------------------------------------------------------------------------------------
# hardware

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
BACKENDS = ("auto", "nccl", "gloo")


FSDP_ACCUMULATION = ("unsharded", "sharded")


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast; float16 uses a GradScaler) | float64 (checks)
    compile: bool = False
    micro_batch_size: int = 12
    eval_batch_size: Optional[int] = None  # None: 2 x micro_batch_size (no gradients to hold)
    tf32: bool = True  # TF32 matmuls on Ampere and later
    backend: str = "auto"  # DDP backend: auto (nccl on CUDA, gloo otherwise) | nccl | gloo
    # how the model is spread over the ranks: a key of nanogpt.parallel.STRATEGIES
    strategy: str = "ddp"
    # recompute activations in the backward pass: none | block (keep each block's input only) |
    # selective (keep the matmuls' outputs, recompute norms, GELU, ...); any strategy
    activation_checkpointing: str = "none"
    # FSDP with gradient accumulation: unsharded (gradients accumulate whole, weights stay
    # gathered: one reduce-scatter per step) | sharded (reduce-scatter every micro-batch: least memory)
    fsdp_accumulation: str = "unsharded"
    # GPUs per node a SLURM job asks for, one task (DDP rank) each; None: a CPU job of one task
    gpus_per_node: Optional[int] = None
    num_threads: Optional[int] = None  # CPU threads; None: one per core, following the load (threads.py)

    def __post_init__(self):
        from nanogpt.fsdp import ACTIVATION_CHECKPOINTING
        from nanogpt.hardware import DTYPES
        from nanogpt.parallel import STRATEGIES

        device = self.device
        if device.startswith("cuda:") and device[5:].isdigit():
            device = "cuda:N"
        one_of("hardware.device", device, DEVICES)
        one_of("hardware.dtype", self.dtype, ("auto", *DTYPES))
        one_of("hardware.backend", self.backend, BACKENDS)
        one_of("hardware.strategy", self.strategy, sorted(STRATEGIES))
        one_of("hardware.activation_checkpointing", self.activation_checkpointing,
               ACTIVATION_CHECKPOINTING)
        one_of("hardware.fsdp_accumulation", self.fsdp_accumulation, FSDP_ACCUMULATION)
        if self.strategy == "fsdp" and self.dtype == "float16":  # auto's float16: at the start
            from nanogpt.fsdp import FLOAT16_REFUSAL

            raise ConfigError(FLOAT16_REFUSAL)
        at_least("hardware.micro_batch_size", self.micro_batch_size, 1)
        at_least("hardware.eval_batch_size", self.eval_batch_size, 1)
        at_least("hardware.gpus_per_node", self.gpus_per_node, 1)
        at_least("hardware.num_threads", self.num_threads, 1)
        _within_the_cores(self.num_threads)


THREADS_PER_CORE = 4  # more torch threads than this per core only slow a run, and far more crash it


def _within_the_cores(num_threads: Optional[int]) -> None:
    """hardware.num_threads=100000 exhausts the process's thread limit and dies with SIGSEGV."""
    cores = os.cpu_count() or 1
    if num_threads is not None and num_threads > THREADS_PER_CORE * cores:
        raise ConfigError(f"hardware.num_threads={num_threads} is out of range: this machine has {cores} "
                          f"CPU core{'s' * (cores > 1)}; use at most {THREADS_PER_CORE * cores} "
                          f"({THREADS_PER_CORE} per core), or leave it unset (null) for one per core")


# ----------------------------------------------------------------------------------------------
# tasks: one schema per task, chosen by the task group

@dataclass
class TaskConfig:
    name: str = MISSING  # the task: a key of nanogpt.tasks.TASKS

    def __post_init__(self):
        one_of("task", self.name, sorted(TASK_SCHEMAS))
        if not isinstance(self, TASK_SCHEMAS[self.name]):
            raise ConfigError(f"task.name={self.name!r} does not match the task's keys: choose "
                              f"the task with task={self.name}")


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
    sample_tokens: int = 300
    temperature: float = 0.8  # of the samples printed when training ends
    top_k: Optional[int] = 200
    plot: bool = True  # loss.png in the run directory
    # cooldown branches (nanogpt.branch): iterations whose checkpoints this run keeps
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
        at_least("task.sample_tokens", self.sample_tokens, 1)
        at_least("task.temperature", self.temperature, 0)
        at_least("task.top_k", self.top_k, 1)


@dataclass
class EvalTask(TaskConfig):
    name: str = "eval"
    eval_iters: int = 200
    splits: list = field(default_factory=lambda: ["train", "val"])
    out: Optional[str] = None  # JSON output; None: <run>/eval.json, or the Hydra output dir

    def __post_init__(self):
        super().__post_init__()
        at_least("task.eval_iters", self.eval_iters, 1)
        if not self.splits:
            raise ConfigError("task.splits=[] is empty: use [train, val], [train] or [val]")
        for split in self.splits:
            one_of("task.splits", split, ("train", "val"))


@dataclass
class SampleTask(TaskConfig):
    name: str = "sample"
    prompt: str = "\n"  # text, or FILE:path
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: Optional[int] = 200
    use_cache: bool = True
    which: str = "best"  # best | last checkpoint

    def __post_init__(self):
        super().__post_init__()
        at_least("task.num_samples", self.num_samples, 1)
        at_least("task.max_new_tokens", self.max_new_tokens, 1)
        at_least("task.temperature", self.temperature, 0)
        at_least("task.top_k", self.top_k, 1)
        one_of("task.which", self.which, ("best", "last"))


@dataclass
class HellaSwagTask(TaskConfig):
    name: str = "hellaswag"
    file: Optional[str] = None  # a local jsonl in the original format; None: Rowan/hellaswag from the hub
    limit: Optional[int] = None  # score the first N examples only (a quick look)
    batch_size: int = 16  # examples per forward pass (4 rows each)
    which: str = "best"  # best | last checkpoint of run=
    out: Optional[str] = None  # JSON output; None: <run>/hellaswag.json, or the Hydra output dir

    def __post_init__(self):
        super().__post_init__()
        at_least("task.limit", self.limit, 1)
        at_least("task.batch_size", self.batch_size, 1)
        one_of("task.which", self.which, ("best", "last"))


@dataclass
class BenchTask(TaskConfig):
    name: str = "bench"
    iters: int = 20  # timed training steps; the median is reported
    warmup: int = 5  # untimed steps first (torch.compile compiles in the first one)
    synthetic: bool = True  # random tokens instead of the dataset (data=...)
    tokens_per_step: Optional[int] = None  # gradient accumulation as in training; None: one micro-batch
    profile: bool = False  # a torch.profiler trace of a few more steps: trace.json in the output dir
    measure_peak: bool = True  # measure the CPU's matmul rate for MFU (GPUs: the data-sheet table)

    def __post_init__(self):
        super().__post_init__()
        at_least("task.iters", self.iters, 1)
        at_least("task.warmup", self.warmup, 0)
        at_least("task.tokens_per_step", self.tokens_per_step, 1)


@dataclass
class PlanTask(TaskConfig):
    """Memory per GPU for the model= and hardware= chosen (micro-batch, dtype, GPUs per node)."""
    name: str = "plan"
    gpu_memory_gb: float = 80.0  # one GPU's memory: does the plan fit?
    gpus: Optional[int] = None  # ranks training together; None: hardware.gpus_per_node, else 1
    accumulation: bool = True  # several micro-batches per step: gradients live through the forward
    vocab_size: int = 50304  # when model.vocab_size is unset (training takes it from the data)

    def __post_init__(self):
        super().__post_init__()
        above("task.gpu_memory_gb", self.gpu_memory_gb, 0)
        at_least("task.gpus", self.gpus, 1)
        at_least("task.vocab_size", self.vocab_size, 1)


# the task group's options: name -> schema (the function that runs each: nanogpt.tasks.TASKS)
TASK_SCHEMAS = {"train": TrainTask, "eval": EvalTask, "sample": SampleTask, "bench": BenchTask,
                "hellaswag": HellaSwagTask, "plan": PlanTask}


# ----------------------------------------------------------------------------------------------
# logging, and the whole config

@dataclass
class LoggerConfig:
    """metrics.jsonl is always written; `logger=wandb` (or logger.wandb=true) adds Weights & Biases."""
    wandb: bool = False
    mode: Optional[str] = None  # online | offline | disabled; None: $WANDB_MODE, else online
    project: str = "nanogpt"
    entity: Optional[str] = None
    name: Optional[str] = None  # None: the run directory's name
    tags: list = field(default_factory=list)

    def __post_init__(self):
        if self.mode is not None:
            one_of("logger.mode", self.mode, ("online", "offline", "disabled"))


INIT_FROM = ("scratch", "resume", "pretrained")
MAX_SEED = 2**63 - 1  # torch seeds with 64 bits, and each rank adds its rank to the seed


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING  # one of OPTIM_SCHEMAS, chosen by the optim group
    hardware: HardwareConfig = MISSING
    task: TaskConfig = MISSING  # one of TASK_SCHEMAS, chosen by the task group
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    init_from: str = "scratch"  # scratch | resume | pretrained (model.pretrained / model.path)
    run: Optional[str] = None  # an existing run directory: resume, sample or evaluate it
    sweep_name: Optional[str] = None

    def __post_init__(self):
        at_least("seed", self.seed, 0)
        at_most("seed", self.seed, MAX_SEED)
        one_of("init_from", self.init_from, INIT_FROM)
        branching = getattr(self.task, "branch_from", None) or getattr(self.task, "keep_checkpoints", None)
        if branching and getattr(self.hardware, "strategy", None) == "fsdp":
            raise ConfigError("cooldown branches (task.keep_checkpoints, task.branch_from) use single-file "
                              "checkpoints, and hardware.strategy=fsdp writes sharded ones: use "
                              "hardware.strategy=ddp")
        if getattr(self.task, "branch_from", None) and self.init_from == "pretrained":
            raise ConfigError("init_from=pretrained and task.branch_from both say where the weights "
                              "come from: a branch starts from its parent's checkpoint, drop init_from")
        if getattr(self.hardware, "strategy", None) == "fsdp":  # an optimizer FSDP cannot shard
            from nanogpt.fsdp import check_optimizer

            try:
                check_optimizer(getattr(self.optim, "name", None))
            except UserError as e:
                raise ConfigError(str(e)) from None


GROUPS = {"model": ModelConfig, "data": DataConfig, "hardware": HardwareConfig, "logger": LoggerConfig}
# groups with one schema per option: the keys a command may set depend on the option chosen
SCHEMA_GROUPS: dict[str, dict[str, type]] = {"optim": OPTIM_SCHEMAS, "task": TASK_SCHEMAS}


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for group, schemas in SCHEMA_GROUPS.items():
        for name, schema in schemas.items():
            cs.store(group=group, name=f"base_{name}", node=schema)


def validate(cfg) -> Any:
    """The plain config of a composed one (an OmegaConf DictConfig without `hydra`): every
    schema's __post_init__ checks its values on the way, so a bad value raises ConfigError."""
    from omegaconf import OmegaConf

    _refuse_non_finite(OmegaConf.to_container(cfg, resolve=True), "")
    return OmegaConf.to_object(cfg)


def _refuse_non_finite(node, key: str) -> None:
    """No key takes nan or inf (an unset one is null): before any schema's check, which may do
    arithmetic with it (round(inf * n_embd)), and before training turns it into a NaN loss."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not a finite number: use a finite value")
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in children:
        _refuse_non_finite(child, f"{key}.{name}" if key else str(name))
