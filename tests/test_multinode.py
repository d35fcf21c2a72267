"""Beyond one node, on this machine: two torchrun launchers as two "nodes" meeting through c10d
rendezvous, one process each, gloo; and what a SLURM sweep over hardware presets asks for."""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
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
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
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
    from nanogpt.gate import register_configs
    from nanogpt.gate import register_resolvers

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
    with pytest.raises(Exception, match="nodes"):  # a value of the wrong type, before any submission
        launcher_settings(["hydra.launcher.nodes=two"])


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


# ---- a real two-node SLURM cluster on this machine
#
# A private cluster beside the shared test cluster (its own config, ports 7817/7818, state in a
# temporary directory; the running munged signs its messages): node n1 is this machine's network
# namespace, node n2 a network namespace of its own, joined by a veth pair (10.201.0.1 and
# 10.201.0.2). Both ends of the pair are named `nanoveth`, so one GLOO_SOCKET_IFNAME fits every
# rank, and the node names do not resolve, so MASTER_ADDR names the first node's address.

NETNS, VETH, ADDR = "nanogpt2n", "nanoveth", ("10.201.0.1", "10.201.0.2")
SLURM_CONF = """ClusterName=nanogpt2n
SlurmctldHost={host}({addr1})
SlurmctldPort=7817
SlurmdPort=7818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
AuthInfo=cred_expire=30
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
AccountingStorageType=accounting_storage/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
NodeName=n1 NodeAddr={addr1} CPUs=2 RealMemory=8000
NodeName=n2 NodeAddr={addr2} CPUs=2 RealMemory=8000
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


def _two_node_blocker() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurm daemons)"
    for tool in ("slurmctld", "slurmd", "sbatch", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    if not Path("/run/munge/munge.socket.2").exists():
        return "munged is not running (start the test cluster: ../shared/slurm/start-local-slurm.sh)"
    return None


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_node_slurm(tmp_path):
    """Start the two-node cluster; yield the environment its clients and jobs need; stop it."""
    blocker = _two_node_blocker()
    if blocker:
        pytest.skip(f"two-node SLURM cluster: {blocker}")
    lock = open("/tmp/nanogpt-two-node-slurm.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one such cluster at a time on this machine
    d = tmp_path / "slurm2n"
    for sub in ("state", "spool/n1", "spool/n2"):
        (d / sub).mkdir(parents=True)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), addr1=ADDR[0], addr2=ADDR[1], d=d))
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)  # a previous run's, if left
    started = []
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", "nanoveth0", "type", "veth", "peer", "name", "nanoveth1")
        _sh("ip", "link", "set", "nanoveth1", "netns", NETNS)
        _sh("ip", "link", "set", "nanoveth0", "name", VETH)
        _sh("ip", "addr", "add", f"{ADDR[0]}/24", "dev", VETH)
        _sh("ip", "link", "set", VETH, "up")
        inside = ["ip", "netns", "exec", NETNS]
        _sh(*inside, "ip", "link", "set", "nanoveth1", "name", VETH)
        _sh(*inside, "ip", "addr", "add", f"{ADDR[1]}/24", "dev", VETH)
        _sh(*inside, "ip", "link", "set", VETH, "up")
        _sh(*inside, "ip", "link", "set", "lo", "up")
        _sh(*inside, "ip", "route", "add", "default", "via", ADDR[0])
        _sh("slurmctld", "-f", str(conf), "-i")
        started.append(d / "slurmctld.pid")
        _sh("slurmd", "-f", str(conf), "-N", "n1")
        started.append(d / "slurmd-n1.pid")
        # nsenter, not `ip netns exec`: that remounts /sys, and slurmd wants the host's cgroup fs
        _sh("nsenter", f"--net=/var/run/netns/{NETNS}", "slurmd", "-f", str(conf), "-N", "n2")
        started.append(d / "slurmd-n2.pid")
        env = {"SLURM_CONF": str(conf), "MASTER_ADDR": ADDR[0], "GLOO_SOCKET_IFNAME": VETH}
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], capture_output=True, text=True,
                                 env={**os.environ, **env}).stdout.split()
            if out == ["idle", "2"]:
                break
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in d.glob("*.log"))
                pytest.fail(f"the two-node cluster did not come up (sinfo: {out}):\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        for pid_file in reversed(started):
            try:
                pid = int(pid_file.read_text())
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("slurmctld", "slurmd"):
                    os.kill(pid, 15)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_node_slurm_job_trains_as_one_process_does(tmp_path, data_root, two_node_slurm):
    args = merged(*STEP, "task.max_iters=4", "task.eval_interval=4", "hardware.dtype=float64")
    launch(["-m", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=two", "hydra.launcher.nodes=2",
            "hydra.launcher.mem_gb=1", "hydra.launcher.srun_args=['--kill-on-bad-exit=1']", "sweep_name=s", *args],
           cwd=tmp_path, env=two_node_slurm, timeout=300)
    [run] = run_dirs(tmp_path / "sweeps" / "s")
    assert summary(run)["world_size"] == 2 and summary(run)["status"] == "finished"
    [script] = (tmp_path / "sweeps" / "s" / ".submitit").glob("*/*_submission.sh")
    job = script.read_text()
    assert "#SBATCH --nodes=2" in job and "#SBATCH --ntasks-per-node=1" in job
    assert "srun --unbuffered" in job and "--kill-on-bad-exit=1 " in job  # srun_args reach srun
    launch(args, cwd=tmp_path)
    [single] = run_dirs(tmp_path / "runs")
    a, b = losses(single), losses(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and all(abs(a[i] - b[i]) / a[i] < EXACT for i in a)
