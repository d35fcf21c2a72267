"""Scale-out for real: DDP with two gloo processes under torchrun, local sweeps, and SLURM jobs
through submitit on the single-node test cluster (../shared/slurm, started by .ci/run)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, launch, needs_slurm, read_metrics

pytestmark = pytest.mark.slow


def merged(*overrides: str) -> list[str]:
    """key=value overrides, a later one replacing an earlier one of the same key."""
    return list({o.split("=", 1)[0]: o for o in overrides}.values())


# One optimizer step = 4 micro-batches of 4 x 32 tokens: accumulation 4 in one process, 2 on each
# of two ranks. One thread per process: the same arithmetic whichever way the ranks are launched.
STEP = merged(*TINY, "data.name=tiny_char", "task.tokens_per_step=512", "hardware.num_threads=1",
              "optim.lr=1e-2", "optim.warmup_iters=2")


def torchrun(args: list[str], cwd: Path, nproc: int = 2, env: dict | None = None, timeout: int = 120,
             check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "launch.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def losses(run_dir: Path, kind: str = "train", key: str = "loss") -> dict[int, float]:
    return {r["iter"]: r[key] for r in read_metrics(run_dir) if r["kind"] == kind}


def run_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def rank_one_lacks_data(tmp_path: Path) -> dict:
    """An environment in which rank 1 (of torchrun or of a SLURM job) finds no prepared data, as on
    a node without the dataset: a sitecustomize that only that rank's interpreter acts on."""
    hook = tmp_path / "rank_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK', os.environ.get('SLURM_PROCID')) == '1':\n"
        "    os.environ['NANOGPT_DATA_ROOT'] = '/nonexistent'\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}


# ---- torchrun on one node

# The equivalence is exact arithmetic up to the order of the gradient sums ((g1+g2)+(g3+g4) across
# two ranks vs g1+g2+g3+g4 in one process), so it runs in float64: each reordered sum differs by a
# few units of roundoff (1.1e-16), and 24 AdamW steps at lr 1e-2 amplify a perturbation ~100x (seen
# in float32: 1e-7 -> 1.4e-5 by step 11 on an AVX2 CPU, below 1e-5 on an AVX-512 one: the kernels'
# own summation orders differ). In float64 that stays below ~1e-12 on any CPU; the bound 1e-9 keeps
# 1000x headroom, while a real bug (a micro-batch lost or counted twice, unaveraged gradients)
# moves the loss by more than 1e-3.
EXACT = 1e-9


def one_and_two_ranks(tmp_path: Path, args: list[str], run_dir: str = "outputs/ddp") -> tuple[Path, Path]:
    """The same command in one process and under torchrun with two ranks: (its run, the ranks' run),
    the latter finished on two ranks."""
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    one.mkdir()
    ddp.mkdir()
    launch(args, cwd=one)
    torchrun([*args, f"hydra.run.dir={run_dir}"], cwd=ddp)
    [single] = run_dirs(one / "runs")
    [shared] = run_dirs(ddp / "outputs")  # rank 1's own directory was removed
    assert summary(shared)["world_size"] == 2 and summary(shared)["status"] == "finished"
    return single, shared


def same_train_losses(single: Path, shared: Path, iters: int) -> dict[int, float]:
    """Both runs logged iterations 1..iters once each (rank 0 alone writes metrics), with losses
    equal to EXACT; returns the single process's."""
    a, b = losses(single), losses(shared)
    assert sorted(a) == sorted(b) == list(range(1, iters + 1))
    for it in a:
        assert abs(a[it] - b[it]) / abs(a[it]) < EXACT, (it, a[it], b[it])
    return a


def test_ddp_two_ranks_match_one_process_with_twice_the_accumulation(tmp_path, data_root):
    args = [*STEP, "task.max_iters=24", "task.eval_interval=12", "hardware.dtype=float64"]
    # a timestamped run directory, as Hydra names it on each rank (microseconds: they differ)
    single, shared = one_and_two_ranks(tmp_path, args, "outputs/${now:%H-%M-%S-%f}")
    assert summary(single)["tokens_per_step"] == summary(shared)["tokens_per_step"] == 512
    a = same_train_losses(single, shared, 24)
    assert a[24] < a[1] - 0.3  # it learned: the comparison is not between two flat lines
    ev_a, ev_b = losses(single, "eval", "val_loss"), losses(shared, "eval", "val_loss")
    assert sorted(ev_a) == sorted(ev_b) == [0, 12, 24]
    assert all(abs(ev_a[it] - ev_b[it]) / ev_a[it] < EXACT for it in ev_a)
    assert summary(shared)["dtype"] == "float64"


