"""Beyond one node, on this machine: two torchrun launchers as two "nodes" meeting through c10d
rendezvous, one process each, gloo; and what a SLURM sweep over hardware presets asks for."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, launch, needs_slurm
from test_distributed import EXACT, STEP, job_ids, losses, merged, run_dirs, slurm_sweep, summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], cwd: Path, timeout: int = 180) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes=2 --node_rank=K --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:PORT`
    started twice, as an operator starts it on each of two nodes."""
    port = free_port()
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    procs = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
               "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=nanogpt-test", str(REPO / "launch.py"), *args]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    for d in done:
        assert d.returncode == 0, f"a node failed ({d.returncode}):\n{d.stdout[-2000:]}\n{d.stderr[-4000:]}"
    return done


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp"])
def test_two_torchrun_nodes_train_as_one_process_does(tmp_path, data_root, strategy):
    args = merged(*STEP, "task.max_iters=6", "task.eval_interval=6", "hardware.dtype=float64",
                  f"hardware.strategy={strategy}")
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    one.mkdir()
    nodes.mkdir()
    launch(args, cwd=one)
    two_nodes(args, cwd=nodes)
    [single], [multi] = run_dirs(one / "runs"), run_dirs(nodes / "runs")
    assert summary(multi)["world_size"] == 2 and summary(multi)["status"] == "finished"
    assert "x 2 accum x 2 ranks" in (multi / "launch.log").read_text()
    a, b = losses(single), losses(multi)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[i] - b[i]) / a[i] < EXACT for i in a), (a, b)


# ---- SLURM sweeps over hardware presets: each job asks for its own GPUs and tasks

def launcher_settings(*job_overrides: list[str]) -> list[dict]:
    """Each job's resolved hydra.launcher settings, as the slurm preset's launcher computes them."""
    from hydra import compose, initialize_config_dir

    from hydra_plugins.nanogpt_slurm_launcher import resources_per_job
    from nanogpt.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="launch"):
        return resources_per_job(lambda o: compose(config_name="config", overrides=["hydra/launcher=slurm", *o],
                                                   return_hydra_config=True), job_overrides)


def test_a_sweep_over_hardware_presets_asks_each_job_for_its_own_gpus():
    from hydra_plugins.nanogpt_slurm_launcher import group_jobs

    jobs = [["hardware=gpu"], ["hardware=gpu_node"], ["hardware=gpu", "model.n_layer=2"]]
    settings = launcher_settings(*jobs)
    assert [(s["gpus_per_node"], s["tasks_per_node"]) for s in settings] == [(1, 1), (8, 8), (1, 1)]
    assert [indices for _, indices in group_jobs(settings)] == [[0, 2], [1]]  # two job arrays


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_slurm_sweep_resolves_the_launcher_per_job(tmp_path, data_root):
    """The test cluster has no GPUs: the tasks per node follow a swept key instead, through the
    same per-job resolution a sweep over hardware presets relies on."""
    slurm_sweep([*STEP, "task.max_iters=2", "task.eval_interval=2", "sweep_name=s",
                 "hydra.launcher.tasks_per_node=${hardware.num_threads}", "hardware.num_threads=1,2"],
                cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweeps" / "s")
    assert [summary(r)["world_size"] for r in runs] == [1, 2]
    assert all(summary(r)["status"] == "finished" for r in runs)
    assert len(job_ids(tmp_path / "sweeps" / "s")) == 2
