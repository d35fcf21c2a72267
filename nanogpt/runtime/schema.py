"""The hardware group's schema: device, precision, batch, threads and how the model is spread
over the ranks, each value checked against the choices the runtime offers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from nanogpt.config import ConfigError, at_least, one_of
from nanogpt.runtime.fsdp import ACTIVATION_CHECKPOINTING, FLOAT16_REFUSAL
from nanogpt.runtime.hardware import DTYPES
from nanogpt.runtime.parallel import STRATEGIES

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
    # how the model is spread over the ranks: a key of nanogpt.runtime.parallel.STRATEGIES
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
