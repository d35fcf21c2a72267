"""Who am I: a single process, a torchrun worker, or a task of a SLURM job (submitted by submitit,
or started by `srun`). The only module that reads the launchers' environment variables; the rest
of the code asks the `Dist` object that `detect()` returns, and uses the helpers below.

    torchrun        RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT (env://)
    submitit        its JobEnvironment (SLURM_PROCID, ... or SUBMITIT_LOCAL_*); master = first node
    srun            SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS; master = first node
    NANOGPT_DIST_TIMEOUT_MIN   how long a collective may wait for a slow rank (default 30)
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
import random
import signal
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as td

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt")

# Small control messages (stop flags, the run directory, RNG states) are CPU tensors or pickled
# objects: they go through gloo even when the gradients go through NCCL, so that agreeing on a
# stop flag at each step never waits for the GPU.
BACKENDS = {"nccl": "cpu:gloo,cuda:nccl", "gloo": "gloo"}


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "single"  # single | torchrun | env | submitit | srun
    init_method: str = "env://"  # where the ranks meet: env:// (torchrun) or tcp://first-node:port
    slurm: bool = False  # a SLURM job: the scheduler signals it before pre-emption or its time limit
    requeue_signal: int | None = None  # submitit's signal to checkpoint and requeue (SIGUSR2)
    # the CPUs SLURM gave each task: torch's thread count, which otherwise counts every core of
    # the node and oversubscribes it when several ranks share one
    cpus: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def detect() -> Dist:
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:  # torchrun (also multi-node: --nnodes, --node_rank, --master_addr)
        return Dist(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]), "torchrun")
    if env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):  # a job submitit started (hydra's launcher)
        import submitit

        job = submitit.JobEnvironment()
        on_slurm = env["SUBMITIT_EXECUTOR"] == "slurm"
        return Dist(job.global_rank, job.local_rank, job.num_tasks, "submitit",
                    _tcp(job.hostnames[0] if on_slurm else "127.0.0.1", job.job_id), on_slurm,
                    getattr(signal, "SIG" + job.USR_SIG) if on_slurm else None, _slurm_cpus())
    # `srun python launch.py`: only a job step's tasks (not the batch script, which also has
    # SLURM_PROCID and SLURM_NTASKS) have SLURM_STEP_ID
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        from submitit.slurm.slurm import SlurmJobEnvironment

        job = SlurmJobEnvironment()
        return Dist(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                    int(env["SLURM_STEP_NUM_TASKS"]), "srun", _tcp(job.hostnames[0], job.job_id), True,
                    cpus=_slurm_cpus())
    if "RANK" in env and "WORLD_SIZE" in env:  # any launcher that sets torch's env:// variables
        return Dist(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "env")
    return Dist()


def _slurm_cpus() -> int | None:
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(cpus) if cpus else None


def _tcp(host: str, job_id: str) -> str:
    """Every task of a job derives the same port from the job id (as submitit does), so the ranks
    meet without talking first. MASTER_PORT overrides the port, and MASTER_ADDR the first node's
    name (for a cluster whose node names do not resolve on the network the ranks talk over)."""
    port = os.environ.get("MASTER_PORT") or random.Random(job_id).randint(20000, 60000)
    return f"tcp://{os.environ.get('MASTER_ADDR') or host}:{port}"


def setup(dist: Dist, backend: str, device: torch.device) -> None:
    """Join the process group (a no-op for one process, and when already joined). It lasts as long
    as the process: the jobs of a sweep under torchrun (`-m`) share it, as joining a second time
    would wait for a rendezvous that never comes."""
    if not dist.enabled or td.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any NCCL call, or every rank of a node uses GPU 0
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in BACKENDS:
        raise UserError(f"unknown hardware.backend={backend!r}: use auto, nccl or gloo")
    minutes = float(os.environ.get("NANOGPT_DIST_TIMEOUT_MIN", 30))
    td.init_process_group(BACKENDS[backend], init_method=dist.init_method, rank=dist.rank,
                          world_size=dist.world_size, timeout=datetime.timedelta(minutes=minutes))
    atexit.register(teardown)


def teardown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if td.is_available() and td.is_initialized():
        td.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank src's value on every rank (e.g. the run directory)."""
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


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any: ranks must take the same branch before a collective."""
    return bool(max_over_ranks(int(flag)))


def max_over_ranks(value: int) -> int:
    """The largest of every rank's value, on every rank (e.g. the signal that stops the run)."""
    if not (td.is_available() and td.is_initialized()):
        return value
    t = torch.tensor([value])  # a CPU tensor: gloo, no GPU sync
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return int(t.item())


def end_interrupted_slurm_job(dist: Dist, signum: int | None) -> None:
    """After a SLURM job's ranks saved a checkpoint because the scheduler signalled them, end every
    rank without a result, so that whoever waits for the job (Hydra's launcher) keeps waiting.

    submitit's signal (pre-emption, or the time limit near) requeues the job first, through
    submitit's own handler on rank 0: it stores the job again and calls `scontrol requeue`; the
    requeued job runs the same sweep point in the same run directory and resumes from the
    checkpoint. On SIGTERM (scancel, or pre-emption that SLURM requeues itself) SLURM decides.
    Returns only where there is nothing to do: no SLURM, or submitit refused to requeue (rank 0
    then raises its reason, e.g. the job timed out more often than max_num_timeout allows)."""
    if not dist.slurm:
        return
    if any_rank(signum is not None and signum == dist.requeue_signal):
        requeued, refusal = False, None
        if dist.is_main:
            submitit_handler = signal.getsignal(dist.requeue_signal)
            try:
                submitit_handler(dist.requeue_signal, None)
            except SystemExit:  # submitit requeued the job and wants this task to end now
                requeued = True
            except Exception as e:  # noqa: BLE001 - passed on below, after the others know
                refusal = e
        # nobody leaves before rank 0 has requeued: a task's exit ends the job step (srun -K)
        if not broadcast_object(requeued):
            if refusal is not None:
                raise refusal
            return
        if dist.is_main:
            log.warning("requeued: this job starts again and resumes from the checkpoint")
    sys.exit(-1)


def abort(dist: Dist, error: BaseException) -> None:
    """Report a rank's error and end its process at once, so that the launcher ends the whole
    job: torchrun stops the other workers when one exits non-zero, and srun does when
    SLURM_KILL_BAD_EXIT=1 (the slurm launcher presets set it). Waiting for a clean exit instead
    could leave the other ranks blocked in their next collective (with NCCL, for the whole
    timeout), and the interpreter's exit could block in the process group's destructor."""
    if isinstance(error, UserError):
        what = str(error)
    else:
        what = "".join(traceback.format_exception(error)).rstrip()
    print(f"error: rank {dist.rank} of {dist.world_size} failed: {what}", file=sys.stderr, flush=True)
    logging.shutdown()  # flush the log files
    sys.stdout.flush()
    os._exit(2 if isinstance(error, UserError) else 1)