def test_ddp_muon_with_the_modern_model_matches_one_process(tmp_path, data_root):
    """optim=muon under DDP: the gradients are all-reduced before the step, so every rank
    orthogonalises the same matrix and applies the same update; two ranks equal one process
    (Newton-Schulz runs in bf16, where a float64 reordering below 1e-15 almost never flips a
    rounding: the bound stays EXACT)."""
    args = [*STEP, "task.max_iters=12", "task.eval_interval=6", "hardware.dtype=float64", "optim=muon",
            "optim.lr=0.02", "optim.warmup_iters=2", "optim.schedule=wsd", "model.pos_emb=rope",
            "model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=relu2", "model.tie_embeddings=false",
            "model.logit_softcap=15"]
    single, shared = one_and_two_ranks(tmp_path, args)
    a = same_train_losses(single, shared, 12)
    assert a[12] < a[1] - 0.3


def test_accumulation_must_divide_among_ranks(tmp_path, data_root):
    proc = torchrun(merged(*STEP, "task.tokens_per_step=384", "task.max_iters=2"), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "task.tokens_per_step=384 is not a multiple of" in proc.stderr
    assert "4 x 32 x 2 = 256" in proc.stderr


def test_a_failing_rank_ends_the_torchrun_job(tmp_path, data_root):
    start = time.monotonic()
    proc = torchrun([*STEP, "task.max_iters=50"], cwd=tmp_path, env=rank_one_lacks_data(tmp_path),
                    check=False, timeout=90)
    assert proc.returncode != 0
    assert "error: rank 1 of 2 failed: no prepared data for 'tiny_char' at /nonexistent" in proc.stderr
    assert time.monotonic() - start < 60  # rank 0 did not wait in a collective for its timeout


def rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of a torchrun worker of the given rank (a child of torchrun, RANK in its environment)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


def test_sigterm_to_one_rank_stops_every_rank_and_records_that_signal(tmp_path, data_root):
    """SIGTERM to rank 1 alone: rank 0 saved, then died with KeyError: None (its own stop_signal
    was None), and summary.json said stop_signal: null. Every rank now records the signal the
    ranks agreed on and exits as a single process does (128 + 15), without a traceback of ours."""
    import signal

    run, log_path = tmp_path / "r", tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "launch.py"), *STEP, "task.max_iters=100000", "task.eval_interval=1000", f"run={run}"]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_MODE": "offline"})
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    out = log_path.read_text()
    # no traceback of ours (torchrun's own, from torch's files, may sit in a .venv inside the repo)
    ours = re.compile(rf'File "{re.escape(str(REPO))}/(?!\.venv/)')
    assert "KeyError" not in out and not ours.search(out), out[-3000:]
    assert "exitcode  : 143" in out  # each rank: 128 + SIGTERM (torchrun reports a worker's non-zero exit)
    done = summary(run)
    assert (done["status"], done["stop_signal"]) == ("interrupted", "SIGTERM")
    from nanogpt.checkpoint import single as checkpoint

    assert checkpoint.load(run / "ckpt" / "last.pt")["iter"] == done["iters"] > 2
    assert f"stopped at iteration {done['iters']}; checkpoint saved" in out


# ---- sweeps on this machine

