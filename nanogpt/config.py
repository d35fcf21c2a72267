"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file under conf/ extends one of these dataclasses, so a typo in an override or a value
of the wrong type fails at composition time instead of being silently ignored. The core modules
never see OmegaConf: launch.py turns these into plain objects (GPTConfig, ...) at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

MISSING = "???"  # OmegaConf's marker for a required value (kept Hydra-free at import time)


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: Optional[int] = None  # None: the prepared dataset's vocabulary
    pad_vocab: bool = False  # round the vocabulary up to a multiple of 64 (50257 -> 50304): faster
    bias: bool = True
    dropout: float = 0.0
    # initialise from OpenAI's GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl
    pretrained: Optional[str] = None
    path: Optional[str] = None  # a local Hugging Face model directory (offline machines)


@dataclass
class DataConfig:
    name: str = "pydoc_char"
    root: Optional[str] = None  # None: $NANOGPT_DATA_ROOT, else <repo>/data
    auto_prepare: bool = False  # prepare on first use (only for data that needs no download)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: Optional[float] = None  # None: lr / 10 (Chinchilla)
    warmup_iters: int = 100
    decay_iters: Optional[int] = None  # None: max_iters
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    weight_decay: float = 0.1  # on >=2-D tensors only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    fused: Optional[bool] = None  # None: fused AdamW where the device supports it


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast; float16 uses a GradScaler) | float64 (checks)
    compile: bool = False
    micro_batch_size: int = 12
    eval_batch_size: Optional[int] = None  # None: 2 x micro_batch_size (no gradients to hold)
    tf32: bool = True  # TF32 matmuls on Ampere and later
    backend: str = "auto"  # DDP backend: auto (nccl on CUDA, gloo otherwise) | nccl | gloo
    # GPUs per node a SLURM job asks for, one task (DDP rank) each; None: a CPU job of one task
    gpus_per_node: Optional[int] = None
    num_threads: Optional[int] = None  # torch intra-op threads on the CPU; None: torch's default


@dataclass
class TrainTask:
    name: str = "train"
    max_iters: int = 2000
    max_tokens: Optional[int] = None  # a token budget: sets max_iters from tokens_per_step
    max_flops: Optional[float] = None  # a compute budget C ~ 6 N D: sets max_iters
    tokens_per_step: Optional[int] = None  # tokens per optimizer step; None: one micro-batch per rank
    eval_interval: int = 250
    eval_iters: int = 50  # batches per split; eval batches are fixed, so 50 give a steady curve
    log_interval: int = 10
    save_interval: Optional[int] = None  # also save last.pt every N iterations (None: at evals only)
    always_save_checkpoint: bool = True  # save last.pt at each eval even when val did not improve
    on_nan: str = "stop"  # stop | skip (skip the update of a non-finite step; stop after 10 in a row)
    num_samples: int = 1  # samples printed when training ends (0: none)
    hellaswag_interval: int = 0  # score HellaSwag every N iterations (0: never); acc_norm is logged
    hellaswag_limit: Optional[int] = None  # its first N examples (None: all 10,042)
    hellaswag_file: Optional[str] = None  # a local hellaswag_val.jsonl (None: Rowan/hellaswag from the hub)
    sample_tokens: int = 300
    plot: bool = True  # loss.png in the run directory


@dataclass
class EvalTask:
    name: str = "eval"
    eval_iters: int = 200
    splits: list = field(default_factory=lambda: ["train", "val"])
    out: Optional[str] = None  # JSON output; None: <run>/eval.json, or the Hydra output dir


@dataclass
class SampleTask:
    name: str = "sample"
    prompt: str = "\n"  # text, or FILE:path
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: Optional[int] = 200
    use_cache: bool = True
    which: str = "best"  # best | last checkpoint


@dataclass
class HellaSwagTask:
    name: str = "hellaswag"
    file: Optional[str] = None  # a local jsonl in the original format; None: Rowan/hellaswag from the hub
    limit: Optional[int] = None  # score the first N examples only (a quick look)
    batch_size: int = 16  # examples per forward pass (4 rows each)
    which: str = "best"  # best | last checkpoint of run=
    out: Optional[str] = None  # JSON output; None: <run>/hellaswag.json, or the Hydra output dir


@dataclass
class BenchTask:
    name: str = "bench"
    iters: int = 20  # timed training steps; the median is reported
    warmup: int = 5  # untimed steps first (torch.compile compiles in the first one)
    synthetic: bool = True  # random tokens instead of the dataset (data=...)
    tokens_per_step: Optional[int] = None  # gradient accumulation as in training; None: one micro-batch
    profile: bool = False  # a torch.profiler trace of a few more steps: trace.json in the output dir
    measure_peak: bool = True  # measure the CPU's matmul rate for MFU (GPUs: the data-sheet table)


@dataclass
class LoggerConfig:
    """metrics.jsonl is always written; `logger=wandb` (or logger.wandb=true) adds Weights & Biases."""
    wandb: bool = False
    mode: Optional[str] = None  # online | offline | disabled; None: $WANDB_MODE, else online
    project: str = "nanogpt"
    entity: Optional[str] = None
    name: Optional[str] = None  # None: the run directory's name
    tags: list = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    hardware: HardwareConfig = MISSING
    task: Any = MISSING  # one of the *Task schemas, chosen by the task group
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    init_from: str = "scratch"  # scratch | resume | pretrained (model.pretrained / model.path)
    run: Optional[str] = None  # an existing run directory: resume, sample or evaluate it
    sweep_name: Optional[str] = None


TASKS = {"train": TrainTask, "eval": EvalTask, "sample": SampleTask, "bench": BenchTask,
         "hellaswag": HellaSwagTask}
GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "hardware": HardwareConfig,
          "logger": LoggerConfig}


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for name, schema in TASKS.items():
        cs.store(group="task", name=f"base_{name}", node=schema)


def run_name(overrides: str) -> str:
    """A run directory name from Hydra's override_dirname ("model.n_layer=4,optim.lr=0.001"):
    the same command always maps to the same directory, so re-running it resumes the run."""
    import hashlib

    name = overrides.replace("/", "-").replace(" ", "") or "default"
    if len(name) > 120:  # keep paths well under the file-name limit, still unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def run_dir(task: str, run: Optional[str], overrides: str) -> str:
    """Where a job writes. Training writes into the run (given, or named after the command);
    eval/sample/bench write next to it, never into a training run's .hydra/."""
    if task == "train":
        return run if run else f"runs/{run_name(overrides)}"
    return f"runs/_{task}/{run_name(overrides)}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nanogpt_run_dir"):
        OmegaConf.register_new_resolver("nanogpt_run_dir", run_dir)
        OmegaConf.register_new_resolver("nanogpt_run_name", run_name)
        # the SLURM launcher's tasks per node: one per GPU, or one on a CPU node
        OmegaConf.register_new_resolver("nanogpt_tasks_per_node", lambda gpus: gpus or 1)
