"""Who am I: a single process, a torchrun worker, or a SLURM task. The only module that reads the
launchers' environment variables; everything else asks the `Dist` object it returns."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def detect() -> Dist:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "TORCHELASTIC_RUN_ID" in env:
        return Dist(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "torchrun")
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Dist(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                    int(env["SLURM_NTASKS"]), "slurm")
    if "RANK" in env and "WORLD_SIZE" in env:  # a launcher that exports torch's env:// variables
        return Dist(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "env")
    return Dist()


def setup(dist: Dist, backend: str, device_type: str) -> None:
    """Join the process group (a no-op for one process)."""
    if not dist.enabled or td.is_initialized():
        return
    if dist.launcher == "slurm":
        # submitit knows the master node and a free port; export MASTER_ADDR/PORT for env://
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    td.init_process_group(backend=backend, rank=dist.rank, world_size=dist.world_size,
                          timeout=datetime.timedelta(minutes=int(os.environ.get("NANOGPT_DIST_TIMEOUT_MIN", 30))))


def teardown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if td.is_available() and td.is_initialized():
        td.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank src's value on every rank (e.g. the run directory, or a stop flag)."""
    if not (td.is_available() and td.is_initialized()):
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if td.is_available() and td.is_initialized():
        td.all_reduce(t, op=td.ReduceOp.SUM)
        t /= td.get_world_size()
    return t