@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_local_sweep(tmp_path, data_root, launcher):
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    launch(["-m", *extra, *TINY, "data.name=tiny_char", "task.max_iters=3", "sweep_name=s",
            "model.n_layer=1,2"], cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweeps" / "s")
    assert [r.name.split("_")[0] for r in runs] == ["0", "1"]
    assert [summary(r)["config"]["model"]["n_layer"] for r in runs] == [1, 2]
    assert all(summary(r)["status"] == "finished" for r in runs)


def test_torchrun_sweep_runs_its_jobs_on_one_process_group(tmp_path, data_root):
    torchrun(["-m", *STEP, "task.max_iters=3", "sweep_name=s", "model.n_layer=1,2"], cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweeps" / "s")
    assert [summary(r)["config"]["model"]["n_layer"] for r in runs] == [1, 2]
    assert all(summary(r)["world_size"] == 2 and summary(r)["status"] == "finished" for r in runs)


# ---- SLURM, on the real single-node cluster

def slurm_sweep(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return launch(["-m", "hydra/launcher=slurm_cpu", *args], cwd=cwd, **kw)


def sacct_states(job_id: str) -> list[str]:
    """Every state the job went through (--duplicates lists the runs before a requeue too), once it
    has ended: its result can be there a moment before SLURM counts the job as done."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "--duplicates", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True, check=True).stdout
        states = [s.strip() for s in out.splitlines() if s.strip()]
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED") \
                or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def job_ids(sweep: Path) -> list[str]:
    """The SLURM ids of a sweep's jobs ("12", or "12_0", "12_1" for an array): submitit's folders."""
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


@pytest.mark.slurm
@needs_slurm
def test_slurm_sweep_runs_one_job_per_point(tmp_path, data_root):
    slurm_sweep([*TINY, "data.name=tiny_char", "task.max_iters=5", "sweep_name=s", "optim.lr=1e-3,2e-3"],
                cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweeps" / "s")
    assert [summary(r)["config"]["optim"]["lr"] for r in runs] == [1e-3, 2e-3]
    assert all(summary(r)["status"] == "finished" and summary(r)["final_val_loss"] for r in runs)
    ids = job_ids(tmp_path / "sweeps" / "s")
    assert len(ids) == 2 and all(sacct_states(i) == ["COMPLETED"] for i in ids)


@pytest.mark.slurm
@needs_slurm
def test_slurm_job_of_two_tasks_trains_as_two_ranks(tmp_path, data_root):
    args = [*STEP, "task.max_iters=6", "task.eval_interval=6", "hardware.dtype=float64"]
    slurm_sweep(["hydra.launcher.tasks_per_node=2", *args, "sweep_name=s"], cwd=tmp_path)
    [run] = run_dirs(tmp_path / "sweeps" / "s")
    assert summary(run)["world_size"] == 2 and summary(run)["status"] == "finished"
    assert "x 2 accum x 2 ranks" in (run / "launch.log").read_text()
    # the same steps as one process accumulating 4 micro-batches
    launch(args, cwd=tmp_path)
    [single] = run_dirs(tmp_path / "runs")
    a, b = losses(single), losses(run)
    assert sorted(a) == sorted(b) and all(abs(a[i] - b[i]) / a[i] < EXACT for i in a)


@pytest.mark.slurm
@needs_slurm
def test_srun_tasks_train_as_ranks(tmp_path, data_root):
    """`srun -n 2 python launch.py ...` without submitit: each task is a rank."""
    proc = subprocess.run(["srun", "-n", "2", "-p", "debug", "-t", "5", sys.executable, str(REPO / "launch.py"),
                           *STEP, "task.max_iters=4", "task.eval_interval=4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = run_dirs(tmp_path / "runs")
    assert summary(run)["world_size"] == 2 and summary(run)["status"] == "finished"


@pytest.mark.slurm
@needs_slurm
def test_slurm_job_is_requeued_on_signal_and_resumes_to_the_same_loss(tmp_path, data_root):
    # long enough to be signalled mid-run (a few seconds), small enough to keep the test short
    args = merged(*STEP, "model.n_embd=64", "model.block_size=64", "hardware.micro_batch_size=8",
                  "task.tokens_per_step=1024", "task.max_iters=400", "task.eval_interval=200",
                  "task.log_interval=10")
    sweep = tmp_path / "sweeps" / "s"
    cmd = [sys.executable, str(REPO / "launch.py"), "-m", "hydra/launcher=slurm_cpu",
           "hydra.launcher.tasks_per_node=2", *args, "sweep_name=s"]
    with open(tmp_path / "sweep.log", "w") as out:
        sweeper = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HYDRA_FULL_ERROR": "1"})
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                metrics = list(sweep.glob("0_*/metrics.jsonl"))
                if metrics and len(metrics[0].read_text().splitlines()) >= 3:  # training is under way
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"the job did not start training:\n{(tmp_path / 'sweep.log').read_text()}")
            [job] = job_ids(sweep)
            subprocess.run(["scancel", "--signal=USR2", job], check=True)  # as SLURM before pre-emption
            assert sweeper.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()
        finally:
            sweeper.kill()

    [run] = run_dirs(sweep)
    assert "REQUEUED" in sacct_states(job) and sacct_states(job)[-1] == "COMPLETED"
    log = (run / "launch.log").read_text()
    stopped = int(log.split("stopped at iteration ")[1].split(";")[0])
    assert 0 < stopped < 400 and f"at iteration {stopped}" in log.split("resuming from")[1]
    done = summary(run)
    assert done["status"] == "finished" and done["iters"] == 400

    # the same run without the interruption, two ranks under torchrun
    torchrun([*args, "run=uninterrupted"], cwd=tmp_path)
    ref = tmp_path / "uninterrupted"
    assert losses(run) == pytest.approx(losses(ref), rel=1e-6)  # every logged step, before and after
    assert done["final_val_loss"] == pytest.approx(summary(ref)["final_val_loss"], rel=1e-6)
    assert done["final_train_loss"] == pytest.approx(summary(ref)["final_train_loss"], rel=1e-6)


@pytest.mark.slurm
@needs_slurm
def test_a_cancelled_sweep_job_is_one_line_that_says_how_to_resume(tmp_path, data_root):
    """A plain scancel of a sweep point ended the sweep command with submitit's
    UncompletedJobError traceback."""
    args = [*STEP, "task.max_iters=100000", "task.eval_interval=1000", "task.log_interval=10",
            "optim.lr=1e-3,2e-3"]
    sweep = tmp_path / "sweeps" / "s"
    cmd = [sys.executable, str(REPO / "launch.py"), "-m", "hydra/launcher=slurm_cpu", *args, "sweep_name=s"]
    with open(tmp_path / "sweep.log", "w") as out:
        sweeper = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HYDRA_FULL_ERROR": "0"})
        try:
            deadline = time.monotonic() + 120
            while not any(len(p.read_text().splitlines()) >= 2 for p in sweep.glob("*_*/metrics.jsonl")):
                assert time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.2)
            jobs = job_ids(sweep)
            subprocess.run(["scancel", *jobs], check=True)  # both points: the sweep ends sooner
            code = sweeper.wait(timeout=240)
        finally:
            sweeper.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert code == 2, log[-3000:]
    assert "Traceback" not in log and "UncompletedJobError" not in log, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == len(jobs) == 2, log[-3000:]
    for i, (job, line) in enumerate(zip(jobs, errors)):
        assert line.startswith(f"error: SLURM job {job} (sweep point #{i}: optim.lr=0.00{i + 1}) was cancelled "
                               "before it finished (CANCELLED"), line
        assert "its run directory in sweeps/s keeps the checkpoints it wrote. To resume it, run the same " \
               "command again: points that finished are not trained again" in line


def test_a_cancelled_job_of_an_unnamed_sweep_is_told_the_sweeps_name():
    """Without sweep_name, the sweep's directory is named after the time it started: the same
    command would start a new one, so the message gives the name to resume this one."""
    from hydra_plugins.nanogpt_slurm_launcher import cancelled_message, swept

    points = [["model.n_layer=2", "optim.lr=0.001"], ["model.n_layer=2", "optim.lr=0.002"]]
    assert swept(points[1], points) == ["optim.lr=0.002"]
    message = cancelled_message(1, "7_1", "optim.lr=0.002", "CANCELLED by 0", Path("sweeps/2026-01-01_10-00-00"),
                                ["optim.lr=0.001,0.002"])
    assert message.startswith("SLURM job 7_1 (sweep point #1: optim.lr=0.002) was cancelled before it "
                              "finished (CANCELLED by 0)")
    assert "run the same command again with sweep_name=2026-01-01_10-00-00: points that finished" in message


@pytest.mark.slurm
@needs_slurm
def test_a_failing_rank_fails_the_slurm_job(tmp_path, data_root):
    start = time.monotonic()
    proc = slurm_sweep(["hydra.launcher.tasks_per_node=2", *STEP, "task.max_iters=50", "sweep_name=s"],
                       cwd=tmp_path, env=rank_one_lacks_data(tmp_path), check=False, timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - start < 90  # not the 30 minutes of a collective's timeout
    [job] = job_ids(tmp_path / "sweeps" / "s")
    assert sacct_states(job) == ["FAILED"]
    rank1_log = (tmp_path / "sweeps" / "s" / ".submitit" / job / f"{job}_1_log.err").read_text()
    assert "error: rank 1 of 2 failed: no prepared data for 'tiny_char' at /nonexistent" in rank1_log
    assert "task 1: Exited with exit code 2" in proc.stderr  # what the sweep's own error shows


def test_ddp_mup_matches_one_process(tmp_path, data_root):
    """model.param=mup under DDP: its per-group rates and eps (the hidden matrices' lr / m) live in
    the optimizer every rank builds alike, so two ranks equal one process (docs/mup.md)."""
    args = [*STEP, "task.max_iters=8", "task.eval_interval=4", "hardware.dtype=float64", "model.n_embd=64",
            "model.param=mup", "model.base_width=32", "optim.lr=1e-2"]
    single, shared = one_and_two_ranks(tmp_path, args)
    a = same_train_losses(single, shared, 8)
    assert a[8] < a[1]
